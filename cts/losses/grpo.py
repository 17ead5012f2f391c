"""Group Relative Policy Optimization loss (Shao et al. 2024, arXiv:2402.03300), with the DAPO
clip-higher (arXiv:2503.14476) and Dr.GRPO (arXiv:2503.20783) variants.

For each prompt the policy samples G completions o_1..o_G; rewards r_i become group-relative
advantages Â_i = (r_i − mean_g r) / (std_g r + ε_adv). For every response token t of o_i,

    log ρ_t  = clip(log πθ(o_t) − log π_old(o_t), −20, 20)          ρ_t = exp(log ρ_t)
    ℓ_t      = −min(ρ_t Â, clip(ρ_t, 1 − ε_low, 1 + ε_high) Â)  +  β · KL̂_t
    loss     = Agg_{i,t}(ℓ_t)

(the PG part and the KL part are aggregated separately with the same Agg and added, exactly
what Tunix does; Agg is linear so this equals aggregating ℓ). The log-ratio is clipped to ±20
before `exp`, as Tunix does, so a stale or corrupted old log-prob cannot overflow float32
(e^20 ≈ 4.9e8; the ε clip makes any ratio beyond 1 ± ε flat anyway). A token whose |log ρ|
exceeds 20 therefore gets zero gradient from the PG term, as in Tunix.

KL estimators (πθ samples, r = π_ref/πθ; both estimate KL(πθ ‖ π_ref)):
  "k1"  log πθ − log π_ref                              Tunix "kl" (its default since 0.1.7)
  "k3"  r − 1 − log r = exp(ref − logp) − (ref − logp) − 1   Tunix "low_var_kl", TRL's only one
k3 is the default here: it is ≥ 0 per token and low-variance, and—the deciding reason—k1
placed in a loss gives a zero-mean gradient (E_πθ[∇ log πθ] = 0), so it does not regularise
towards π_ref at all in expectation.

Aggregations (registry `register_loss_agg`; B rows, T columns, M the mask):
  "sequence-mean-token-mean"  mean over non-empty rows of (Σ_t M ℓ / Σ_t M)   (GRPO paper, Tunix
                              default)
  "token-mean"                Σ M ℓ / Σ M                                  (DAPO; TRL "bnpo")
  "dr-grpo"                   Σ M ℓ / (B · L), L = cfg.max_completion_length or T: a constant,
                              so no length bias (Dr.GRPO; TRL "dr_grpo")
  "seq-mean-token-sum"        mean over non-empty rows of Σ_t M ℓ          (REINFORCE-style sum;
                              Tunix "seq-mean-token-sum" = "sequence-mean-token-sum-norm")

Where Tunix 0.1.7 and TRL differ, and what this module does:
  - advantage ε: Tunix 1e-6, TRL 1e-4 → 1e-6 (cfg.adv_eps). Both use the sample std (ddof=1).
  - sequence means: Tunix divides by the number of NON-EMPTY rows, TRL by B → Tunix (an all-
    padding row then changes nothing).
  - Dr.GRPO: Tunix's "sequence-mean-token-scale" divides by (#non-empty rows · T), TRL by
    (B · max_completion_length) → TRL (a true constant); equal whenever no row is empty and L = T.
  - KL: default estimator Tunix k1, TRL k3 → k3 (see above); default β Tunix 0.04, TRL 0 → 0.04.
  - log-ratio clip ±20: Tunix only → kept.
Not implemented: dual-clip (Tunix `epsilon_c`), GSPO sequence ratios, entropy bonus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = [
    "ADV_SCALES",
    "ADV_STDS",
    "GRPOConfig",
    "LOG_RATIO_CLIP",
    "get_kl_estimator",
    "get_loss_agg",
    "group_advantages",
    "grpo_advantages",
    "grpo_loss",
    "kl_estimators",
    "loss_aggs",
    "register_kl_estimator",
    "register_loss_agg",
    "token_advantages",
]

LOG_RATIO_CLIP = 20.0  # Tunix's bound on log ρ before exp (e^20 ≈ 4.9e8, far from f32 overflow)
ADV_SCALES = ("group", "none")  # "none" = Dr.GRPO: centre only, no division by the group std
ADV_STDS = ("sample", "population")  # ddof 1 (Tunix, TRL) or 0

# A loss aggregation maps (per_token [B,T] zero on padding, mask [B,T] float, norm_length L) to a
# scalar. A KL estimator maps (logp [B,T], ref_logp [B,T]) to a per-token [B,T] estimate.
LossAgg = Callable[[jax.Array, jax.Array, int], jax.Array]
KLEstimator = Callable[[jax.Array, jax.Array], jax.Array]

_LOSS_AGGS: dict[str, LossAgg] = {}
_KL_ESTIMATORS: dict[str, KLEstimator] = {}


def _register(table: dict, kind: str, name: str):
    def decorator(fn):
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn
    return decorator


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise LookupError(f"unknown {kind} {name!r}; valid names: {sorted(table)}") from None


def register_loss_agg(name: str) -> Callable[[LossAgg], LossAgg]:
    """Decorator: register `fn(per_token [B,T], mask [B,T], norm_length) -> scalar` as `name`."""
    return _register(_LOSS_AGGS, "loss aggregation", name)


def register_kl_estimator(name: str) -> Callable[[KLEstimator], KLEstimator]:
    """Decorator: register `fn(logp [B,T], ref_logp [B,T]) -> [B,T]` as `name`."""
    return _register(_KL_ESTIMATORS, "KL estimator", name)


def get_loss_agg(name: str) -> LossAgg:
    """The registered aggregation; an unknown name raises LookupError listing the valid ones."""
    return _lookup(_LOSS_AGGS, "loss aggregation", name)


def get_kl_estimator(name: str) -> KLEstimator:
    """The registered KL estimator; an unknown name raises LookupError listing the valid ones."""
    return _lookup(_KL_ESTIMATORS, "KL estimator", name)


def loss_aggs() -> tuple[str, ...]:
    return tuple(sorted(_LOSS_AGGS))


def kl_estimators() -> tuple[str, ...]:
    return tuple(sorted(_KL_ESTIMATORS))


# ==============================================================================
# Loss aggregations
# ==============================================================================

def _nonempty_rows(mask: jax.Array) -> jax.Array:
    return (mask.sum(axis=-1) > 0).astype(jnp.float32)  # (B,)


@register_loss_agg("sequence-mean-token-mean")
def _seq_mean_token_mean(per_token: jax.Array, mask: jax.Array, norm_length: int) -> jax.Array:
    row_mean = per_token.sum(axis=-1) / jnp.maximum(mask.sum(axis=-1), 1.0)  # (B,)
    return row_mean.sum() / jnp.maximum(_nonempty_rows(mask).sum(), 1.0)


@register_loss_agg("token-mean")
def _token_mean(per_token: jax.Array, mask: jax.Array, norm_length: int) -> jax.Array:
    return per_token.sum() / jnp.maximum(mask.sum(), 1.0)


@register_loss_agg("dr-grpo")
def _dr_grpo(per_token: jax.Array, mask: jax.Array, norm_length: int) -> jax.Array:
    return per_token.sum() / (per_token.shape[0] * norm_length)


@register_loss_agg("seq-mean-token-sum")
def _seq_mean_token_sum(per_token: jax.Array, mask: jax.Array, norm_length: int) -> jax.Array:
    return per_token.sum() / jnp.maximum(_nonempty_rows(mask).sum(), 1.0)


# ==============================================================================
# KL estimators
# ==============================================================================

@register_kl_estimator("k1")
def _kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    return logp - ref_logp


@register_kl_estimator("k3")
def _kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    diff = ref_logp - logp  # log r, r = π_ref / πθ
    return jnp.exp(diff) - diff - 1.0


# ==============================================================================
# Config
# ==============================================================================

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True, kw_only=True)
class GRPOConfig:
    """GRPO hyper-parameters (symbols as in the GRPO / DAPO / Dr.GRPO papers).

    Attributes:
      num_generations: G, completions per prompt; groups are contiguous rows. Default 8 (TRL's
        default): the group std needs G ≥ 2 and is noisy below ~8, while cost grows linearly.
      beta: β, weight of the KL penalty to π_ref. Default 0.04 (GRPO paper and Tunix); 0 turns
        the term off exactly (π_ref log-probs may then be None).
      epsilon_low: ε_low, ratio floor 1 − ε_low for negative advantages. Default 0.2 (PPO/GRPO).
      epsilon_high: ε_high, ratio ceiling 1 + ε_high for positive advantages. Default 0.28, DAPO's
        clip-higher: it lets rare tokens with positive advantage grow, which keeps entropy from
        collapsing. Set 0.2 for vanilla symmetric GRPO.
      kl_estimator: "k3" (default; Tunix "low_var_kl") or "k1" (Tunix "kl"); see module docstring
        for why k3.
      loss_agg: Agg over tokens, one of `loss_aggs()`. Default "sequence-mean-token-mean" (GRPO
        paper's 1/|o_i|, Tunix default); "dr-grpo" removes its length bias.
      adv_eps: ε_adv in (r − mean)/(std + ε_adv). Default 1e-6 (Tunix; TRL uses 1e-4). Keeps a
        group of identical rewards at advantage 0 instead of 0/0.
      adv_std: "sample" (default; Bessel ddof=1, as Tunix and TRL) or "population" (ddof=0).
      adv_scale: "group" (default, divide by the group std) or "none" (Dr.GRPO: centre only).
      max_completion_length: L in the "dr-grpo" normaliser B·L. Default None = the padded width T
        of each batch; set it to the sampler's max new tokens so the constant (and the loss) does
        not depend on how a batch happened to be padded.
    """

    num_generations: int = 8
    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    kl_estimator: str = "k3"
    loss_agg: str = "sequence-mean-token-mean"
    adv_eps: float = 1e-6
    adv_std: str = "sample"
    adv_scale: str = "group"
    max_completion_length: int | None = None

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"GRPOConfig.{field} {why}, got {getattr(self, field)!r}")

        if not _is_int(self.num_generations) or self.num_generations < 2:
            bad("num_generations", "must be an int >= 2 (a group of 1 has no relative advantage)")
        if not _is_real(self.beta) or self.beta < 0:
            bad("beta", "must be a finite number >= 0")
        if not _is_real(self.epsilon_low) or not 0 < self.epsilon_low < 1:
            bad("epsilon_low", "must be in (0, 1) so the ratio floor 1 - epsilon_low stays > 0")
        if not _is_real(self.epsilon_high) or self.epsilon_high <= 0:
            bad("epsilon_high", "must be a finite number > 0")
        # registry lookups raise LookupError listing the valid names
        get_kl_estimator(self.kl_estimator)
        get_loss_agg(self.loss_agg)
        if not _is_real(self.adv_eps) or self.adv_eps <= 0:
            bad("adv_eps", "must be a finite number > 0 (0 gives 0/0 on a constant-reward group)")
        if self.adv_std not in ADV_STDS:
            bad("adv_std", f"must be one of {ADV_STDS}")
        if self.adv_scale not in ADV_SCALES:
            bad("adv_scale", f"must be one of {ADV_SCALES}")
        if self.max_completion_length is not None and (
                not _is_int(self.max_completion_length) or self.max_completion_length < 1):
            bad("max_completion_length", "must be None or an int >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ==============================================================================
# Advantages
# ==============================================================================

def group_advantages(
    rewards: jax.Array,
    num_generations: int,
    *,
    eps: float = 1e-6,
    scale: str = "group",
    std: str = "sample",
) -> jax.Array:
    """Group-relative advantages (r − mean_g) / (std_g + eps).

    Args:
      rewards: [B] rewards, B = n_prompts · G, each prompt's G completions contiguous.
      num_generations: G (static).
      eps: added to the group std (not inside a sqrt).
      scale: "group" divides by the group std; "none" only centres (Dr.GRPO).
      std: "sample" (ddof=1, Tunix/TRL) or "population" (ddof=0).

    Returns:
      [B] float32 advantages.
    """
    if jnp.ndim(rewards) != 1:
        raise ValueError(f"rewards must be [B], got shape {jnp.shape(rewards)}")
    if not _is_int(num_generations) or num_generations < 1:
        raise ValueError(f"num_generations must be an int >= 1, got {num_generations!r}")
    if rewards.shape[0] % num_generations:
        raise ValueError(f"rewards length {rewards.shape[0]} is not a multiple of "
                         f"num_generations={num_generations}")
    if scale not in ADV_SCALES:
        raise ValueError(f"scale must be one of {ADV_SCALES}, got {scale!r}")
    if std not in ADV_STDS:
        raise ValueError(f"std must be one of {ADV_STDS}, got {std!r}")
    if scale == "group" and std == "sample" and num_generations < 2:
        raise ValueError("the sample std needs num_generations >= 2, got 1")

    grouped = rewards.astype(jnp.float32).reshape(-1, num_generations)  # (n_prompts, G)
    centred = grouped - grouped.mean(axis=-1, keepdims=True)
    if scale == "none":
        return centred.reshape(-1)
    group_std = grouped.std(axis=-1, ddof=1 if std == "sample" else 0, keepdims=True)
    return (centred / (group_std + eps)).reshape(-1)


def grpo_advantages(rewards: jax.Array, cfg: GRPOConfig) -> jax.Array:
    """`group_advantages` with the config's G, ε_adv, scale and std. [B] -> [B]."""
    return group_advantages(rewards, cfg.num_generations, eps=cfg.adv_eps,
                            scale=cfg.adv_scale, std=cfg.adv_std)


def token_advantages(
    advantages: jax.Array,
    mask: jax.Array,
    *,
    flagged_mask: jax.Array | None = None,
    step_penalty: float | jax.Array = 0.0,
) -> jax.Array:
    """Per-token advantages, optionally with a penalty on a flagged step (method B4).

    Broadcasting: a [B] (sequence-level) advantage is copied to every token of its row, which is
    what outcome-supervised GRPO does; a [B, T] advantage is used as is. Tokens in
    `flagged_mask` (the tokens of the critique-flagged reasoning step) then get `−step_penalty`
    added, so the gradient pushes down exactly that step. Padding (mask 0) is set to 0.

    Args:
      advantages: [B] or [B, T].
      mask: [B, T] response-token mask.
      flagged_mask: [B, T] bool/{0,1} or None, 1 on the flagged step's tokens.
      step_penalty: λ ≥ 0 (Python float or traced scalar).

    Returns:
      [B, T] float32.
    """
    if jnp.ndim(mask) != 2:
        raise ValueError(f"mask must be [B, T], got shape {jnp.shape(mask)}")
    adv = _broadcast_advantages(advantages, mask.shape)
    if flagged_mask is not None:
        if jnp.shape(flagged_mask) != jnp.shape(mask):
            raise ValueError(f"flagged_mask shape {jnp.shape(flagged_mask)} != mask shape "
                             f"{jnp.shape(mask)}")
        if isinstance(step_penalty, (int, float)) and step_penalty < 0:
            raise ValueError(f"step_penalty must be >= 0, got {step_penalty!r}")
        adv = adv - step_penalty * flagged_mask.astype(jnp.float32)
    return jnp.where(mask.astype(bool), adv, 0.0)


def _broadcast_advantages(advantages: jax.Array, shape: tuple[int, int]) -> jax.Array:
    adv = advantages.astype(jnp.float32)
    if adv.ndim == 1 and adv.shape[0] == shape[0]:
        return jnp.broadcast_to(adv[:, None], shape)  # (B, T)
    if adv.shape == tuple(shape):
        return adv
    raise ValueError(f"advantages must be [B] or [B, T] with [B, T] = {list(shape)}, "
                     f"got shape {list(adv.shape)}")


# ==============================================================================
# Loss
# ==============================================================================

def grpo_loss(
    token_logps: jax.Array,
    old_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: GRPOConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped GRPO surrogate plus β·KL, aggregated by `cfg.loss_agg`.

    Args:
      token_logps: [B, T] log πθ of the sampled tokens (differentiated).
      old_logps: [B, T] log π_old from the sampling policy, or None when on-policy (μ = 1):
        then π_old = stop_gradient(πθ), ρ ≡ 1 and the gradient is Â ∇ log πθ.
      ref_logps: [B, T] log π_ref of the frozen reference, or None (allowed only if β = 0).
      advantages: [B] (broadcast along T) or [B, T] (token-level, see `token_advantages`).
      mask: [B, T] bool/{0,1}, 1 on completion tokens. Values under 0 are never read.
      cfg: GRPOConfig (static: Python branches depend only on it and on shapes).

    Returns:
      (loss, metrics). metrics keys: grpo/loss, grpo/pg_loss, grpo/clip_frac (= low + high, the
      fraction of tokens whose clipped term is active, Tunix "pg_clipfrac"), grpo/clip_frac_low
      (Â < 0, ρ < 1 − ε_low), grpo/clip_frac_high (Â > 0, ρ > 1 + ε_high), grpo/ratio_mean,
      grpo/ratio_min, grpo/ratio_max, grpo/log_ratio_abs_mean, grpo/ppo_kl (token mean of
      log π_old − log πθ, before clipping), grpo/adv_mean, grpo/adv_std, grpo/adv_abs_mean,
      grpo/adv_min, grpo/adv_max, grpo/adv_nonzero_frac, grpo/n_tokens, and when ref_logps is
      given grpo/kl (token mean of the per-token estimate) and grpo/kl_loss (its Agg, the term
      multiplied by β).
    """
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    shapes = {"token_logps": jnp.shape(token_logps), "mask": jnp.shape(mask)}
    if old_logps is not None:
        shapes["old_logps"] = jnp.shape(old_logps)
    if ref_logps is not None:
        shapes["ref_logps"] = jnp.shape(ref_logps)
    if len(shapes["mask"]) != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"expected matching [B, T] arrays, got shapes {shapes}")
    if ref_logps is None and cfg.beta != 0:
        raise ValueError(f"ref_logps is None but cfg.beta = {cfg.beta}; pass the reference "
                         "log-probs or set beta=0")
    n_rows, width = mask.shape
    norm_length = width if cfg.max_completion_length is None else cfg.max_completion_length
    if norm_length < width:
        raise ValueError(f"batch width T={width} exceeds cfg.max_completion_length="
                         f"{cfg.max_completion_length}")
    aggregate = get_loss_agg(cfg.loss_agg)

    # SANITISE PADDING: zero every input off the mask first, so -inf/NaN padding can reach
    # neither the value nor the gradient (a later `where` alone would leak NaN gradients)
    m = mask.astype(bool)
    mf = m.astype(jnp.float32)
    n_tokens = mf.sum()
    logp = jnp.where(m, token_logps.astype(jnp.float32), 0.0)  # (B, T)
    if old_logps is None:
        old = jax.lax.stop_gradient(logp)
    else:
        old = jnp.where(m, old_logps.astype(jnp.float32), 0.0)  # (B, T)
    adv = jnp.where(m, _broadcast_advantages(advantages, (n_rows, width)), 0.0)  # (B, T)

    def token_mean(x):
        return (x * mf).sum() / jnp.maximum(n_tokens, 1.0)

    # POLICY-GRADIENT TERM
    raw_log_ratio = logp - old
    log_ratio = jnp.clip(raw_log_ratio, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    ratio = jnp.exp(log_ratio)  # (B, T) ρ
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
    per_token_pg = jnp.maximum(unclipped, clipped) * mf  # (B, T), −min(ρÂ, clip(ρ)Â)
    pg_loss = aggregate(per_token_pg, mf, norm_length)
    loss = pg_loss

    clip_active = (clipped > unclipped) & m
    metrics = {
        "grpo/pg_loss": pg_loss,
        "grpo/clip_frac": token_mean(clip_active),
        "grpo/clip_frac_low": token_mean(clip_active & (adv < 0)),
        "grpo/clip_frac_high": token_mean(clip_active & (adv > 0)),
        "grpo/ratio_mean": token_mean(ratio),
        "grpo/ratio_min": jnp.min(jnp.where(m, ratio, jnp.inf)),
        "grpo/ratio_max": jnp.max(jnp.where(m, ratio, -jnp.inf)),
        "grpo/log_ratio_abs_mean": token_mean(jnp.abs(log_ratio)),
        "grpo/ppo_kl": token_mean(-raw_log_ratio),
    }

    # KL TERM
    if ref_logps is not None:
        ref = jnp.where(m, ref_logps.astype(jnp.float32), 0.0)  # (B, T)
        per_token_kl = get_kl_estimator(cfg.kl_estimator)(logp, ref) * mf  # (B, T)
        kl_loss = aggregate(per_token_kl, mf, norm_length)
        metrics["grpo/kl"] = token_mean(per_token_kl)
        metrics["grpo/kl_loss"] = kl_loss
        if cfg.beta != 0:  # static: β = 0 leaves the loss bit-identical to the PG term
            loss = loss + cfg.beta * kl_loss

    # ADVANTAGE STATISTICS over completion tokens (a [B] advantage counts once per token)
    adv_mean = token_mean(adv)
    metrics.update({
        "grpo/loss": loss,
        "grpo/adv_mean": adv_mean,
        "grpo/adv_std": jnp.sqrt(token_mean(jnp.square(adv - adv_mean))),
        "grpo/adv_abs_mean": token_mean(jnp.abs(adv)),
        "grpo/adv_min": jnp.min(jnp.where(m, adv, jnp.inf)),
        "grpo/adv_max": jnp.max(jnp.where(m, adv, -jnp.inf)),
        "grpo/adv_nonzero_frac": token_mean(jnp.abs(adv) > 1e-8),
        "grpo/n_tokens": n_tokens,
    })
    return loss, metrics
