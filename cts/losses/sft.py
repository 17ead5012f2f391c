"""Supervised fine-tuning loss: masked negative log-likelihood of the response tokens.

The training loop computes per-token log-probabilities `log πθ(y_t | x, y_<t)` of the target
tokens and a mask that is 1 on response tokens (the revision y¹, the critique f, ... whatever the
method supervises) and 0 on prompt and padding. This module only reduces them.

Reductions:
  "token_mean"     −Σ_{b,t} m·logp / Σ_{b,t} m. Every supervised token weighs the same, so long
                   responses weigh more. This equals Tunix's `PeftTrainer` default loss
                   (`peft_trainer._default_loss_fn`) and the usual `CrossEntropyLoss(mean)`.
  "sequence_mean"  mean over non-empty rows of (−Σ_t m·logp / Σ_t m): every example weighs the
                   same whatever its length. Rows with no supervised token are left out of the
                   mean (they carry no signal; counting them would shrink the loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["SFT_REDUCTIONS", "sft_loss"]

SFT_REDUCTIONS = ("token_mean", "sequence_mean")


def _check_same_shape(**arrays: jax.Array) -> None:
    shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected matching [B, T] arrays, got shapes {shapes}")


def sft_loss(
    token_logps: jax.Array,
    mask: jax.Array,
    *,
    reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked NLL of the target tokens.

    Args:
      token_logps: [B, T] float, log-probability of each target token under the policy.
      mask: [B, T] bool or {0,1}, 1 on the tokens to supervise. Values under mask 0 are never
        read (they may be -inf or NaN).
      reduction: "token_mean" (default, Tunix's PeftTrainer convention) or "sequence_mean".

    Returns:
      (loss, metrics): loss is a float32 scalar. metrics: `sft/nll` (= loss),
      `sft/token_nll` (token-mean NLL whatever the reduction), `sft/perplexity`
      (exp of the token-mean NLL), `sft/n_tokens`, `sft/n_sequences` (rows with ≥ 1 token).
    """
    _check_same_shape(token_logps=token_logps, mask=mask)
    if reduction not in SFT_REDUCTIONS:
        raise ValueError(f"reduction must be one of {SFT_REDUCTIONS}, got {reduction!r}")

    m = mask.astype(bool)
    # where, not multiply: 0 · (-inf) on padding would be NaN
    nll = jnp.where(m, -token_logps.astype(jnp.float32), 0.0)  # (B, T)
    mf = m.astype(jnp.float32)
    tokens_per_row = mf.sum(axis=-1)  # (B,)
    n_tokens = tokens_per_row.sum()
    nonempty = (tokens_per_row > 0).astype(jnp.float32)  # (B,)
    n_sequences = nonempty.sum()

    token_nll = nll.sum() / jnp.maximum(n_tokens, 1.0)
    if reduction == "token_mean":
        loss = token_nll
    else:
        row_nll = nll.sum(axis=-1) / jnp.maximum(tokens_per_row, 1.0)  # (B,)
        loss = (row_nll * nonempty).sum() / jnp.maximum(n_sequences, 1.0)

    metrics = {
        "sft/nll": loss,
        "sft/token_nll": token_nll,
        "sft/perplexity": jnp.exp(token_nll),
        "sft/n_tokens": n_tokens,
        "sft/n_sequences": n_sequences,
    }
    return loss, metrics
