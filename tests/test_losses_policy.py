"""Hand-computed checks of cts.losses.{sft,dpo,grpo}.

Every expected number is derived in a comment from the inputs; e^x values to 7 digits.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cts.losses.dpo import dpo_loss, sequence_logps
from cts.losses.grpo import (
    GRPOConfig,
    get_kl_estimator,
    get_loss_agg,
    group_advantages,
    grpo_advantages,
    grpo_loss,
    kl_estimators,
    loss_aggs,
    register_loss_agg,
    token_advantages,
)
from cts.losses.sft import sft_loss

NEG_INF = -jnp.inf
TOL = dict(rtol=1e-6, atol=1e-6)


# ==============================================================================
# SFT
# ==============================================================================

# row 0 supervises tokens with logp −1, −2; row 1 one token with −0.5; the rest is padding (-inf)
SFT_LOGPS = jnp.array([[-1.0, -2.0, NEG_INF], [-0.5, NEG_INF, NEG_INF]])
SFT_MASK = jnp.array([[1, 1, 0], [1, 0, 0]])


def test_sft_token_mean_by_hand():
    loss, m = sft_loss(SFT_LOGPS, SFT_MASK)
    # (1 + 2 + 0.5) / 3 tokens
    np.testing.assert_allclose(loss, 3.5 / 3, **TOL)
    np.testing.assert_allclose(m["sft/perplexity"], math.exp(3.5 / 3), rtol=1e-6)
    assert float(m["sft/n_tokens"]) == 3 and float(m["sft/n_sequences"]) == 2


def test_sft_sequence_mean_by_hand():
    loss, m = sft_loss(SFT_LOGPS, SFT_MASK, reduction="sequence_mean")
    # row means 1.5 and 0.5 → 1.0; the token mean is still reported
    np.testing.assert_allclose(loss, 1.0, **TOL)
    np.testing.assert_allclose(m["sft/token_nll"], 3.5 / 3, **TOL)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_sft_padding_changes_nothing(reduction):
    # two extra padded columns (NaN) and one all-padding row
    logps = jnp.pad(SFT_LOGPS, ((0, 1), (0, 2)), constant_values=jnp.nan)
    mask = jnp.pad(SFT_MASK, ((0, 1), (0, 2)))
    a, _ = sft_loss(SFT_LOGPS, SFT_MASK, reduction=reduction)
    b, _ = sft_loss(logps, mask, reduction=reduction)
    assert float(a) == float(b)
    grad = jax.jit(jax.grad(lambda x: sft_loss(x, mask, reduction=reduction)[0]))(logps)
    assert np.isfinite(np.asarray(grad)).all()
    # token mean: d/dlogp = −1/3 on each supervised token, 0 elsewhere
    if reduction == "token_mean":
        np.testing.assert_allclose(grad[:2, :3], -jnp.asarray(SFT_MASK) / 3.0, **TOL)


def test_sft_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        sft_loss(SFT_LOGPS, SFT_MASK[:, :2])
    with pytest.raises(ValueError, match="'median'"):
        sft_loss(SFT_LOGPS, SFT_MASK, reduction="median")


# ==============================================================================
# DPO
# ==============================================================================

# chosen log-ratios πθ−ref: [−10 − (−10.5), −12 − (−12)] = [0.5, 0]
# rejected log-ratios:      [−11 − (−10.5), −10 − (−11)]  = [−0.5, 1]
# h = [1, −1], β h = [0.1, −0.1]
DPO_ARGS = (jnp.array([-10.0, -12.0]), jnp.array([-11.0, -10.0]),
            jnp.array([-10.5, -12.0]), jnp.array([-10.5, -11.0]))
SOFTPLUS_M01 = math.log1p(math.exp(-0.1))  # −log σ(0.1) = 0.6443967
SOFTPLUS_P01 = math.log1p(math.exp(0.1))  # −log σ(−0.1) = 0.7443967


def test_dpo_by_hand():
    loss, m = dpo_loss(*DPO_ARGS, beta=0.1)
    np.testing.assert_allclose(loss, (SOFTPLUS_M01 + SOFTPLUS_P01) / 2, **TOL)  # 0.6943967
    np.testing.assert_allclose(m["dpo/rewards_chosen"], (0.05 + 0.0) / 2, **TOL)
    np.testing.assert_allclose(m["dpo/rewards_rejected"], (-0.05 + 0.1) / 2, **TOL)
    np.testing.assert_allclose(m["dpo/reward_margin"], (0.1 - 0.1) / 2, **TOL)
    assert float(m["dpo/accuracy"]) == 0.5  # row 0 right (0.05 > −0.05), row 1 wrong (0 < 0.1)


def test_dpo_label_smoothing_by_hand():
    # row 0 only: 0.9·softplus(−0.1) + 0.1·softplus(0.1)
    args = tuple(a[:1] for a in DPO_ARGS)
    loss, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    np.testing.assert_allclose(loss, 0.9 * SOFTPLUS_M01 + 0.1 * SOFTPLUS_P01, **TOL)  # 0.6543967


def test_dpo_equal_policy_and_reference_is_log2():
    x = jnp.array([-3.0, -7.0, -1.0])
    loss, m = dpo_loss(x, x - 1.0, x, x - 1.0, beta=0.5)
    np.testing.assert_allclose(loss, math.log(2.0), **TOL)
    assert float(m["dpo/accuracy"]) == 0.0  # ties count as wrong


def test_dpo_gradient_by_hand():
    # ∂/∂πθ(y_w) of mean −log σ(β h) = −β σ(−β h) / B
    grad = jax.jit(jax.grad(lambda c: dpo_loss(c, *DPO_ARGS[1:], beta=0.1)[0]))(DPO_ARGS[0])
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    np.testing.assert_allclose(grad, [-0.1 * sig(-0.1) / 2, -0.1 * sig(0.1) / 2], **TOL)


def test_dpo_bad_input():
    with pytest.raises(ValueError, match="-0.1"):
        dpo_loss(*DPO_ARGS, beta=-0.1)
    with pytest.raises(ValueError, match="0.5"):
        dpo_loss(*DPO_ARGS, label_smoothing=0.5)
    with pytest.raises(ValueError, match="ref_rejected"):
        dpo_loss(*DPO_ARGS[:3], DPO_ARGS[3][:1])


def test_sequence_logps_sums_masked_tokens():
    np.testing.assert_allclose(sequence_logps(SFT_LOGPS, SFT_MASK), [-3.0, -0.5], **TOL)


# ==============================================================================
# Group advantages
# ==============================================================================

REWARDS = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # 2 prompts × G=4


def test_group_advantages_sample_std():
    adv = group_advantages(REWARDS, 4, eps=0.0)
    # group 1: mean .5, sample std sqrt(4·.25/3) = 1/√3 → ±.5·√3 = ±0.8660254
    # group 2: mean .25, deviations (−.25 ×3, .75), sample var (3·.0625+.5625)/3 = .25, std .5
    s = 0.5 * math.sqrt(3.0)
    np.testing.assert_allclose(adv, [s, -s, -s, s, -0.5, -0.5, -0.5, 1.5], **TOL)


def test_group_advantages_population_std_eps_and_none():
    adv = group_advantages(REWARDS, 4, eps=0.0, std="population")
    # population std: group 1 .5 → ±1; group 2 sqrt(.75/4) = 0.4330127
    d = math.sqrt(0.75 / 4)
    np.testing.assert_allclose(adv, [1, -1, -1, 1, -0.25 / d, -0.25 / d, -0.25 / d, 0.75 / d],
                               **TOL)
    # ε is added to the std: .75 / (.5 + .5) = .75
    np.testing.assert_allclose(group_advantages(REWARDS, 4, eps=0.5)[7], 0.75, **TOL)
    # Dr.GRPO: centring only
    np.testing.assert_allclose(group_advantages(REWARDS, 4, scale="none"),
                               [0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75], **TOL)


def test_group_advantages_constant_group_is_zero_and_config_passthrough():
    adv = group_advantages(jnp.array([3.0, 3.0, 1.0, 2.0]), 2)
    np.testing.assert_allclose(adv[:2], [0.0, 0.0])  # 0 / (0 + ε), not NaN
    cfg = GRPOConfig(num_generations=4, adv_eps=0.5, adv_std="population")
    np.testing.assert_allclose(grpo_advantages(REWARDS, cfg),
                               group_advantages(REWARDS, 4, eps=0.5, std="population"))


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="not a multiple of num_generations=3"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="'batch'"):
        group_advantages(REWARDS, 4, scale="batch")
    with pytest.raises(ValueError, match=r"\[B\]"):
        group_advantages(REWARDS.reshape(2, 4), 4)


# ==============================================================================
# GRPO loss
# ==============================================================================
# Two completions, T = 3; row 1 has 2 tokens (last column padding: -inf / NaN there).
#   log ρ = logp − old = [[0, .3, −.4], [0, −.3]]
#   ρ = [[1, 1.3498588, 0.6703200], [1, 0.7408182]]
#   A = [1, −2]; clip range [1 − .2, 1 + .28] = [.8, 1.28]
#   row 0 (A=1):  −min(ρ, clip ρ)   = [−1, −1.28 (high clip active), −0.6703200]
#   row 1 (A=−2): −min(−2ρ, −2 clip ρ) = [2, 1.6 (ρ=.741 < .8: low clip active)]
#   Σ per-token = −2.9503200 + 3.6 = 0.6496800
LOGP = jnp.array([[-1.0, -2.0, -0.5], [-1.5, -1.0, NEG_INF]])
OLD = jnp.array([[-1.0, -2.3, -0.1], [-1.5, -0.7, jnp.nan]])
REF = jnp.array([[-1.0, -1.5, -0.5], [-2.0, -1.0, jnp.nan]])
MASK = jnp.array([[1, 1, 1], [1, 1, 0]])
ADV = jnp.array([1.0, -2.0])
E = math.exp
PG_TOKENS = [-1.0, -1.28, -E(-0.4), 2.0, 1.6]
PG_SUM = sum(PG_TOKENS)

PG_BY_AGG = {
    "sequence-mean-token-mean": (sum(PG_TOKENS[:3]) / 3 + 3.6 / 2) / 2,  # 0.4082800
    "token-mean": PG_SUM / 5,  # 0.1299360
    "dr-grpo": PG_SUM / (2 * 3),  # 0.1082800, B·T
    "seq-mean-token-sum": PG_SUM / 2,  # 0.3248400
}
# KL per token, logp − ref = [[0, −.5, 0], [.5, 0]]
#   k1 = logp − ref;   k3 = e^d − d − 1 with d = ref − logp = [[0, .5, 0], [−.5, 0]]
K3_A = E(0.5) - 1.5  # 0.1487213
K3_B = E(-0.5) - 0.5  # 0.1065307
KL_BY_AGG = {
    "k1": {"sequence-mean-token-mean": (-0.5 / 3 + 0.5 / 2) / 2, "token-mean": 0.0,
           "dr-grpo": 0.0, "seq-mean-token-sum": 0.0},
    "k3": {"sequence-mean-token-mean": (K3_A / 3 + K3_B / 2) / 2,  # 0.0514195
           "token-mean": (K3_A + K3_B) / 5, "dr-grpo": (K3_A + K3_B) / 6,
           "seq-mean-token-sum": (K3_A + K3_B) / 2},
}


def test_registries_cover_the_documented_names():
    assert loss_aggs() == ("dr-grpo", "seq-mean-token-sum", "sequence-mean-token-mean",
                           "token-mean")
    assert kl_estimators() == ("k1", "k3")


@pytest.mark.parametrize("agg", list(PG_BY_AGG))
@pytest.mark.parametrize("kl", ["k1", "k3"])
def test_grpo_loss_each_aggregation_and_estimator_by_hand(agg, kl):
    cfg = GRPOConfig(loss_agg=agg, kl_estimator=kl, beta=0.04, epsilon_low=0.2,
                     epsilon_high=0.28)
    loss, m = grpo_loss(LOGP, OLD, REF, ADV, MASK, cfg)
    np.testing.assert_allclose(m["grpo/pg_loss"], PG_BY_AGG[agg], **TOL)
    np.testing.assert_allclose(m["grpo/kl_loss"], KL_BY_AGG[kl][agg], **TOL)
    np.testing.assert_allclose(loss, PG_BY_AGG[agg] + 0.04 * KL_BY_AGG[kl][agg], **TOL)
    # the logged KL is always the token mean
    np.testing.assert_allclose(m["grpo/kl"], KL_BY_AGG[kl]["token-mean"], **TOL)


def test_grpo_metrics_by_hand():
    _, m = grpo_loss(LOGP, OLD, REF, ADV, MASK, GRPOConfig())
    expected = {
        "grpo/clip_frac": 2 / 5, "grpo/clip_frac_low": 1 / 5, "grpo/clip_frac_high": 1 / 5,
        "grpo/ratio_mean": (1 + E(0.3) + E(-0.4) + 1 + E(-0.3)) / 5,  # 0.9521994
        "grpo/ratio_min": E(-0.4), "grpo/ratio_max": E(0.3),
        "grpo/log_ratio_abs_mean": (0.3 + 0.4 + 0.3) / 5,
        "grpo/ppo_kl": (-0.3 + 0.4 + 0.3) / 5,  # mean of old − logp
        "grpo/adv_mean": (3 * 1 + 2 * -2) / 5, "grpo/adv_abs_mean": (3 + 4) / 5,
        "grpo/adv_min": -2.0, "grpo/adv_max": 1.0, "grpo/adv_nonzero_frac": 1.0,
        # token-level adv values [1,1,1,−2,−2], mean −.2: var = (3·1.44 + 2·3.24)/5 = 2.16
        "grpo/adv_std": math.sqrt(2.16), "grpo/n_tokens": 5.0,
    }
    for key, value in expected.items():
        np.testing.assert_allclose(m[key], value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_dr_grpo_uses_max_completion_length():
    cfg = GRPOConfig(loss_agg="dr-grpo", beta=0.0, max_completion_length=4)
    loss, _ = grpo_loss(LOGP, OLD, None, ADV, MASK, cfg)
    np.testing.assert_allclose(loss, PG_SUM / (2 * 4), **TOL)  # 0.0812100
    with pytest.raises(ValueError, match="max_completion_length=2"):
        grpo_loss(LOGP, OLD, None, ADV, MASK, GRPOConfig(loss_agg="dr-grpo", beta=0.0,
                                                         max_completion_length=2))


def _pad(x, cols, rows=0, value=jnp.nan):
    return jnp.pad(x, ((0, rows), (0, cols)), constant_values=value)


@pytest.mark.parametrize("agg", list(PG_BY_AGG))
def test_grpo_padding_changes_nothing(agg):
    cfg = GRPOConfig(loss_agg=agg, max_completion_length=8)
    base, base_m = grpo_loss(LOGP, OLD, REF, ADV, MASK, cfg)
    # 3 extra NaN columns; for every mode except dr-grpo (B·L counts rows) also an empty row
    rows = 0 if agg == "dr-grpo" else 1
    padded = [_pad(x, 3, rows) for x in (LOGP, OLD, REF)]
    mask = _pad(MASK, 3, rows, value=0)
    adv = jnp.pad(ADV, (0, rows), constant_values=jnp.nan)
    loss, m = grpo_loss(*padded[:2], padded[2], adv, mask, cfg)
    np.testing.assert_allclose(loss, base, rtol=1e-7)
    for key in ("grpo/kl", "grpo/clip_frac", "grpo/ratio_max", "grpo/adv_std"):
        np.testing.assert_allclose(m[key], base_m[key], rtol=1e-7, err_msg=key)
    grads = jax.jit(jax.grad(lambda x: grpo_loss(x, *padded[1:], adv, mask, cfg)[0]))(padded[0])
    assert np.isfinite(np.asarray(grads)).all()
    assert not np.asarray(grads)[np.asarray(mask) == 0].any()


def test_grpo_gradient_by_hand():
    # seq-mean-token-mean, β = 0: ∂ℓ/∂logp = −A ρ / (|o_i| · n_rows) where the unclipped term is
    # active, 0 where the clip is active (tokens (0,1) and (1,1))
    cfg = GRPOConfig(beta=0.0)
    grad = jax.jit(jax.grad(lambda x: grpo_loss(x, OLD, None, ADV, MASK, cfg)[0]))(LOGP)
    expected = [[-1.0 / 6, 0.0, -E(-0.4) / 6], [2.0 / 4, 0.0, 0.0]]
    np.testing.assert_allclose(grad, expected, **TOL)


def test_grpo_kl_gradient_by_hand():
    # A = 0 leaves only β·KL. k3: ∂/∂logp (e^d − d − 1) = 1 − e^d, d = ref − logp.
    # token-mean over 5 tokens, β = 0.5
    cfg = GRPOConfig(beta=0.5, loss_agg="token-mean", kl_estimator="k3")
    grad = jax.jit(jax.grad(lambda x: grpo_loss(x, OLD, REF, jnp.zeros(2), MASK, cfg)[0]))(LOGP)
    expected = 0.5 / 5 * np.array([[0.0, 1 - E(0.5), 0.0], [1 - E(-0.5), 0.0, 0.0]])
    np.testing.assert_allclose(grad, expected, **TOL)
    # k1: ∂/∂logp (logp − ref) = 1 on every token
    cfg1 = GRPOConfig(beta=0.5, loss_agg="token-mean", kl_estimator="k1")
    grad1 = jax.jit(jax.grad(lambda x: grpo_loss(x, OLD, REF, jnp.zeros(2), MASK, cfg1)[0]))(LOGP)
    np.testing.assert_allclose(grad1, 0.1 * np.asarray(MASK), **TOL)


def test_grpo_on_policy_old_none():
    # ρ ≡ 1: loss = −mean A over rows = −(1 − 2)/2 = 0.5; gradient −A/(|o_i|·2)
    cfg = GRPOConfig(beta=0.0)
    loss, m = grpo_loss(LOGP, None, None, ADV, MASK, cfg)
    np.testing.assert_allclose(loss, 0.5, **TOL)
    assert float(m["grpo/clip_frac"]) == 0.0
    grad = jax.jit(jax.grad(lambda x: grpo_loss(x, None, None, ADV, MASK, cfg)[0]))(LOGP)
    np.testing.assert_allclose(grad, [[-1 / 6, -1 / 6, -1 / 6], [0.5, 0.5, 0.0]], **TOL)


def test_grpo_beta_zero_is_bit_identical_to_pg_term():
    loss, m = grpo_loss(LOGP, OLD, REF, ADV, MASK, GRPOConfig(beta=0.0))
    assert float(loss) == float(m["grpo/pg_loss"])
    loss_none, _ = grpo_loss(LOGP, OLD, None, ADV, MASK, GRPOConfig(beta=0.0))
    assert float(loss_none) == float(loss)


def test_grpo_log_ratio_clipped_at_20():
    # log ρ = 50 → clipped to 20 before exp; with A = −1 the unclipped term wins: loss = e^20
    logp = jnp.array([[10.0]])
    old = jnp.array([[-40.0]])
    loss, m = grpo_loss(logp, old, None, jnp.array([-1.0]), jnp.ones((1, 1)),
                        GRPOConfig(beta=0.0))
    np.testing.assert_allclose(loss, E(20.0), rtol=1e-6)
    np.testing.assert_allclose(m["grpo/ratio_max"], E(20.0), rtol=1e-6)
    np.testing.assert_allclose(m["grpo/ppo_kl"], -50.0, rtol=1e-6)  # before the clip
    assert np.isfinite(float(jax.jit(jax.grad(lambda x: grpo_loss(
        x, old, None, jnp.array([-1.0]), jnp.ones((1, 1)), GRPOConfig(beta=0.0))[0]))(logp)[0, 0]))


def test_token_advantages_broadcast_and_flagged_penalty():
    # [B] broadcast equals the explicit [B, T]
    tok = token_advantages(ADV, MASK)
    np.testing.assert_allclose(tok, [[1, 1, 1], [-2, -2, 0]])
    cfg = GRPOConfig()
    np.testing.assert_allclose(grpo_loss(LOGP, OLD, REF, tok, MASK, cfg)[0],
                               grpo_loss(LOGP, OLD, REF, ADV, MASK, cfg)[0], rtol=1e-7)
    # penalty λ = .5 on the flagged step = token (0, 1); padding stays 0 even if flagged
    flagged = jnp.array([[0, 1, 0], [0, 0, 1]])
    pen = token_advantages(ADV, MASK, flagged_mask=flagged, step_penalty=0.5)
    np.testing.assert_allclose(pen, [[1, 0.5, 1], [-2, -2, 0]])
    # A = .5 at ρ = 1.3498588 > 1.28: still clipped → −.5·1.28 = −.64 instead of −1.28;
    # token-mean: (PG_SUM + 1.28 − .64) / 5
    loss, _ = grpo_loss(LOGP, OLD, None, pen, MASK, GRPOConfig(beta=0.0, loss_agg="token-mean"))
    np.testing.assert_allclose(loss, (PG_SUM + 1.28 - 0.64) / 5, **TOL)
    with pytest.raises(ValueError, match=r"\[B\] or \[B, T\]"):
        token_advantages(jnp.ones(3), MASK)
    with pytest.raises(ValueError, match="-1"):
        token_advantages(ADV, MASK, flagged_mask=flagged, step_penalty=-1.0)


def test_grpo_jit_matches_eager():
    cfg = GRPOConfig(loss_agg="dr-grpo", kl_estimator="k1")
    jitted = jax.jit(grpo_loss, static_argnames="cfg")
    loss_j, m_j = jitted(LOGP, OLD, REF, ADV, MASK, cfg=cfg)
    loss_e, m_e = grpo_loss(LOGP, OLD, REF, ADV, MASK, cfg)
    np.testing.assert_allclose(loss_j, loss_e, rtol=1e-6)
    assert set(m_j) == set(m_e)
    adv_j = jax.jit(group_advantages, static_argnums=1)(REWARDS, 4)
    np.testing.assert_allclose(adv_j, group_advantages(REWARDS, 4), rtol=1e-6)
    sft_j = jax.jit(sft_loss, static_argnames="reduction")(SFT_LOGPS, SFT_MASK,
                                                            reduction="sequence_mean")
    np.testing.assert_allclose(sft_j[0], 1.0, **TOL)
    np.testing.assert_allclose(jax.jit(dpo_loss)(*DPO_ARGS)[0], 0.6943967, rtol=1e-6)


def test_grpo_bad_input():
    with pytest.raises(ValueError, match="beta = 0.04"):
        grpo_loss(LOGP, OLD, None, ADV, MASK, GRPOConfig())
    with pytest.raises(ValueError, match="shapes"):
        grpo_loss(LOGP, OLD[:, :2], REF, ADV, MASK, GRPOConfig())
    with pytest.raises(ValueError, match=r"\[B\] or \[B, T\]"):
        grpo_loss(LOGP, OLD, REF, jnp.ones(3), MASK, GRPOConfig())
    with pytest.raises(TypeError, match="GRPOConfig"):
        grpo_loss(LOGP, OLD, REF, ADV, MASK, {"beta": 0.0})


# ==============================================================================
# Config and registries
# ==============================================================================

@pytest.mark.parametrize("field,value", [
    ("num_generations", 1), ("num_generations", 2.0), ("num_generations", True),
    ("beta", -0.1), ("beta", float("nan")), ("epsilon_low", 1.0), ("epsilon_low", 0.0),
    ("epsilon_high", 0.0), ("adv_eps", 0.0), ("adv_std", "unbiased"), ("adv_scale", "batch"),
    ("max_completion_length", 0),
])
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{field} .*got {value!r}".replace(
            "(", r"\(").replace(")", r"\)")):
        GRPOConfig(**{field: value})


def test_config_unknown_names_list_valid_ones():
    with pytest.raises(LookupError, match=r"'k2'.*\['k1', 'k3'\]"):
        GRPOConfig(kl_estimator="k2")
    with pytest.raises(LookupError, match="'bnpo'.*'dr-grpo'.*'token-mean'"):
        GRPOConfig(loss_agg="bnpo")
    with pytest.raises(LookupError, match="valid names"):
        get_loss_agg("sum")
    with pytest.raises(LookupError, match="valid names"):
        get_kl_estimator("mse_kl")


def test_config_is_frozen_kw_only_and_hashable():
    cfg = GRPOConfig()
    with pytest.raises(Exception):
        cfg.beta = 1.0
    with pytest.raises(TypeError):
        GRPOConfig(8)
    assert hash(cfg) == hash(GRPOConfig())
    assert cfg.to_dict()["kl_estimator"] == "k3"


def test_register_duplicate_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_loss_agg("token-mean")(lambda x, m, n: x.sum())
