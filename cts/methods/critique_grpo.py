"""B6: Critique-GRPO (Zhang et al. 2025, "Critique-GRPO: Advancing LLM Reasoning with Natural Language
and Numerical Feedback", arXiv:2506.03106), with the teacher as the refiner.

Per drawn prompt x the policy samples G completions y⁰_1..y⁰_G (on-policy, as B3). The programmatic
teacher critiques every failed one and revises it; up to k revisions y¹ of the group (correct ones
first, as the paper prioritises correct refinements) join the group as OFF-POLICY samples, scored
by the same reward r. The mixed group of G + k gives the advantages

    A_i = r_i − mean(r over the G + k)                    (the paper drops the std; adv_scale "none")

and the objective (the paper's, as a loss to minimise; Z = all response tokens of the mixed group):

    L = −(1/Z) [ Σ_{i ≤ G} Σ_t min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i)
                + Σ_{j ≤ k} Σ_t f(πθ(y¹_{j,t} | x, y¹_{j,<t})) A_j ]  +  β·KL̂(on-policy tokens)

    f(p) = p / (p + γ)      the policy-shaping weight (LUFFY, Yan et al. 2025): the off-policy tokens
                            have no π_old ratio and no clip; ∇f = γ/(p + γ)² · p ∇log p gives
                            low-probability (unfamiliar) tokens of a correct refinement a larger
                            weight than plain p ∇log p would.

What differs from the paper (README: "B6"): the refinement is the teacher's revision, not the
policy's own critique-conditioned sample; β·KL to the frozen base is kept (the shared `grpo` block,
as for B2–B5; the paper sets β = 0); ε, G and the budget are the shared ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from cts.losses.grpo import ADV_SCALES, LOG_RATIO_CLIP, GRPOConfig, get_kl_estimator
from cts.methods import register_method
from cts.methods.base import masked_logps
from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
from cts.train.batching import make_batch
from cts.verifiers.outcome import verify_many
from cts.distributed import map_once

__all__ = ["CritiqueGRPOConfig", "CritiqueGRPOMethod", "critique_grpo_loss", "mixed_group_advantages", "shaping"]


@dataclass(frozen=True, kw_only=True)
class CritiqueGRPOConfig(GRPOMethodConfig):
    """B6 = GRPO (B3's reward) + teacher refinements in the group.

    Attributes (besides GRPOMethodConfig's):
      shaping_gamma: γ > 0 of the policy-shaping weight f(p) = p/(p + γ). 0.1 is the paper's value.
      refinements_per_group: k ≥ 1, refinements of the group's failed rollouts added to each group.
      adv_scale: "none" (the paper: A = r − mean) or "group" (also divide by the mixed group's std + ε_adv).
    """

    shaping_gamma: float = 0.1
    refinements_per_group: int = 1
    adv_scale: str = "none"

    def __post_init__(self):
        super().__post_init__()
        g = self.shaping_gamma
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not (math.isfinite(g) and g > 0):
            raise ValueError(f"CritiqueGRPOConfig.shaping_gamma (γ) must be a finite number > 0, got {g!r}")
        k = self.refinements_per_group
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"CritiqueGRPOConfig.refinements_per_group (k) must be an int >= 1, got {k!r}")
        if self.adv_scale not in ADV_SCALES:
            raise ValueError(f"CritiqueGRPOConfig.adv_scale must be one of {ADV_SCALES}, got {self.adv_scale!r}")

    @classmethod
    def from_cell(cls, cell: dict) -> "CritiqueGRPOConfig":
        m = cell["method_config"]
        return cls(**cls.fields_from_cell(cell),
                   **{k: m[k] for k in ("shaping_gamma", "refinements_per_group", "adv_scale") if k in m})


def shaping(p: jax.Array, gamma: float) -> jax.Array:
    """f(p) = p / (p + γ), elementwise on probabilities p ∈ [0, 1] (any shape)."""
    return p / (p + gamma)


def mixed_group_advantages(rewards_on: jax.Array, rewards_off: jax.Array, present: jax.Array, G: int, k: int,
                           *, scale: str = "none", eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Advantages over groups of G on-policy samples and up to k off-policy ones.

    Args:
      rewards_on: [n·G] rewards, each prompt's G rollouts contiguous.
      rewards_off: [n·k] rewards of the refinements, each prompt's k contiguous.
      present: [n·k] 1 where a refinement exists (a group without a failed rollout has none), else 0.
      scale: "none" (r − mean) or "group" ((r − mean)/(std + eps), sample std over the present members).

    Returns:
      ([n·G], [n·k]) float32 (float64 for float64 rewards) advantages; absent refinements get 0.
    """
    dt = jnp.result_type(rewards_on.dtype, jnp.float32)  # float32, or float64 under x64 inputs
    on = rewards_on.astype(dt).reshape(-1, G)  # (n, G)
    off = rewards_off.astype(dt).reshape(-1, k)  # (n, k)
    w = present.astype(dt).reshape(-1, k)  # (n, k)
    count = G + w.sum(-1, keepdims=True)  # (n, 1)
    mean = (on.sum(-1, keepdims=True) + (w * off).sum(-1, keepdims=True)) / count  # (n, 1)
    a_on, a_off = on - mean, (off - mean) * w  # (n, G), (n, k)
    if scale == "group":
        var = ((a_on ** 2).sum(-1, keepdims=True) + (a_off ** 2).sum(-1, keepdims=True)) / (count - 1)
        std = jnp.sqrt(var)  # (n, 1)
        a_on, a_off = a_on / (std + eps), a_off / (std + eps)
    return a_on.reshape(-1), a_off.reshape(-1)


def critique_grpo_loss(logp_on: jax.Array, old_on: jax.Array | None, ref_on: jax.Array | None, adv_on: jax.Array,
                       mask_on: jax.Array, logp_off: jax.Array, adv_off: jax.Array, mask_off: jax.Array,
                       cfg: GRPOConfig, gamma: float) -> tuple[jax.Array, dict]:
    """The Critique-GRPO loss (module docstring), token-mean over the mixed group.

    Args:
      logp_on: [B, T] log πθ of the on-policy rollout tokens (differentiated).
      old_on: [B, T] log π_old of the sampling policy, or None (on-policy, μ = 1: ρ ≡ 1).
      ref_on: [B, T] log π_ref, or None (allowed only when cfg.beta = 0).
      adv_on: [B] advantages of the rollouts.
      mask_on: [B, T] 1 on rollout response tokens.
      logp_off: [B', T'] log πθ of the refinement tokens (differentiated).
      adv_off: [B'] advantages of the refinements.
      mask_off: [B', T'] 1 on refinement response tokens (all 0 on an absent refinement).
      cfg: the shared GRPOConfig (ε_low, ε_high, β, KL estimator); gamma: γ of f.

    Returns:
      (loss, metrics): critique_grpo/{pg_loss, on_loss, off_loss, off_weight_mean, off_tokens},
      grpo/{clip_frac, ratio_mean, ratio_max, ratio_min, kl, kl_loss} (kl only with ref_on).
    """
    if ref_on is None and cfg.beta != 0:
        raise ValueError(f"ref_on is None but cfg.beta = {cfg.beta}; pass the reference log-probs or set beta=0")
    dt = jnp.result_type(logp_on.dtype, jnp.float32)  # float32 (float64 inputs stay float64: the FD test)
    m_on, m_off = mask_on.astype(bool), mask_off.astype(bool)
    mf_on, mf_off = m_on.astype(dt), m_off.astype(dt)
    logp = jnp.where(m_on, logp_on.astype(dt), 0.0)  # (B, T); padding can reach neither value nor grad
    old = jax.lax.stop_gradient(logp) if old_on is None else jnp.where(m_on, old_on.astype(dt), 0.0)
    a_on = adv_on.astype(dt)[:, None]  # (B, 1)
    a_off = adv_off.astype(dt)[:, None]  # (B', 1)

    # ON-POLICY: the clipped surrogate, as GRPO
    ratio = jnp.exp(jnp.clip(logp - old, -LOG_RATIO_CLIP, LOG_RATIO_CLIP))  # (B, T)
    unclipped = -a_on * ratio
    clipped = -a_on * jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
    per_on = jnp.maximum(unclipped, clipped) * mf_on  # (B, T)

    # OFF-POLICY: the teacher's refinements, policy-shaped, no ratio, no clip
    p_off = jnp.exp(jnp.where(m_off, logp_off.astype(dt), 0.0))  # (B', T') πθ of each token
    weight = shaping(p_off, gamma)  # (B', T')
    per_off = -a_off * weight * mf_off  # (B', T')

    n_on, n_off = mf_on.sum(), mf_off.sum()
    z = jnp.maximum(n_on + n_off, 1.0)  # Z: every response token of the mixed group
    pg_loss = (per_on.sum() + per_off.sum()) / z
    loss = pg_loss

    def on_mean(x):
        return (x * mf_on).sum() / jnp.maximum(n_on, 1.0)

    metrics = {
        "critique_grpo/pg_loss": pg_loss,
        "critique_grpo/on_loss": per_on.sum() / z,
        "critique_grpo/off_loss": per_off.sum() / z,
        "critique_grpo/off_weight_mean": (weight * mf_off).sum() / jnp.maximum(n_off, 1.0),
        "critique_grpo/off_tokens": n_off,
        "grpo/clip_frac": on_mean((clipped > unclipped) & m_on),
        "grpo/ratio_mean": on_mean(ratio),
        "grpo/ratio_max": jnp.max(jnp.where(m_on, ratio, -jnp.inf)),
        "grpo/ratio_min": jnp.min(jnp.where(m_on, ratio, jnp.inf)),
    }
    if ref_on is not None:  # β·KL on the on-policy tokens (the refinements are not πθ's samples)
        ref = jnp.where(m_on, ref_on.astype(dt), 0.0)  # (B, T)
        kl = on_mean(get_kl_estimator(cfg.kl_estimator)(logp, ref))
        metrics.update({"grpo/kl": kl, "grpo/kl_loss": kl})
        if cfg.beta != 0:  # static: β = 0 leaves the loss bit-identical to the policy-gradient part
            loss = loss + cfg.beta * kl
    metrics["critique_grpo/loss"] = loss
    return loss, metrics


@register_method("critique_grpo")
class CritiqueGRPOMethod(GRPOMethod):
    Config = CritiqueGRPOConfig

    def setup(self, data, loop, params, optimizer, log=print):
        params, optimizer = super().setup(data, loop, params, optimizer, log)
        self.refine_pad = 0  # the refinements' high-water padded length (build_batch)
        return params, optimizer

    def build_batch(self, params, rng, key):
        r = self.rollouts(params, rng, key)
        batch, host = self.grpo_batch(params, r)
        G, k = self.loop.group_size, self.config.refinements_per_group
        quads = r.critiques()
        failed = [i for i, v in enumerate(r.verdicts) if not v.correct]
        verdicts = dict(zip(failed, map_once(verify_many, [(r.problems[i], quads[i].revision) for i in failed])))
        prompts, revisions, rewards, present, chosen_correct = [], [], [], [], []
        for g in range(len(r.problems) // G):
            group = [i for i in failed if g * G <= i < (g + 1) * G]
            group.sort(key=lambda i: (not verdicts[i].correct, i))  # correct refinements first
            for j in range(k):
                i = group[j] if j < len(group) else None
                prompts.append(r.problems[g * G].prompt)
                revisions.append(quads[i].revision if i is not None else "")
                rewards.append(self.rewards([verdicts[i]])[0] if i is not None else 0.0)
                present.append(float(i is not None))
                if i is not None:
                    chosen_correct.append(verdicts[i].correct)
        # the refinements' lengths are known only per step: pad to the longest bucket seen so far (shapes only
        # grow: a few compiles a run); max_len = 768 made the B6 update 2.3× this (bench/bench_hot_paths.py)
        b = make_batch(self.runtime.tok, prompts, revisions, self.runtime.model_cfg.max_len,
                       min_pad=self.refine_pad)
        self.refine_pad = b.tokens.shape[1]
        refine = b.as_dict()
        present_arr = np.asarray(present, np.float32)
        refine["loss_mask"] = refine["loss_mask"] * present_arr[:, None].astype(refine["loss_mask"].dtype)
        batch["refine"] = {**refine, "rewards": np.asarray(rewards, np.float32), "present": present_arr}
        host.update({"critique_grpo/refine_frac": float(present_arr.mean()),  # share of the k·n slots filled
                     "critique_grpo/refine_accuracy": float(np.mean(chosen_correct)) if chosen_correct else 0.0})
        return batch, host

    def loss(self, params, ref_params, batch):
        """batch["grpo"] ([B, T] rollouts, rewards [B]) and batch["refine"] ([B', T'] refinements, rewards
        and present [B']) -> (the Critique-GRPO loss, metrics)."""
        on, off, cfg = batch["grpo"], batch["refine"], self.config
        logp_on, _ = masked_logps(self.runtime, params["policy"], on)  # (B, T)
        ref_on = None
        if cfg.grpo.beta != 0:
            ref_on = jax.lax.stop_gradient(masked_logps(self.runtime, ref_params, on)[0])  # (B, T)
        logp_off, _ = masked_logps(self.runtime, params["policy"], off)  # (B', T')
        adv_on, adv_off = mixed_group_advantages(on["rewards"], off["rewards"], off["present"],
                                                 cfg.grpo.num_generations, cfg.refinements_per_group,
                                                 scale=cfg.adv_scale, eps=cfg.grpo.adv_eps)
        return critique_grpo_loss(logp_on, on.get("old_logps"), ref_on, adv_on, on["loss_mask"], logp_off, adv_off,
                                  off["loss_mask"], cfg.grpo, cfg.shaping_gamma)
