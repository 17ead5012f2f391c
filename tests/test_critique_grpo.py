"""B6 Critique-GRPO (cts/methods/critique_grpo.py): the mixed-group advantages and the loss against
hand-computed values, its gradient against the closed form and finite differences, the config block
from workflow_config.yaml, and one step of the plug-in through the one loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cts.losses.grpo import GRPOConfig
from cts.methods.critique_grpo import (CritiqueGRPOConfig, critique_grpo_loss, mixed_group_advantages, shaping)

CFG0 = GRPOConfig(num_generations=2, beta=0.0, epsilon_low=0.2, epsilon_high=0.28)
GAMMA = 0.1
# one group: G = 2 rollouts (rewards 1, 0), k = 1 refinement (reward 1)
R_ON, R_OFF = jnp.array([1.0, 0.0]), jnp.array([1.0])
MASK_ON = jnp.array([[1.0, 1.0], [1.0, 0.0]])  # 3 rollout tokens
MASK_OFF = jnp.array([[1.0, 1.0]])  # 2 refinement tokens: Z = 5
LOGP_ON = jnp.log(jnp.array([[0.3, 0.6], [0.2, 0.9]]))
LOGP_OFF = jnp.log(jnp.array([[0.5, 0.1]]))


def test_mixed_group_advantages_by_hand():
    # mean of {1, 0, 1} = 2/3: A = [1/3, −2/3] on-policy, 1/3 for the refinement
    a_on, a_off = mixed_group_advantages(R_ON, R_OFF, jnp.array([1.0]), 2, 1)
    np.testing.assert_allclose(a_on, [1 / 3, -2 / 3], rtol=1e-6)
    np.testing.assert_allclose(a_off, [1 / 3], rtol=1e-6)
    # absent refinement: the group is the G rollouts alone (mean 1/2) and the slot gets 0
    a_on, a_off = mixed_group_advantages(R_ON, R_OFF, jnp.array([0.0]), 2, 1)
    np.testing.assert_allclose(a_on, [0.5, -0.5], rtol=1e-6)
    assert float(a_off[0]) == 0.0
    # "group": sample std of {1, 0, 1} = sqrt(1/3)
    a_on, a_off = mixed_group_advantages(R_ON, R_OFF, jnp.array([1.0]), 2, 1, scale="group", eps=0.0)
    s = math.sqrt(1 / 3)
    np.testing.assert_allclose(a_on, [(1 / 3) / s, (-2 / 3) / s], rtol=1e-6)
    np.testing.assert_allclose(a_off, [(1 / 3) / s], rtol=1e-6)


def _loss(logp_on, logp_off, old=None, ref=None, cfg=CFG0, present=1.0):
    a_on, a_off = mixed_group_advantages(R_ON, R_OFF, jnp.array([present]), 2, 1)
    return critique_grpo_loss(logp_on, old, ref, a_on, MASK_ON, logp_off, a_off, MASK_OFF * present, cfg, GAMMA)


def test_loss_value_by_hand():
    """On-policy (ρ = 1): Σ −A over the rollout tokens = −(1/3)·2 + (2/3)·1 = 0. Refinement:
    −(1/3)·(f(0.5) + f(0.1)) = −(1/3)(5/6 + 1/2) = −4/9. Token mean over Z = 5: −4/45."""
    loss, m = _loss(LOGP_ON, LOGP_OFF)
    assert float(shaping(jnp.array(0.5), GAMMA)) == pytest.approx(5 / 6)
    assert float(loss) == pytest.approx(-4 / 45, rel=1e-6)
    assert float(m["critique_grpo/on_loss"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["critique_grpo/off_loss"]) == pytest.approx(-4 / 45, rel=1e-6)
    assert float(m["critique_grpo/off_weight_mean"]) == pytest.approx((5 / 6 + 1 / 2) / 2, rel=1e-6)
    assert float(m["critique_grpo/off_tokens"]) == 2.0 and float(m["grpo/clip_frac"]) == 0.0
    # no refinement in the group: plain GRPO on the rollouts, A = ±1/2, Z = 3: (−1/2·2 + 1/2)/3 = −1/6
    loss_absent, _ = _loss(LOGP_ON, LOGP_OFF, present=0.0)
    assert float(loss_absent) == pytest.approx(-1 / 6, rel=1e-6)
    # β·KL (k1) on the rollout tokens only: mean(logp − ref) = (0.5 + 0 + 0.5)/3 = 1/3, β = 0.5 adds 1/6
    ref = LOGP_ON - jnp.array([[0.5, 0.0], [0.5, 7.0]])  # the 7.0 sits on padding: never read
    cfg = GRPOConfig(num_generations=2, beta=0.5, kl_estimator="k1")
    loss_kl, m = _loss(LOGP_ON, LOGP_OFF, ref=ref, cfg=cfg)
    assert float(m["grpo/kl"]) == pytest.approx(1 / 3, rel=1e-6)
    assert float(loss_kl) == pytest.approx(-4 / 45 + 1 / 6, rel=1e-6)


def test_on_policy_tokens_are_clipped_and_refinement_tokens_are_not():
    """π_old below πθ by log 2 on every rollout token: ρ = 2. A > 0 tokens (row 0) are capped at
    1 + ε_high = 1.28, A < 0 (row 1) keep −Aρ = (2/3)·2; the refinement part is unchanged."""
    old = LOGP_ON - math.log(2.0)
    loss, m = _loss(LOGP_ON, LOGP_OFF, old=old)
    on = (-(1 / 3) * 1.28 * 2 + (2 / 3) * 2.0) / 5
    assert float(m["critique_grpo/on_loss"]) == pytest.approx(on, rel=1e-6)
    assert float(loss) == pytest.approx(on - 4 / 45, abs=1e-6)  # float32: a difference of two ~0.1 terms
    assert float(m["grpo/clip_frac"]) == pytest.approx(2 / 3, rel=1e-6)
    assert float(m["grpo/ratio_mean"]) == pytest.approx(2.0, rel=1e-6)




def test_gradient_is_the_shaped_policy_gradient_and_matches_finite_differences(x64):
    """∂L/∂log p of a refinement token = −A·γp/(p + γ)²/Z: p = 0.5 → −(1/3)(0.05/0.36)/5, p = 0.1 →
    −(1/3)(0.25)/5 (the unfamiliar token gets the larger weight); a rollout token (ρ = 1): −A/Z."""
    g_on, g_off = jax.grad(lambda a, b: _loss(a, b)[0], argnums=(0, 1))(LOGP_ON, LOGP_OFF)
    np.testing.assert_allclose(g_off[0], [-(1 / 3) * (0.05 / 0.36) / 5, -(1 / 3) * 0.25 / 5], rtol=1e-5)
    np.testing.assert_allclose(g_on, [[-(1 / 3) / 5, -(1 / 3) / 5], [(2 / 3) / 5, 0.0]], rtol=1e-5, atol=1e-8)
    # finite differences (float64) on every refinement token, with a live clip on the rollouts
    logp_on = jnp.log(jnp.array([[0.3, 0.6], [0.2, 0.9]], jnp.float64))
    old = logp_on - 0.3  # ρ = e^0.3 ≈ 1.35: the clip is live on row 0
    x = jnp.log(jnp.array([[0.5, 0.1]], jnp.float64))

    @jax.jit
    def f(logp_on, logp_off):
        a_on, a_off = mixed_group_advantages(R_ON.astype(jnp.float64), R_OFF.astype(jnp.float64),
                                             jnp.array([1.0]), 2, 1)
        return critique_grpo_loss(logp_on, old, None, a_on, MASK_ON, logp_off, a_off, MASK_OFF, CFG0, GAMMA)[0]

    g_on, g_off = jax.grad(f, argnums=(0, 1))(logp_on, x)
    for arg, point, grad in ((0, logp_on, g_on), (1, x, g_off)):
        for idx in np.ndindex(point.shape):
            e = jnp.zeros_like(point).at[idx].set(1e-6)
            lo, hi = ((point - e, x), (point + e, x)) if arg == 0 else ((logp_on, point - e), (logp_on, point + e))
            fd = (f(*hi) - f(*lo)) / 2e-6
            assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9), (arg, idx)
    assert float(g_on[0, 0]) == 0.0  # ρ = 1.35 > 1.28 with A > 0: clipped, no gradient


def test_config_rejects_bad_values_and_reads_its_block():
    with pytest.raises(ValueError, match=r"shaping_gamma \(γ\) must be a finite number > 0, got 0"):
        CritiqueGRPOConfig(shaping_gamma=0)
    with pytest.raises(ValueError, match=r"refinements_per_group \(k\) must be an int >= 1, got 0"):
        CritiqueGRPOConfig(refinements_per_group=0)
    with pytest.raises(ValueError, match="adv_scale must be one of"):
        CritiqueGRPOConfig(adv_scale="rank")
    import yaml

    from cts.config import cell_config, check_consistency, validate_config
    from cts.methods import get_method, method_name

    config = validate_config(yaml.safe_load(open("workflow_config.yaml")))
    check_consistency(config)
    assert "B6" in config["methods"]
    cell = cell_config(config, "synth_math", "B6", 0)
    cls = get_method(method_name(cell["method_config"]))
    cfg = cls.Config.from_cell(cell)
    assert isinstance(cfg, CritiqueGRPOConfig) and cfg.shaping_gamma == 0.1 and cfg.refinements_per_group == 1
    assert cfg.grpo.beta == config["grpo"]["beta"] and cfg.grpo.num_generations == config["train"]["group_size"]


@pytest.mark.slow
def test_one_b6_step_through_the_loop_adds_teacher_refinements(tmp_path):
    """A random tiny policy fails every rollout: every group gets the teacher's revision (correct on
    synthetic tasks), scored by the verifier reward, and the loop trains on the mixed groups."""
    from cts.methods.base import TrainData
    from cts.methods.critique_grpo import CritiqueGRPOMethod
    from cts.tasks.synthetic import generate_synth_math
    from cts.train.loop import LoopConfig, train
    from cts.train.runtime import PolicyRuntime

    runtime = PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                                 max_len=128), "char", seed=0, batch_size=4)
    loop = LoopConfig(steps=1, prompts_per_step=2, group_size=2, learning_rate=1e-3, max_new_tokens=16,
                      checkpoint_every=100)
    method = CritiqueGRPOMethod(CritiqueGRPOConfig(reward="verifier", grpo=GRPOConfig(num_generations=2)), runtime)
    params, rows = train(runtime=runtime, init_params=runtime.init_params, ref_params=runtime.init_params,
                         method=method, data=TrainData(problems=generate_synth_math(4, [2], 0)), loop=loop,
                         ckpt_dir=str(tmp_path / "b6"), log=lambda m: None)
    row = rows[-1]
    assert row["reward/accuracy"] == 0.0 and row["critique_grpo/refine_frac"] == 1.0
    assert row["critique_grpo/refine_accuracy"] == 1.0 and row["critique_grpo/off_tokens"] > 0
    assert row["critique_grpo/off_loss"] < 0 and math.isfinite(row["loss"]) and row["grad_norm"] > 0
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(params["policy"]), jax.tree_util.tree_leaves(runtime.init_params))]
    assert any(moved)
