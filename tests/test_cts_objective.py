"""Tests of cts.losses.cts_objective: trajectory, localisation, edit, energy loss, ablation isolation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cts.losses.alignment import AlignmentConfig
from cts.losses.cts_objective import (
    CTSConfig, CTSHeads, correct_step_mask, cts_loss, cts_total, decode_template_hash, energy_loss,
    flagged_latent, format_decode_context, latent_edit, localisation_weights, trajectory)

B, T, D, DC = 3, 8, 6, 5
FAST_ALIGN = AlignmentConfig(kind="sinkhorn", epsilon=1.0, max_iterations=200)


def _cfg(**kw):
    base = dict(latent_dim=4, max_steps=4, energy_hidden=8, alignment=FAST_ALIGN, eta=0.5, edit_steps=2)
    base.update(kw)
    return CTSConfig(**base)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.array([[1] * 8, [1] * 6 + [0] * 2, [1] * 5 + [0] * 3], np.float32)
    step_ids = np.array([[0, 0, 1, 1, 1, 2, 2, 3], [0, 0, 1, 1, 2, 2, -1, -1], [0, 1, 1, 2, 2, -1, -1, -1]], np.int32)
    flag = np.zeros((B, T), np.float32)
    flag[0, 2:5] = 1  # step 1
    flag[1, 4:6] = 1  # step 2; row 2 correct -> no flag
    return dict(
        hidden=jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32), mask=jnp.asarray(mask),
        step_ids=jnp.asarray(step_ids), flag=jnp.asarray(flag),
        critique=jnp.asarray(rng.normal(size=(B, DC)), jnp.float32),
        hidden_rev=jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32), mask_rev=jnp.asarray(mask),
        step_ids_rev=jnp.asarray(step_ids), flag_rev=jnp.asarray(flag))


def _heads(cfg, seed=0):
    return CTSHeads(D, DC, cfg, rngs=nnx.Rngs(seed))


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="trajectory"):
        CTSConfig(trajectory="sentence")
    with pytest.raises(ValueError, match="lam_align"):
        CTSConfig(lam_align=-1.0)
    with pytest.raises(ValueError, match="num_critique_ids"):
        CTSConfig(critique_embedding="learned")
    hash(CTSConfig())  # static jit argument


def test_step_trajectory_pools_and_times():
    cfg = _cfg(latent_dim=None, trajectory="step")
    b = _batch()
    R, w, t = trajectory(_heads(cfg), b["hidden"], b["mask"], b["step_ids"], cfg)
    assert R.shape == (B, 4, D)
    h = np.asarray(b["hidden"])
    np.testing.assert_allclose(R[0, 1], h[0, 2:5].mean(0), rtol=1e-6)
    np.testing.assert_allclose(w[1], [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(t[0], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    np.testing.assert_allclose(t[2], [0, 0.5, 1, 0], rtol=1e-6)


def test_token_trajectory_projection_and_weights():
    cfg = _cfg()
    b = _batch()
    heads = _heads(cfg)
    R, w, t = trajectory(heads, b["hidden"], b["mask"], b["step_ids"], cfg)
    np.testing.assert_allclose(R, heads.project(b["hidden"]), rtol=1e-6)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t[1, :6], np.arange(6) / 5, rtol=1e-6)


def test_localisation_weights_handcomputed():
    b = _batch()
    a0 = localisation_weights(b["flag"], b["mask"], b["step_ids"], _cfg(trajectory="step", alpha_width=0.0))
    np.testing.assert_allclose(a0, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], atol=1e-7)
    a1 = localisation_weights(b["flag"], b["mask"], b["step_ids"], _cfg(trajectory="step", alpha_width=1.0))
    g = np.exp(-0.5)
    np.testing.assert_allclose(a1[1], np.array([np.exp(-2), g, 1, 0]) / (np.exp(-2) + g + 1), rtol=1e-6)
    at = localisation_weights(b["flag"], b["mask"], b["step_ids"], _cfg(alpha_width=0.0))
    np.testing.assert_allclose(at[0], np.array([0, 0, 1, 1, 1, 0, 0, 0]) / 3, rtol=1e-6)


def test_latent_edit_matches_manual_gradient_steps_and_is_stop_gradient():
    cfg = _cfg(trajectory="step", edit_steps=2, eta=0.3)
    b = _batch()
    heads = _heads(cfg)
    R, _, _ = trajectory(heads, b["hidden"], b["mask"], b["step_ids"], cfg)
    alpha = localisation_weights(b["flag"], b["mask"], b["step_ids"], cfg)
    R_star = latent_edit(heads, R, alpha, b["critique"], cfg)
    r = np.asarray(R)
    for _ in range(2):  # independent: per-position gradient of α_t E(r_t)
        gr = jax.vmap(jax.vmap(jax.grad(lambda v, e: heads.energy(v, e)), (0, None)))(jnp.asarray(r), b["critique"])
        r = r - 0.3 * np.asarray(alpha)[..., None] * np.asarray(gr)
    np.testing.assert_allclose(R_star, r, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(R_star[2], R[2])  # no flag -> no edit
    g = jax.grad(lambda h: jnp.sum(latent_edit(heads, trajectory(heads, h, b["mask"], b["step_ids"], cfg)[0],
                                               alpha, b["critique"], cfg)))(b["hidden"])
    np.testing.assert_array_equal(g, 0.0)


def test_energy_loss_handcomputed_and_only_trains_psi():
    cfg = _cfg(energy_margin=0.5)
    heads = _heads(cfg)
    rng = np.random.default_rng(1)
    ra, rr = jnp.asarray(rng.normal(size=(B, 4)), jnp.float32), jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)
    e = jnp.asarray(rng.normal(size=(B, DC)), jnp.float32)
    loss, m = energy_loss(heads, ra, rr, e, cfg, row_mask=jnp.array([1.0, 1.0, 0.0]))
    ea, er = np.asarray(heads.energy(ra, e)), np.asarray(heads.energy(rr, e))
    expect = np.mean(np.log1p(np.exp(0.5 + er[:2] - ea[:2])))
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    np.testing.assert_allclose(float(m["energy/gap"]), np.mean(ea[:2] - er[:2]), rtol=1e-5)
    g = jax.grad(lambda a: energy_loss(heads, a, rr, e, cfg)[0])(ra)
    np.testing.assert_array_equal(g, 0.0)


def _term_grads(cfg, decode_scale=1.0, seed=0):
    """Values and gradients (w.r.t. heads params and hidden) of each term separately."""
    b = _batch(seed)
    heads = _heads(cfg, seed)
    graphdef, params = nnx.split(heads)

    def terms(params, hidden):
        h = nnx.merge(graphdef, params)
        _, m = cts_loss(h, hidden, b["mask"], b["step_ids"], b["flag"], b["critique"], b["hidden_rev"],
                        b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)
        decode = decode_scale * jnp.sum(hidden ** 2)  # stand-in for the loop's NLL
        grpo = jnp.mean(hidden)  # stand-in for L_GRPO
        return {"align": m["cts/align"], "energy": m["cts/energy"], "decode": decode, "grpo": grpo,
                "total": cts_total({"grpo": grpo, "align": m["cts/align"], "decode": decode,
                                    "energy": m["cts/energy"]}, cfg)}

    vals = terms(params, b["hidden"])
    grads = {k: jax.grad(lambda p, h: terms(p, h)[k], argnums=(0, 1))(params, b["hidden"]) for k in vals}
    return vals, grads


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


ABLATIONS = {
    "A1": (dict(lam_align=0.0), "align_weight"),
    "A2": (dict(alignment=AlignmentConfig(kind="l2")), "align"),
    "A3": (dict(alignment=AlignmentConfig(kind="soft_dtw", gamma=0.5)), "align"),
    "A4": (dict(lam_decode=0.0), "decode_weight"),
    "A5": (dict(energy_freeze=True), "energy_weight"),
}


@pytest.mark.slow
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_ablation_changes_only_its_own_term(ablation):
    changes, own = ABLATIONS[ablation]
    base_cfg = _cfg()
    cfg = dataclasses.replace(base_cfg, **changes)
    v0, g0 = _term_grads(base_cfg)
    v1, g1 = _term_grads(cfg)
    for term in ("align", "energy", "decode", "grpo"):
        if own == "align" and term == "align":
            assert not np.array_equal(v0[term], v1[term])
            continue
        assert np.array_equal(v0[term], v1[term]), term
        assert _equal(g0[term], g1[term]), term
    # the total is the unablated sum minus exactly the removed weighted term
    lam = {"align_weight": ("lam_align", "align"), "decode_weight": ("lam_decode", "decode"),
           "energy_weight": ("lam_energy", "energy")}.get(own)
    if lam is not None:
        rest = {k: v for k, v in (("lam_align", "align"), ("lam_decode", "decode"), ("lam_energy", "energy"))}
        expect = v0["grpo"]
        for lam_name, term in (("lam_align", "align"), ("lam_decode", "decode"), ("lam_energy", "energy")):
            if lam_name != lam[0]:
                expect = expect + getattr(base_cfg, lam_name) * v0[term]
        assert np.array_equal(v1["total"], expect)
        del rest


def test_cts_total_zero_lambda_is_bit_identical_even_with_nan_term():
    cfg = _cfg(lam_align=0.0, lam_decode=0.0, lam_energy=0.0)
    g = jax.grad(lambda x: cts_total({"grpo": x ** 2, "align": jnp.nan * x, "decode": jnp.log(-x),
                                      "energy": jnp.inf * x}, cfg))(jnp.float32(1.5))
    assert float(g) == 3.0
    full = _cfg(lam_align=0.5, lam_decode=2.0, lam_energy=0.25)
    assert float(cts_total({"grpo": 1.0, "align": 2.0, "decode": 3.0, "energy": 4.0}, full)) == 1.0 + 1.0 + 6.0 + 1.0
    # the same combiner on gradient pytrees (the loop combines per-term gradients with it)
    trees = {k: {"w": jnp.full((2,), v)} for k, v in (("grpo", 1.0), ("align", 2.0), ("decode", 3.0), ("energy", 4.0))}
    np.testing.assert_array_equal(cts_total(trees, full)["w"], [9.0, 9.0])
    assert cts_total(trees, cfg)["w"] is trees["grpo"]["w"]  # λ = 0: nothing added, not even a 0
    assert float(cts_total(trees, _cfg(energy_freeze=True, lam_align=0.0, lam_decode=0.0))["w"][0]) == 1.0
    with pytest.raises(ValueError, match="unknown terms"):
        cts_total({"grpo": 1.0, "kl": 2.0}, full)


def test_cts_loss_jits_learned_embedding_and_correct_rows_drop_out():
    cfg = _cfg(critique_embedding="learned", num_critique_ids=3, trajectory="step")
    b = _batch()
    heads = _heads(cfg)
    ids = jnp.array([0, 2, 1], jnp.int32)
    graphdef, params = nnx.split(heads)

    @jax.jit
    def f(params, hidden):
        return cts_loss(nnx.merge(graphdef, params), hidden, b["mask"], b["step_ids"], b["flag"], ids,
                        b["hidden_rev"], b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)

    terms, m = f(params, b["hidden"])
    aux = cts_total(terms, cfg)
    assert np.isfinite(float(aux)) and float(m["cts/active_frac"]) == pytest.approx(2 / 3)
    for k in ("cts/align", "cts/energy", "ot/converged", "ot/n_iters", "cts/edit_norm"):
        assert k in m
    # row 2 has no flag: its hidden states get no gradient from the CTS terms
    g = jax.grad(lambda h: cts_total(f(params, h)[0], cfg))(b["hidden"])
    np.testing.assert_array_equal(g[2], 0.0)
    assert np.any(np.asarray(g[0]) != 0)
    with pytest.raises(ValueError, match="critique_ids"):
        cts_loss(heads, b["hidden"], b["mask"], b["step_ids"], b["flag"], b["critique"], b["hidden_rev"],
                 b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)


def test_decode_template():
    s = format_decode_context("What is {x}?", "2+2=5", "Step 1 is wrong.")
    assert s.startswith("What is {x}?\n\n### First attempt\n2+2=5")
    assert s.endswith("### Revised solution\n")
    assert len(decode_template_hash()) == 64
    with pytest.raises(TypeError, match="critique"):
        format_decode_context("p", "a", None)


# ---------------------------------------------------------------- step features and correct steps (issue 14)



@pytest.mark.parametrize("pool", ["last", "mean_last"])
def test_step_pool_last_takes_each_steps_last_token(pool):
    cfg = _cfg(latent_dim=None, trajectory="step", step_pool=pool)
    b = _batch()
    R, w, _ = trajectory(_heads(cfg), b["hidden"], b["mask"], b["step_ids"], cfg)
    h, steps = np.asarray(b["hidden"]), np.asarray(b["step_ids"])
    assert R.shape == (B, 4, 2 * D if pool == "mean_last" else D)
    for i in range(B):
        for s in range(4):
            toks = np.flatnonzero((steps[i] == s) & (np.asarray(b["mask"])[i] > 0))
            if toks.size == 0:
                assert float(w[i, s]) == 0.0
                continue
            want = h[i, toks[-1]] if pool == "last" else np.concatenate([h[i, toks].mean(0), h[i, toks[-1]]])
            np.testing.assert_allclose(np.asarray(R[i, s]), want, rtol=1e-6)
    r, has = flagged_latent(_heads(cfg), b["hidden"], b["mask"], b["flag"], pool)
    np.testing.assert_allclose(np.asarray(r[0]), np.asarray(R[0, 1]), rtol=1e-6)  # row 0's flag is its step 1
    assert list(np.asarray(has)) == [True, True, False]


def test_correct_step_mask_is_the_attempts_prefix_and_the_revisions_other_steps():
    valid = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
    at_flag = jnp.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)  # row 2: no flag
    at_flag_rev = jnp.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
    got = np.asarray(correct_step_mask(valid, at_flag, valid, at_flag_rev)).astype(int)
    np.testing.assert_array_equal(got, [[1, 1, 0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1, 1, 0], [0] * 8])


def test_energy_loss_with_correct_steps_handcomputed():
    cfg = _cfg(energy_margin=0.5)
    heads = _heads(cfg)
    rng = np.random.default_rng(3)
    ra, rr = (jnp.asarray(rng.normal(size=(B, 4)), jnp.float32) for _ in range(2))
    good = jnp.asarray(rng.normal(size=(B, 3, 4)), jnp.float32)
    gm = jnp.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], jnp.float32)
    e = jnp.asarray(rng.normal(size=(B, DC)), jnp.float32)
    loss, _ = energy_loss(heads, ra, rr, e, cfg, row_mask=jnp.array([1.0, 1.0, 0.0]), R_correct=good, correct_mask=gm)
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731
    ea, er = np.asarray(heads.energy(ra, e)), np.asarray(heads.energy(rr, e))
    eg = np.asarray(heads.energy(good, e[:, None, :]))
    row0 = sp(0.5 + er[0] - ea[0]) + np.mean(sp(0.5 + eg[0, :2] - ea[0]))
    row1 = sp(0.5 + er[1] - ea[1])  # no correct steps: the pair term alone
    np.testing.assert_allclose(float(loss), (row0 + row1) / 2, rtol=1e-5)


def test_new_gradients_match_finite_differences_float64(x64):
    """The gradients B5 relies on through the new pieces, against finite differences: L_E with
    correct steps w.r.t. ψ (E_ψ and W; P_φ is not L_E's: its latents are stop-gradient), and
    L_align w.r.t. the hidden states through the "mean_last" step pooling (R* held fixed: it is a
    stop-gradient target, so a finite difference that moved it would measure something else)."""
    from jax.test_util import check_grads

    from cts.losses.alignment import alignment_loss
    from cts.losses.cts_objective import latent_edit

    cfg = _cfg(trajectory="step", step_pool="mean_last", energy_correct_steps=True, edit_steps=1,
               alignment=AlignmentConfig(kind="l2"))
    b = {k: (v.astype(jnp.float64) if v.dtype == jnp.float32 else v) for k, v in _batch(4).items()}
    heads = CTSHeads(D, DC, cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(heads)
    state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
    psi = {k: v for k, v in state.items() if k != "project"}
    phi = {k: v for k, v in state.items() if k == "project"}

    def energy(psi):
        h = nnx.merge(graphdef, nnx.State({**phi, **psi}))
        t, _ = cts_loss(h, b["hidden"], b["mask"], b["step_ids"], b["flag"], b["critique"], b["hidden_rev"],
                        b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)
        return t["energy"]

    check_grads(energy, (psi,), order=1, modes=["rev"], eps=1e-6)

    h0 = nnx.merge(graphdef, state)
    R0, w, t = trajectory(h0, b["hidden"], b["mask"], b["step_ids"], cfg)
    alpha = localisation_weights(b["flag"], b["mask"], b["step_ids"], cfg)
    R_star = latent_edit(h0, R0, alpha, b["critique"], cfg)  # the fixed target

    def align(hidden):
        R, w, t = trajectory(h0, hidden, b["mask"], b["step_ids"], cfg)
        return alignment_loss(R, w, t, R_star, w, t, cfg.alignment, row_weights=(alpha.sum(1) > 0).astype(R.dtype))[0]

    check_grads(align, (b["hidden"],), order=1, modes=["rev"], eps=1e-6)
    # and it is the gradient cts_loss gives (R* stop-gradient there)
    g_loop = jax.grad(lambda h: cts_loss(h0, h, b["mask"], b["step_ids"], b["flag"], b["critique"], b["hidden_rev"],
                                         b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)[0]["align"])(b["hidden"])
    np.testing.assert_allclose(np.asarray(g_loop), np.asarray(jax.grad(align)(b["hidden"])), rtol=1e-9, atol=1e-12)


def _energy_grad_numpy(heads, r, e):
    """∇_r E_ψ(r, e) by hand for the tanh MLP: E = w₂·tanh(W₁[r; W_c e] + b₁) + b₂ -> [B, d]."""
    W1 = np.asarray(heads.energy_in.kernel.value, np.float64)  # (2d, H)
    b1 = np.asarray(heads.energy_in.bias.value, np.float64)
    w2 = np.asarray(heads.energy_out.kernel.value, np.float64)[:, 0]  # (H,)
    Wc = np.asarray(heads.critique_proj.kernel.value, np.float64)  # (D_c, d)
    r, e = np.asarray(r, np.float64), np.asarray(e, np.float64)
    d = r.shape[-1]
    pre = np.concatenate([r, e @ Wc], axis=-1) @ W1 + b1  # (B, H)
    return ((1.0 - np.tanh(pre) ** 2) * w2) @ W1[:d].T  # (B, d)


def test_energy_loss_direction_term_handcomputed():
    """L_E + λ_dir (1 − cos(−∇_r E(r_att), r_rev − r_att)), the gradient of E written out by hand."""
    from cts.losses.cts_objective import edit_alignment

    rng = np.random.default_rng(5)
    ra, rr = (jnp.asarray(rng.normal(size=(B, 4)), jnp.float32) for _ in range(2))
    e = jnp.asarray(rng.normal(size=(B, DC)), jnp.float32)
    cfg = _cfg(energy_margin=0.5, energy_direction=0.7)
    heads = _heads(cfg)
    g = _energy_grad_numpy(heads, ra, e)
    t = np.asarray(rr - ra, np.float64)
    cos = -np.sum(g * t, -1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(t, axis=-1))
    np.testing.assert_allclose(np.asarray(edit_alignment(heads, ra, rr, e)), cos, rtol=1e-4, atol=1e-6)
    rows = jnp.array([1.0, 1.0, 0.0])
    loss, m = energy_loss(heads, ra, rr, e, cfg, row_mask=rows)
    rank, _ = energy_loss(heads, ra, rr, e, cfg.replace(energy_direction=0.0), row_mask=rows)
    np.testing.assert_allclose(float(loss), float(rank) + 0.7 * np.mean(1.0 - cos[:2]), rtol=1e-5)
    np.testing.assert_allclose(float(m["energy/direction_cos"]), np.mean(cos[:2]), rtol=1e-4)
    # still ψ only: the latents are stop-gradient in B5's L_E
    np.testing.assert_array_equal(jax.grad(lambda a: energy_loss(heads, a, rr, e, cfg)[0])(ra), 0.0)
    with pytest.raises(ValueError, match="energy_direction"):
        CTSConfig(energy_direction=-1.0)


@pytest.mark.parametrize("form", ["mlp", "well"])
def test_direction_term_gradient_matches_finite_differences_float64(x64, form):
    """B5's L_E with the direction term (a second derivative of E_ψ) w.r.t. ψ, through cts_loss."""
    from jax.test_util import check_grads

    cfg = _cfg(trajectory="step", energy_direction=0.5, energy_correct_steps=True, energy_form=form)
    b = {k: (v.astype(jnp.float64) if v.dtype == jnp.float32 else v) for k, v in _batch(6).items()}
    graphdef, state = nnx.split(CTSHeads(D, DC, cfg, rngs=nnx.Rngs(2)))
    state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
    psi = {k: v for k, v in state.items() if k != "project"}
    phi = {k: v for k, v in state.items() if k == "project"}

    def energy(psi):
        h = nnx.merge(graphdef, nnx.State({**phi, **psi}))
        t, m = cts_loss(h, b["hidden"], b["mask"], b["step_ids"], b["flag"], b["critique"], b["hidden_rev"],
                        b["mask_rev"], b["step_ids_rev"], b["flag_rev"], cfg)
        return t["energy"]

    check_grads(energy, (psi,), order=1, modes=["rev"], eps=1e-6)


def test_direction_term_aims_the_held_out_edit_where_ranking_alone_does_not():
    """A critic that learns the direction, measured on held-out rows. The correction r_rev − r_att
    is a unit vector that is a fixed (unknown) linear function of the critique, in axes 1..3, plus a
    small 'wrongness' offset −0.3 on axis 0 that is the same for every pair. Ranking alone ranks by
    the offset (pair accuracy 1) and its gradient points along axis 0, not at the correction
    (measured cos 0.32); the direction term also learns the critique-dependent part (0.64)."""
    import optax

    from cts.losses.cts_objective import edit_alignment

    rng = np.random.default_rng(0)
    d, n = 4, 96
    e = rng.normal(size=(2 * n, DC))
    u = np.zeros((2 * n, d))
    u[:, 1:] = e @ rng.normal(size=(DC, d - 1))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    ra = rng.normal(size=(2 * n, d))
    ra[:, 0] = 0.0
    rr = ra + u
    ra[:, 0] += 0.3
    ra, rr, e = (jnp.asarray(x, jnp.float32) for x in (ra, rr, e))
    fit, held = slice(0, n), slice(n, 2 * n)

    def fitted(weight):
        cfg = CTSConfig(latent_dim=None, energy_hidden=32, energy_direction=weight)
        graphdef, params = nnx.split(CTSHeads(d, DC, cfg, rngs=nnx.Rngs(0)))
        opt = optax.adam(3e-3)
        state = opt.init(params)

        @jax.jit
        def step(params, state):
            g = jax.grad(lambda p: energy_loss(nnx.merge(graphdef, p), ra[fit], rr[fit], e[fit], cfg)[0])(params)
            updates, state = opt.update(g, state, params)
            return optax.apply_updates(params, updates), state

        for _ in range(400):
            params, state = step(params, state)
        h = nnx.merge(graphdef, params)
        acc = float(jnp.mean(h.energy(ra[held], e[held]) > h.energy(rr[held], e[held])))
        return acc, float(jnp.mean(edit_alignment(h, ra[held], rr[held], e[held])))

    acc_rank, cos_rank = fitted(0.0)
    acc_dir, cos_dir = fitted(1.0)
    assert acc_rank >= 0.9 and acc_dir >= 0.9, (acc_rank, acc_dir)
    assert cos_dir > 0.5 and cos_dir > cos_rank + 0.2, (cos_rank, cos_dir)


def test_well_energy_is_half_the_squared_distance_to_a_learned_point_and_the_edit_moves_toward_it():
    cfg = _cfg(energy_form="well", trajectory="step", edit_steps=1, eta=0.3)
    heads = _heads(cfg)
    rng = np.random.default_rng(7)
    r = jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)
    e = jnp.asarray(rng.normal(size=(B, DC)), jnp.float32)
    c = np.asarray(e, np.float64) @ np.asarray(heads.critique_proj.kernel.value, np.float64)  # (B, d)
    hid = np.tanh(c @ np.asarray(heads.energy_in.kernel.value) + np.asarray(heads.energy_in.bias.value))
    g = hid @ np.asarray(heads.energy_out.kernel.value) + np.asarray(heads.energy_out.bias.value)  # (B, d)
    np.testing.assert_allclose(np.asarray(heads.energy(r, e)), 0.5 * np.sum((np.asarray(r) - g) ** 2, -1),
                               rtol=1e-5)
    b = _batch(2)
    R, _, _ = trajectory(heads, b["hidden"], b["mask"], b["step_ids"], cfg)
    alpha = localisation_weights(b["flag"], b["mask"], b["step_ids"], cfg)
    R_star = latent_edit(heads, R, alpha, b["critique"], cfg)
    c = np.asarray(b["critique"], np.float64) @ np.asarray(heads.critique_proj.kernel.value, np.float64)
    g = (np.tanh(c @ np.asarray(heads.energy_in.kernel.value) + np.asarray(heads.energy_in.bias.value))
         @ np.asarray(heads.energy_out.kernel.value) + np.asarray(heads.energy_out.bias.value))  # (B, d)
    want = np.asarray(R) - 0.3 * np.asarray(alpha)[..., None] * (np.asarray(R) - g[:, None, :])
    np.testing.assert_allclose(np.asarray(R_star), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="energy_form"):
        CTSConfig(energy_form="bowl")
