"""Direct Preference Optimization, sigmoid form (Rafailov et al. 2023, arXiv:2305.18290).

For a pair (y_w chosen, y_l rejected) with summed sequence log-probs,

    h      = (log πθ(y_w) − log π_ref(y_w)) − (log πθ(y_l) − log π_ref(y_l))
    loss   = −(1 − s)·log σ(β·h) − s·log σ(−β·h)            (s = label smoothing)

averaged over the batch. s > 0 is the "conservative DPO" smoothing (labels flipped with
probability s). The reference model is frozen: the loop passes its log-probs as plain arrays, so
no gradient reaches it even without `stop_gradient`.

Conventions (Tunix `tunix.sft.dpo.dpo_trainer.dpo_loss_fn` and TRL `DPOTrainer` agree on all of
them): sequence log-probs are SUMS over response tokens, not means; β = 0.1 by default; the
implicit rewards are β·(log πθ − log π_ref); "accuracy" is the fraction of pairs whose chosen
reward is strictly greater than the rejected one (ties count as wrong).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dpo_loss", "sequence_logps"]


def sequence_logps(token_logps: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of the response tokens' log-probs per row.

    Args:
      token_logps: [B, T] float log-probs of the target tokens.
      mask: [B, T] bool or {0,1}, 1 on response tokens (values under 0 are never read).

    Returns:
      [B] float32, Σ_t mask·logp.
    """
    if jnp.shape(token_logps) != jnp.shape(mask) or jnp.ndim(token_logps) != 2:
        raise ValueError(f"token_logps {jnp.shape(token_logps)} and mask {jnp.shape(mask)} "
                         "must both be [B, T]")
    return jnp.where(mask.astype(bool), token_logps.astype(jnp.float32), 0.0).sum(axis=-1)


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid DPO loss on summed sequence log-probs.

    Args:
      policy_chosen: [B] log πθ(y_w | x), summed over response tokens.
      policy_rejected: [B] log πθ(y_l | x).
      ref_chosen: [B] log π_ref(y_w | x) from the frozen reference.
      ref_rejected: [B] log π_ref(y_l | x).
      beta: β > 0, inverse temperature of the implicit reward (0.1 as in the paper, Tunix, TRL).
      label_smoothing: s in [0, 0.5); 0 is plain DPO.

    Returns:
      (loss, metrics): float32 scalar; metrics `dpo/rewards_chosen`, `dpo/rewards_rejected`
      (batch means of β·(log πθ − log π_ref)), `dpo/reward_margin` (their mean difference),
      `dpo/accuracy`, `dpo/logps_chosen`, `dpo/logps_rejected` (policy means).
    """
    shapes = {name: tuple(jnp.shape(a)) for name, a in (
        ("policy_chosen", policy_chosen), ("policy_rejected", policy_rejected),
        ("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected))}
    if len(set(shapes.values())) != 1 or len(shapes["policy_chosen"]) != 1:
        raise ValueError(f"DPO inputs must all be [B] arrays of one length, got {shapes}")
    # checked only when given as Python numbers (a traced β cannot be inspected)
    if isinstance(beta, (int, float)) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")

    f32 = jnp.float32
    chosen_log_ratio = policy_chosen.astype(f32) - ref_chosen.astype(f32)  # (B,)
    rejected_log_ratio = policy_rejected.astype(f32) - ref_rejected.astype(f32)  # (B,)
    logits = beta * (chosen_log_ratio - rejected_log_ratio)  # (B,) β·h
    losses = -((1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
               + label_smoothing * jax.nn.log_sigmoid(-logits))  # (B,)

    rewards_chosen = beta * chosen_log_ratio
    rewards_rejected = beta * rejected_log_ratio
    metrics = {
        "dpo/rewards_chosen": rewards_chosen.mean(),
        "dpo/rewards_rejected": rewards_rejected.mean(),
        "dpo/reward_margin": (rewards_chosen - rewards_rejected).mean(),
        "dpo/accuracy": (rewards_chosen > rewards_rejected).astype(f32).mean(),
        "dpo/logps_chosen": policy_chosen.astype(f32).mean(),
        "dpo/logps_rejected": policy_rejected.astype(f32).mean(),
    }
    return losses.mean(), metrics
