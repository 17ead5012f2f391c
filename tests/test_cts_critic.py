"""B5's CTS wiring (cts.train.cts_step): the critic's warm-up and its gate, the edit-direction
metric, α on every localised error, per-term gradients through the one λ combiner, and λ = 0
bit-identical to B3 through the train step the loop actually runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cts.losses.cts_objective import CTSConfig, edit_direction, gradient_edit, localisation_weights
from cts.tasks.schema import Problem, Quadruple

TINY_MODEL = dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1, max_len=256)


# ----------------------------------------------------------------------------- pure pieces

def test_edit_direction_on_an_energy_whose_gradient_is_the_attempt_minus_the_revision():
    """E(r) = ⟨r, r_att − r_rev⟩ at the flagged position: ∇E = r_att − r_rev, so R* − R there is
    η (r_rev − r_att): cosine 1, relative size η‖r_rev − r_att‖/‖r_att‖, U decreases."""
    rng = np.random.default_rng(0)
    B, N, d, eta = 3, 5, 4, 0.3
    R = jnp.asarray(rng.normal(size=(B, N, d)), jnp.float32)
    flagged = np.array([1, 3, 0])
    at_flag = jnp.asarray(np.eye(N)[flagged], jnp.float32)  # (B, N) one flagged position per row
    r_att = R[jnp.arange(B), flagged]  # (B, d)
    r_rev = jnp.asarray(rng.normal(size=(B, d)), jnp.float32)
    direction = r_att - r_rev

    def energy(r):  # [B, N, d] -> []: Σ_b ⟨r_b,flag, r_att − r_rev⟩
        return jnp.sum(jnp.einsum("bn,bnd,bd->b", at_flag, r, direction))

    R_star = gradient_edit(energy, R, CTSConfig(eta=eta, edit_steps=1))
    d_ = edit_direction(R, R_star, at_flag, r_att, r_rev, jnp.array([True, True, False]))
    np.testing.assert_allclose(d_["cos"][:2], 1.0, rtol=1e-5)
    expect_rel = eta * np.linalg.norm(direction, axis=-1) / np.linalg.norm(r_att, axis=-1)
    np.testing.assert_allclose(d_["rel"][:2], expect_rel[:2], rtol=1e-5)
    assert d_["rows"].tolist() == [True, True, False] and float(d_["cos"][2]) == 0.0
    assert float(energy(R_star)) < float(energy(R))
    # the opposite energy edits away from the revision: cosine −1
    R_away = gradient_edit(lambda r: -energy(r), R, CTSConfig(eta=eta, edit_steps=1))
    np.testing.assert_allclose(edit_direction(R, R_away, at_flag, r_att, r_rev, jnp.ones(3, bool))["cos"], -1.0,
                               rtol=1e-5)


def _quad(pid, attempt, revision, *, step, span, kind="wrong_operation", critique="Step 2 is wrong."):
    return Quadruple(problem_id=pid, prompt=f"Question {pid}?", attempt=attempt, critique=critique,
                     revision=revision, attempt_correct=False, first_error_step=step, error_span=span,
                     n_steps=2, error_type=kind)


def test_answer_line_and_missing_answer_errors_get_alpha_and_unlocalised_rows_are_counted():
    from cts.model.tokenizer import CharTokenizer
    from cts.train.batching import make_batch
    from cts.train.cts_step import _attempt_flag, _flags_get_steps, _revision_flag, trajectory_steps

    tok = CharTokenizer()
    att = "1+1=<<1+1=2>>2\n2*2=<<2*2=4>>4\n#### 5"
    rev = "1+1=<<1+1=2>>2\n2*2=<<2*2=4>>4\n#### 4"
    answer = (att.index("####"), len(att))
    on_answer = _quad("a", att, rev, step=2, span=list(answer))
    no_answer = _quad("b", att[:att.index("\n####")], rev, step=2, span=[len(att) - 7, len(att) - 7])
    unlocalised = _quad("c", att, rev, step=1, span=None)
    assert trajectory_steps("math", att)[-1] == answer  # the answer line is a step
    assert _revision_flag("math", on_answer) == (rev.index("####"), len(rev))
    qs = [on_answer, no_answer, unlocalised]
    b = make_batch(tok, [q.prompt for q in qs], [q.attempt for q in qs], 256,
                   step_spans=[trajectory_steps("math", q.attempt) for q in qs],
                   flag_spans=[_attempt_flag(q) for q in qs])
    step_ids = _flags_get_steps(b.step_ids, b.flag, b.loss_mask)
    alpha = np.asarray(localisation_weights(jnp.asarray(b.flag), jnp.asarray(b.loss_mask), jnp.asarray(step_ids),
                                            CTSConfig(trajectory="step", max_steps=8, alpha_width=0.0)))
    assert alpha[0].tolist()[:3] == [0.0, 0.0, 1.0]  # the answer line: step 2
    assert alpha[1].tolist()[:3] == [0.0, 0.0, 1.0]  # no answer line: its EOS is step 2
    assert alpha[2].sum() == 0.0  # unlocalised: no α (and counted, below)


# ----------------------------------------------------------------------------- with a tiny policy

@pytest.fixture(scope="module")
def runtime():
    from cts.train.runtime import PolicyRuntime

    return PolicyRuntime(TINY_MODEL, "char", seed=0, batch_size=8)


def _toy_data(n=40):
    """A tiny synthetic set whose wrong step is visible in the text: y⁰'s step 2 uses `?`, y¹'s `+`.
    (Whether the real tasks' critic can see its errors is measured on the base policy, not here.)"""
    from cts.train.loop import TrainData

    problems, quads = [], []
    for i in range(n):
        a, c = i % 9, (i * 7) % 5
        attempt = f"x = {a}\ny = x ? {c}\n#### {a}"
        revision = f"x = {a}\ny = x + {c}\n#### {a + c}"
        problems.append(Problem(id=f"toy{i}", task="synth_math", kind="math", prompt=f"Add {a} and {c}.",
                                answer=str(a + c), reference=revision, horizon=2, split="train",
                                meta={}))
        quads.append(Quadruple(problem_id=f"toy{i}", prompt=f"Add {a} and {c}.", attempt=attempt,
                               critique="Step 2 is wrong: the operation should be +.", revision=revision,
                               attempt_correct=False, first_error_step=1,
                               error_span=[attempt.index("y ="), attempt.index("\n####")], n_steps=2,
                               error_type="wrong_operation"))
    quads.append(Quadruple(problem_id="toy_unloc", prompt="Add 1 and 1.", attempt="x = 1\n#### 3",
                           critique="Wrong.", revision="x = 1\n#### 2", attempt_correct=False, first_error_step=0,
                           error_span=None, n_steps=1, error_type="wrong_operation"))
    return TrainData(problems=problems, quadruples=quads, problems_by_id={p.id: p for p in problems})


CTS_BLOCK = dict(latent_dim=8, trajectory="step", eta=0.5, edit_steps=1, alpha_width=1.0, energy_hidden=16,
                 critique_embedding="pooled", lam_align=0.1, lam_decode=0.1, lam_energy=0.1, energy_margin=1.0,
                 energy_freeze=False, online_critique=False, cts_batch_size=8,
                 alignment=dict(kind="sinkhorn", epsilon=0.1, tau=1.0, debiased=True, w_time=1.0, gamma=0.1))


def _config(**cts):
    """B5's method config from a cell, as the train stage builds it (cts.methods.method_from_cell)."""
    from cts.methods.cts_terms import CTSMethodConfig

    cell = {"method_config": {"loss": "grpo", "reward": "verifier", "verifier_weight": 0.5, "cts": True},
            "train": {"group_size": 2}, "grpo": {}, "cts": {**CTS_BLOCK, **cts}}
    return CTSMethodConfig.from_cell(cell)


LOOP = dict(steps=4, prompts_per_step=2, group_size=2)


def _setup(runtime, data, seed=0, **cts):
    """The B5 plug-in set up as the loop sets it up: -> (method, params with heads, optimizer)."""
    from cts.methods.cts_terms import CTSMethod
    from cts.train.loop import LoopConfig, make_optimizer

    method = CTSMethod(_config(**cts), runtime)
    loop = LoopConfig(**LOOP, seed=seed)
    params, optimizer = method.setup(data, loop, {"policy": runtime.init_params}, make_optimizer(loop),
                                     log=lambda m: None)
    return method, (params, optimizer)


@pytest.mark.parametrize("features", [dict(), dict(step_pool="last", correct_steps=True),
                                      dict(direction_weight=1.0), dict(energy_form="well", direction_weight=1.0)],
                         ids=["mean", "last+correct_steps", "mean+direction", "well+direction"])
def test_warm_up_raises_held_out_pair_accuracy_from_chance_to_the_threshold(runtime, features):
    m, _ = _setup(runtime, _toy_data(), critic=dict(warmup_steps=200, learning_rate=3e-3, dev_fraction=0.3,
                                                    min_dev_pair_accuracy=0.9, **features))
    assert m.wiring.warmup["config"]["step_pool"] == features.get("step_pool", "mean")
    w = m.wiring.warmup
    assert w["n_dev"] >= 8 and w["n_fit"] >= 20 and w["n_unlocalised"] == 1
    before, after = w["dev_before_warmup"]["pair_accuracy"], w["dev_pair_accuracy"]
    assert before < 0.9 and after >= 0.9, (before, after)
    assert w["fit"]["loss_last"] < w["fit"]["loss_first"]
    if features.get("direction_weight"):  # the direction term aims the held-out edit at the revision
        cos = w["dev_after_warmup"]["edit_cos"]
        assert cos["mean"] > w["dev_before_warmup"]["edit_cos"]["mean"] and cos["ci95"][0] > 0.3, cos


def test_the_critics_initialisation_is_part_of_the_training_seed(runtime):
    """Seeds are the unit of inference, so each seed draws its own E_ψ / P_φ initialisation (one fixed
    key gave every seed the same critic after the deterministic full-batch warm-up)."""
    def heads(seed):
        _, (params, _) = _setup(runtime, _toy_data(), seed=seed, critic=dict(warmup_steps=0, min_dev_pair_accuracy=0.0))
        return jax.tree.leaves(params["heads"])

    h0, h0_again, h1 = heads(0), heads(0), heads(1)
    assert all(np.array_equal(a, b) for a, b in zip(h0, h0_again))
    assert any(not np.array_equal(a, b) for a, b in zip(h0, h1))


def test_b5_refuses_to_start_with_an_untrained_critic(runtime):
    from cts.train.cts_step import CriticGateError

    with pytest.raises(CriticGateError, match=r"pair accuracy after 0 warm-up steps is 0?\.\d+ on \d+ quadruples.*"
                                              r"cts\.critic\.min_dev_pair_accuracy = 0\.9"):
        _setup(runtime, _toy_data(), critic=dict(warmup_steps=0, dev_fraction=0.3, min_dev_pair_accuracy=0.9,
                                                 min_dev_quadruples=5))
    with pytest.raises(ValueError, match="cts.critic.dev_fraction"):
        _setup(runtime, _toy_data(), critic=dict(dev_fraction=1.5))
    with pytest.raises(ValueError, match="cts.critic.min_dev_quadruples"):
        _setup(runtime, _toy_data(), critic=dict(min_dev_quadruples=-1))


def test_b5_runs_and_records_an_unmeasured_gate_when_too_few_quadruples_are_held_out(runtime):
    """A base that rarely fails (the default's synth_code base: 5 failed train attempts, 0 held out)
    leaves nothing to measure the critic on: B5 runs, and final.json says the gate was not measured
    and why, instead of the whole DAG stopping on an accuracy of None."""
    few = _toy_data(n=6)
    m, _ = _setup(runtime, few, critic=dict(warmup_steps=0, dev_fraction=0.3, min_dev_pair_accuracy=0.9,
                                            min_dev_quadruples=20))
    w = m.wiring.warmup
    assert w["n_dev"] < 20
    assert w["gate"].startswith("not measured") and "cts.critic.min_dev_quadruples = 20" in w["gate"], w["gate"]
    m, _ = _setup(runtime, _toy_data(), critic=dict(warmup_steps=200, learning_rate=3e-3, dev_fraction=0.3,
                                                    min_dev_pair_accuracy=0.9, min_dev_quadruples=5))
    assert m.wiring.warmup["gate"].startswith("passed"), m.wiring.warmup["gate"]


def _grpo_batch(runtime, data, G=2):
    from cts.train.batching import make_batch

    probs = data.problems[:2]
    prompts = [p.prompt for p in probs for _ in range(G)]
    completions = ["x = 1\n#### 2", "y", "x = 3\n#### 4", "x"]
    b = make_batch(runtime.tok, prompts, completions, runtime.model_cfg.max_len, pad_to=64)
    return {"grpo": {**b.as_dict(), "rewards": np.array([1.0, 0.0, 0.5, 0.0], np.float32)}}


def _step(runtime, method, setup, batch):
    """One update through the loop's own jitted step (cts.train.loop.make_train_step)."""
    from cts.train.loop import LoopConfig, make_optimizer, make_train_step

    params, optimizer = setup if setup is not None else ({"policy": runtime.init_params},
                                                         make_optimizer(LoopConfig(**LOOP)))
    fn = make_train_step(method, optimizer)
    b = dict(batch)
    if hasattr(method, "make_cts_batch"):
        b["cts"] = method.make_cts_batch(np.random.default_rng([0, 0]), None)
    new, _, metrics = fn(params, optimizer.init(params), runtime.init_params, jax.tree.map(jnp.asarray, b))
    return new, {k: float(v) for k, v in metrics.items()}


def test_zero_lambda_b5_is_bit_identical_to_b3_through_the_loops_train_step(runtime):
    from cts.losses.grpo import GRPOConfig
    from cts.methods.grpo import GRPOMethod, GRPOMethodConfig

    data = _toy_data()
    batch = _grpo_batch(runtime, data)
    b3_method = GRPOMethod(GRPOMethodConfig(reward="verifier", verifier_weight=0.5, grpo=GRPOConfig(num_generations=2)),
                           runtime)
    b3, m3 = _step(runtime, b3_method, None, batch)
    off = dict(lam_align=0.0, lam_decode=0.0, lam_energy=0.0, critic=dict(warmup_steps=5, min_dev_pair_accuracy=0.0))
    b5_method, setup0 = _setup(runtime, data, **off)
    b5, m5 = _step(runtime, b5_method, setup0, batch)
    assert m5["loss"] == m3["loss"]
    for x, y in zip(jax.tree_util.tree_leaves(b3["policy"]), jax.tree_util.tree_leaves(b5["policy"])):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert m5["cts/aux_total"] == 0.0 and m5["cts/decode"] > 0  # still measured, not trained on
    # positive control: a nonzero λ₂ moves the policy
    on = dict(off, lam_decode=0.1)
    b5d_method, setup1 = _setup(runtime, data, **on)
    b5d, _ = _step(runtime, b5d_method, setup1, batch)
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(b3["policy"]), jax.tree_util.tree_leaves(b5d["policy"])))


def test_per_term_gradients_combine_to_the_joint_gradient_and_log_their_weighted_norms(runtime):
    """The step differentiates each term over its own forward pass and combines the gradients with
    cts_total: that must equal the gradient of the joint loss GRPO + λ₁L_align + λ₂L_decode + λ₃L_E
    written out independently; the logged norms are the weighted θ-norms; aux_total has λ₂L_decode."""
    from flax import nnx

    from cts.losses.cts_objective import cts_loss
    from cts.losses.sft import sft_loss
    from cts.model.policy import token_logprobs

    data = _toy_data()
    lam1, lam2, lam3 = 0.5, 0.2, 0.3
    lam = dict(lam_align=lam1, lam_decode=lam2, lam_energy=lam3, critic=dict(warmup_steps=5, min_dev_pair_accuracy=0.0))
    method, (params, _) = _setup(runtime, data, **lam)
    s = method.wiring
    batch = jax.tree.map(jnp.asarray, {**_grpo_batch(runtime, data),
                                       "cts": method.make_cts_batch(np.random.default_rng(1), None)})
    main, b = {"grpo": batch["grpo"]}, batch["cts"]

    @jax.jit
    def split(params):  # what the loop's update differentiates
        return method.loss_and_grads(params, runtime.init_params, batch)

    def decode(policy):
        logits, _ = runtime.forward(policy, b["dec"]["tokens"], b["dec"]["segment_ids"])
        return sft_loss(token_logprobs(logits, b["dec"]["tokens"]), b["dec"]["loss_mask"])[0]

    @jax.jit
    def joint(p):
        grpo, _ = method.loss(p, runtime.init_params, main)  # B3's GRPO loss
        heads = nnx.merge(s.heads_def, p["heads"])
        fwd = lambda k: runtime.forward(p["policy"], b[k]["tokens"], b[k]["segment_ids"])[1]  # noqa: E731
        m = b["crit"]["loss_mask"][..., None]
        crit = jax.lax.stop_gradient((fwd("crit") * m).sum(1) / jnp.maximum(m.sum(1), 1.0))
        terms, _ = cts_loss(heads, fwd("att"), b["att"]["loss_mask"], b["att"]["step_ids"], b["att"]["flag"], crit,
                            jax.lax.stop_gradient(fwd("rev")), b["rev"]["loss_mask"], b["rev"]["step_ids"],
                            b["rev"]["flag"], s.cfg, energy_rows=b["critic_rows"])
        return grpo + lam1 * terms["align"] + lam2 * decode(p["policy"]) + lam3 * terms["energy"]

    total, grads, m = split(params)
    j_total, j_grads = jax.value_and_grad(joint)(params)
    assert float(total) == pytest.approx(float(j_total), rel=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(j_grads)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-7)
    assert float(m["cts/aux_total"]) == pytest.approx(
        lam1 * float(m["cts/align"]) + lam2 * float(m["cts/decode"]) + lam3 * float(m["cts/energy"]), rel=1e-5)
    g_dec = jax.grad(decode)(params["policy"])
    norm = float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g_dec))))
    assert float(m["cts/grad_norm/decode"]) == pytest.approx(lam2 * norm, rel=1e-4)
    assert float(m["cts/grad_norm/align"]) > 0 and float(m["cts/grad_norm/grpo"]) > 0
    assert float(m["cts/grad_norm/energy_psi"]) > 0


def test_table_section_shows_critic_accuracy_edit_cosine_and_differing_ablation_outputs(tmp_path):
    import json

    from cts.stats.cts_diagnostics import cts_section

    cell = tmp_path / "results/train/synth_math/B5/seed0"
    cell.mkdir(parents=True)
    (cell / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
    (cell / "final.json").write_text(json.dumps({
        "critic": {"n_dev": 15, "n_failed": 77, "n_unlocalised": 2, "gate": "passed: 0.9333 >= 0.8 on 15",
                   "dev_before_warmup": {"pair_accuracy": 0.4},
                   "dev_after_warmup": {"pair_accuracy": 0.933, "edit_cos": {"mean": 0.41, "ci95": [0.3, 0.52], "n": 15},
                                        "edit_rel_mean": 0.2},
                   "dev_at_end": {"pair_accuracy": 0.9, "edit_cos": {"mean": 0.38, "ci95": [0.2, 0.5], "n": 15}}},
        "cts_steps_mean": {"cts/edit_cos": 0.35, "cts/grad_norm/grpo": 2.0, "cts/grad_norm/align": 0.5,
                           "cts/grad_norm/decode": 1.0},
        "config": {"train": {"steps": 30}, "cts": {"cts_batch_size": 4, "online_critique": False}}}))
    evals = []
    for method, outs in (("B5", ["a", "b", "c"]), ("B5-A2", ["a", "x", "c"])):
        p = tmp_path / f"{method}.jsonl"
        p.write_text("".join(json.dumps({"task": "synth_math", "method": method, "seed": 0, "problem_id": f"p{i}",
                                         "completion": o}) + "\n" for i, o in enumerate(outs)))
        evals.append(str(p))
    md = "\n".join(cts_section([str(cell / "metrics.jsonl")], evals, reference="B5"))
    assert "| synth_math | B5 | seed0 | 0.400 → 0.933 → 0.900 (15) | 0.410 [0.300, 0.520] (15) |" in md
    assert "0.250 / 0.500" in md and "2 of 77 | 1.6 | passed |" in md  # 30 steps × 4 / 77 draws per quadruple
    assert "| synth_math | B5-A2 | 0 | 1 of 3 |" in md
    assert cts_section([], []) == []
