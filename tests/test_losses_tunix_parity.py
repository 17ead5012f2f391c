"""Parity of cts.losses with Tunix 0.1.7 (the installed wheel) on identical random inputs.

Tunix's GRPO, DPO and SFT losses take a model, not log-probs. The oracle here is a bigram model
(logits of position t = a table row chosen by token t) that Tunix runs through its own
`compute_per_token_logps` / `get_per_token_logps` / `_default_loss_fn`; our side recomputes the
per-token log-probs independently (`log_softmax(table[prev])[next]`) and feeds them to our pure
losses. Values and gradients w.r.t. the table must agree to 1e-5.

Mode mapping (ours → Tunix `loss_agg_mode`):
  sequence-mean-token-mean → sequence-mean-token-mean
  token-mean               → token-mean
  dr-grpo                  → sequence-mean-token-scale (norm = T; equal to our B·T constant
                             because every row here has ≥ 1 token)
  seq-mean-token-sum       → seq-mean-token-sum and sequence-mean-token-sum-norm
KL: ours k1 → Tunix "kl", k3 → "low_var_kl".
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cts.losses.dpo import dpo_loss, sequence_logps
from cts.losses.grpo import GRPOConfig, group_advantages, grpo_loss
from cts.losses.sft import sft_loss

algo_core = pytest.importorskip("tunix.rl.algo_core")
from tunix.rl import common as tunix_common  # noqa: E402
from tunix.sft import peft_trainer as tunix_peft  # noqa: E402
from tunix.sft.dpo import dpo_trainer as tunix_dpo  # noqa: E402

VOCAB = 11
PAD_ID, EOS_ID = 0, 1
TOL = dict(rtol=1e-5, atol=1e-5)


class BigramLM(nnx.Module):
    """logits[b, t] = table[tokens[b, t]]: the smallest model Tunix's loss functions accept."""

    def __init__(self, key):
        self.table = nnx.Param(jax.random.normal(key, (VOCAB, VOCAB)))  # (V, V)

    def __call__(self, tokens, positions=None, cache=None, attention_mask=None, **kwargs):
        return self.table[tokens], None  # (B, L, V)


def bigram_logps(table, tokens):
    """Our independent recomputation: [B, L] tokens → [B, L−1] log p(tokens[:, 1:])."""
    logp_all = jax.nn.log_softmax(table[tokens[:, :-1]], axis=-1)  # (B, L−1, V)
    return jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]


def _batch(seed, n_rows=6, prompt_len=4, completion_len=7):
    """Random non-pad tokens, a right-padded completion mask (every row ≥ 1 token), and old/ref
    log-probs = current ± noise large enough to hit both clip sides."""
    k = jax.random.split(jax.random.key(seed), 6)
    model = BigramLM(k[0])
    tokens = jax.random.randint(k[1], (n_rows, prompt_len + completion_len), 2, VOCAB)
    lengths = jax.random.randint(k[2], (n_rows,), 1, completion_len + 1)
    mask = (jnp.arange(completion_len)[None, :] < lengths[:, None]).astype(jnp.int32)
    logps = bigram_logps(model.table[...], tokens)[:, prompt_len - 1:]  # (B, Tc)
    old = logps + 0.3 * jax.random.normal(k[3], logps.shape)
    ref = logps + 0.5 * jax.random.normal(k[4], logps.shape)
    adv = jax.random.normal(k[5], (n_rows,))
    return model, tokens[:, :prompt_len], tokens[:, prompt_len:], mask, old, ref, adv


# ==============================================================================
# Advantages and KL estimators (pure functions on both sides)
# ==============================================================================

@pytest.mark.parametrize("num_generations", [2, 4, 8])
def test_group_advantages_match_tunix(num_generations):
    rewards = jax.random.normal(jax.random.key(num_generations), (num_generations * 5,))
    rewards = rewards.at[:num_generations].set(0.5)  # one constant group: 0 on both sides
    ours = group_advantages(rewards, num_generations, eps=1e-6)
    theirs = algo_core.compute_advantages(np.asarray(rewards), num_generations)
    np.testing.assert_allclose(ours, theirs, **TOL)
    ours_dr = group_advantages(rewards, num_generations, scale="none")
    np.testing.assert_allclose(ours_dr, algo_core.compute_drgrpo_advantages(rewards,
                                                                             num_generations),
                               **TOL)


@pytest.mark.parametrize("ours,theirs", [("k1", "kl"), ("k3", "low_var_kl")])
def test_kl_estimators_match_tunix(ours, theirs):
    from cts.losses.grpo import get_kl_estimator

    k1, k2 = jax.random.split(jax.random.key(3))
    logp = -jnp.abs(jax.random.normal(k1, (4, 9))) * 3
    ref = -jnp.abs(jax.random.normal(k2, (4, 9))) * 3
    np.testing.assert_allclose(get_kl_estimator(ours)(logp, ref),
                               tunix_common.compute_kl_divergence(logp, ref, theirs), **TOL)


# ==============================================================================
# GRPO loss through Tunix's grpo_loss_fn
# ==============================================================================

AGG_PAIRS = [
    ("sequence-mean-token-mean", "sequence-mean-token-mean"),
    ("token-mean", "token-mean"),
    ("dr-grpo", "sequence-mean-token-scale"),
    ("seq-mean-token-sum", "seq-mean-token-sum"),
    ("seq-mean-token-sum", "sequence-mean-token-sum-norm"),
]


def _tunix_grpo(model, prompt, completion, mask, old, ref, adv, *, mode, beta, eps_low,
                eps_high, kl_mode):
    # Tunix's GRPOConfig is a slots dataclass without epsilon_high/temperature (set by its
    # learner); grpo_loss_fn only reads attributes, so a namespace carries them.
    algo_config = types.SimpleNamespace(
        beta=beta, epsilon=eps_low, epsilon_high=eps_high, epsilon_c=None, loss_algo="grpo",
        loss_agg_mode=mode, temperature=1.0, kl_loss_mode=kl_mode, kl_clamp_value=None)
    example = tunix_common.TrainExample(
        prompt_ids=prompt, prompt_mask=jnp.ones_like(prompt), completion_ids=completion,
        completion_mask=mask, advantages=adv, ref_per_token_logps=ref,
        old_per_token_logps=old)
    return algo_core.grpo_loss_fn(model, example, algo_config, PAD_ID, EOS_ID)


def _ours_grpo(table, prompt, completion, mask, old, ref, adv, cfg):
    tokens = jnp.concatenate([prompt, completion], axis=1)
    logps = bigram_logps(table, tokens)[:, prompt.shape[1] - 1:]  # (B, Tc)
    return grpo_loss(logps, old, ref, adv, mask, cfg)


@pytest.mark.parametrize("ours_mode,tunix_mode", AGG_PAIRS)
def test_grpo_loss_matches_tunix_each_aggregation(ours_mode, tunix_mode):
    model, prompt, completion, mask, old, ref, adv = _batch(seed=len(tunix_mode))
    cfg = GRPOConfig(loss_agg=ours_mode, beta=0.04, epsilon_low=0.2, epsilon_high=0.28,
                     kl_estimator="k3")
    loss_t, aux_t = _tunix_grpo(model, prompt, completion, mask, old, ref, adv, mode=tunix_mode,
                                beta=0.04, eps_low=0.2, eps_high=0.28, kl_mode="low_var_kl")
    loss_o, m = _ours_grpo(model.table[...], prompt, completion, mask, old, ref, adv, cfg)
    np.testing.assert_allclose(loss_o, loss_t, **TOL)
    np.testing.assert_allclose(m["grpo/pg_loss"], aux_t["pg_loss"], **TOL)
    np.testing.assert_allclose(m["grpo/kl_loss"], aux_t["kl_loss"], **TOL)
    np.testing.assert_allclose(m["grpo/kl"], aux_t["kl"], **TOL)
    for ours_key, tunix_key in [("grpo/clip_frac", "pg_clipfrac"), ("grpo/ppo_kl", "ppo_kl"),
                                ("grpo/ratio_mean", "is_ratio/mean"),
                                ("grpo/ratio_max", "is_ratio/max"),
                                ("grpo/ratio_min", "is_ratio/min"),
                                ("grpo/log_ratio_abs_mean", "log_ratio/abs_mean"),
                                ("grpo/adv_abs_mean", "advantage/abs_mean"),
                                ("grpo/adv_max", "advantage/max"),
                                ("grpo/adv_min", "advantage/min")]:
        np.testing.assert_allclose(m[ours_key], aux_t[tunix_key], err_msg=ours_key, **TOL)
    # the random data must exercise both clip sides, or the test proves less than it claims
    assert float(m["grpo/clip_frac_low"]) > 0 and float(m["grpo/clip_frac_high"]) > 0


@pytest.mark.parametrize("ours_mode,tunix_mode", [p for p in AGG_PAIRS if p[0] != "dr-grpo"])
def test_grpo_empty_row_follows_tunix(ours_mode, tunix_mode):
    # Tunix divides sequence means by the NON-EMPTY rows (TRL by B); we follow Tunix.
    model, prompt, completion, mask, old, ref, adv = _batch(seed=13)
    mask = mask.at[2].set(0)
    cfg = GRPOConfig(loss_agg=ours_mode, beta=0.04, epsilon_high=0.2, kl_estimator="k3")
    loss_t, _ = _tunix_grpo(model, prompt, completion, mask, old, ref, adv, mode=tunix_mode,
                            beta=0.04, eps_low=0.2, eps_high=0.2, kl_mode="low_var_kl")
    loss_o, _ = _ours_grpo(model.table[...], prompt, completion, mask, old, ref, adv, cfg)
    np.testing.assert_allclose(loss_o, loss_t, **TOL)


@pytest.mark.parametrize("kl_ours,kl_tunix", [("k1", "kl"), ("k3", "low_var_kl")])
def test_grpo_gradient_matches_tunix(kl_ours, kl_tunix):
    model, prompt, completion, mask, old, ref, adv = _batch(seed=7)
    cfg = GRPOConfig(loss_agg="sequence-mean-token-mean", beta=0.3, epsilon_low=0.2,
                     epsilon_high=0.2, kl_estimator=kl_ours)
    graphdef, state = nnx.split(model)

    def tunix_loss(state):
        return _tunix_grpo(nnx.merge(graphdef, state), prompt, completion, mask, old, ref, adv,
                           mode="sequence-mean-token-mean", beta=0.3, eps_low=0.2,
                           eps_high=0.2, kl_mode=kl_tunix)[0]

    grad_t = jax.grad(tunix_loss)(state)["table"][...]
    grad_o = jax.grad(lambda t: _ours_grpo(t, prompt, completion, mask, old, ref, adv,
                                           cfg)[0])(model.table[...])
    assert float(jnp.abs(grad_o).max()) > 1e-3  # a real gradient, not two zeros
    np.testing.assert_allclose(grad_o, grad_t, **TOL)


def test_grpo_on_policy_matches_tunix_without_old_logps():
    model, prompt, completion, mask, _, ref, adv = _batch(seed=11)
    cfg = GRPOConfig(loss_agg="token-mean", beta=0.04, kl_estimator="k1", epsilon_high=0.2)
    loss_t, _ = _tunix_grpo(model, prompt, completion, mask, None, ref, adv, mode="token-mean",
                            beta=0.04, eps_low=0.2, eps_high=0.2, kl_mode="kl")
    loss_o, _ = _ours_grpo(model.table[...], prompt, completion, mask, None, ref, adv, cfg)
    np.testing.assert_allclose(loss_o, loss_t, **TOL)


# ==============================================================================
# DPO through Tunix's dpo_loss_fn
# ==============================================================================

@pytest.mark.parametrize("beta,label_smoothing", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_loss_matches_tunix(beta, label_smoothing):
    n_pairs, prompt_len, resp_len = 4, 3, 6
    k = jax.random.split(jax.random.key(5), 5)
    model = BigramLM(k[0])
    # rows 0..3 chosen, 4..7 rejected (Tunix's layout); a shared prompt per pair
    prompt = jax.random.randint(k[1], (n_pairs, prompt_len), 2, VOCAB)
    responses = jax.random.randint(k[2], (2 * n_pairs, resp_len), 2, VOCAB)
    tokens = jnp.concatenate([jnp.tile(prompt, (2, 1)), responses], axis=1)
    lengths = jax.random.randint(k[3], (2 * n_pairs,), 1, resp_len + 1)
    mask = (jnp.arange(resp_len)[None, :] < lengths[:, None]).astype(jnp.float32)
    ref = -5.0 + jax.random.normal(k[4], (2 * n_pairs,))  # frozen reference sums
    example = tunix_dpo.TrainExample(
        input_ids=tokens, positions=jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape),
        attention_mask=jnp.ones((2 * n_pairs, tokens.shape[1], tokens.shape[1]), bool),
        ref_chosen_logps=ref[:n_pairs], ref_rejected_logps=ref[n_pairs:], completion_mask=mask,
        logits_to_keep=resp_len)
    loss_t, aux_t = tunix_dpo.dpo_loss_fn(model, example, beta=beta,
                                          label_smoothing=label_smoothing)

    seq = sequence_logps(bigram_logps(model.table[...], tokens)[:, prompt_len - 1:], mask)
    loss_o, m = dpo_loss(seq[:n_pairs], seq[n_pairs:], ref[:n_pairs], ref[n_pairs:],
                         beta=beta, label_smoothing=label_smoothing)
    np.testing.assert_allclose(loss_o, loss_t, **TOL)
    for ours_key, tunix_key in [("dpo/rewards_chosen", "rewards/chosen"),
                                ("dpo/rewards_rejected", "rewards/rejected"),
                                ("dpo/reward_margin", "rewards/margin"),
                                ("dpo/accuracy", "rewards/accuracy"),
                                ("dpo/logps_chosen", "log_probs/chosen"),
                                ("dpo/logps_rejected", "log_probs/rejected")]:
        np.testing.assert_allclose(m[ours_key], aux_t[tunix_key], err_msg=ours_key, **TOL)


# ==============================================================================
# SFT against PeftTrainer's default loss
# ==============================================================================

def test_sft_token_mean_matches_tunix_peft_default_loss():
    k = jax.random.split(jax.random.key(9), 3)
    model = BigramLM(k[0])
    tokens = jax.random.randint(k[1], (5, 12), 2, VOCAB)
    # supervise only a response suffix of random start, as an SFT loop does
    start = jax.random.randint(k[2], (5, 1), 1, 11)
    input_mask = (jnp.arange(12)[None, :] >= start).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12), tokens.shape)
    loss_t = tunix_peft._default_loss_fn(model, tokens, input_mask, positions, None)

    # Tunix's target mask is input_mask[:, 1:] (predicting token t+1 from t)
    loss_o, _ = sft_loss(bigram_logps(model.table[...], tokens), input_mask[:, 1:])
    np.testing.assert_allclose(loss_o, loss_t, **TOL)
