"""The CTS objective terms: latent trajectory, localisation, energy critic, latent edit, losses.

    L = L_GRPO + λ₁·L_align(R_θ, sg(R*)) + λ₂·L_decode(y¹ | x, y⁰, f) + λ₃·L_E

  R_θ = P_φ(h_{1:T})                       projected final hidden states of the attempt y⁰
  U_ψ(R, f) = Σ_t α_t E_ψ(r_t, e_f)         energy of a trajectory under the critique f
  R* = R_θ − η ∇_R U_ψ(R_θ, f)  (K steps)   the latent edit, used as a stop-gradient target
  L_E = softplus(m + E_ψ(r_rev, e_f) − E_ψ(r_att, e_f))   the critic's contrastive loss

Rows whose `flag` is all zero (the attempt was already correct, or the critique could not localise
the error) have α = 0 and contribute no location-needing CTS loss: they are dropped from the batch
means of L_align and L_E (not counted as zeros); the loop counts them (`cts/unlocalised_frac`).

`cts_total` is THE λ combiner: the loop combines its term values and its per-term gradients with it
(cts.train.cts_step), so "λ = 0 is bit-identical to the baseline" is a property of the code that runs.

Gradient routing: L_align trains θ (through `hidden`) and φ (P_φ); R* is a stop-gradient target,
and ψ is stop-gradiented inside the edit as well, so ψ learns only from L_E. L_E sees
stop-gradient latents, so it trains only ψ (E_ψ, W, and the learned critique table if any).
L_decode is computed by the training loop as NLL(y¹ | `format_decode_context(x, y⁰, f)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

# the decode context is the answer format's; re-exported here, where L_decode is defined
from cts.answer_format import DECODE_TEMPLATE, decode_template_hash, format_decode_context
from cts.losses.alignment import AlignmentConfig, alignment_loss

__all__ = [
    "CTSConfig",
    "CTSHeads",
    "DECODE_TEMPLATE",
    "TERM_NAMES",
    "correct_step_mask",
    "cts_loss",
    "cts_total",
    "critique_embedding",
    "decode_template_hash",
    "edit_alignment",
    "edit_direction",
    "energy_loss",
    "term_weights",
    "flagged_feature",
    "flagged_latent",
    "format_decode_context",
    "gradient_edit",
    "latent_edit",
    "localisation_weights",
    "pool_tokens",
    "step_features",
    "trajectory",
    "trajectory_energy",
]

TRAJECTORY_LEVELS = ("token", "step")
CRITIQUE_EMBEDDINGS = ("pooled", "learned")
STEP_POOLS = ("mean", "last", "mean_last")
ENERGY_FORMS = ("mlp", "well")


@dataclass(frozen=True, kw_only=True)
class CTSConfig:
    """Settings of the CTS auxiliary terms (frozen, hashable: a static jit argument).

    Attributes:
      latent_dim: d, output size of P_φ; None = no projection (R = h, d = D).
      trajectory: "token" (N = T positions) or "step" (tokens mean-pooled per reasoning step,
        N = max_steps positions).
      max_steps: static number of step slots at step level; tokens with step id >= max_steps are
        ignored (the loop must size it to its data: max step id + 1).
      eta: η, step size of the latent edit.
      edit_steps: K, number of gradient steps of the edit.
      alpha_width: width (in positions: tokens or steps) of the Gaussian tail of α around the
        flagged span; 0 = indicator of the span. α sums to 1 over valid positions.
      energy_hidden: hidden width of the E_ψ MLP.
      critique_embedding: "pooled" (e_f = the loop's pooled critique hidden states, [B, D_c]) or
        "learned" (e_f = a learned table row per critique id, [B]).
      num_critique_ids: size of the learned table (critique_embedding == "learned").
      lam_align: λ₁ (A1: 0).
      lam_decode: λ₂ (A4: 0).
      lam_energy: λ₃ (ψ has its own Adam in the loop, so λ₃ scales a gradient Adam normalises:
        it switches L_E on or off and weights it in the logged total, not the critic's step size).
      energy_margin: m, the softplus margin of L_E.
      energy_freeze: A5, the critic stops learning during B5 (it is frozen after the loop's
        warm-up, cts.train.cts_step): L_E is not added (its value is still reported) and the loop
        keeps ψ out of the optimizer (weight decay!).
      alignment: AlignmentConfig of L_align (A2: kind "l2", A3: kind "soft_dtw").
      online_critique: A6, the loop regenerates critiques online (this module ignores it).
      step_pool: how a step's tokens become one point (and the flagged step one latent): "mean"
        of their hidden states, the "last" token's (it has attended to the whole step), or
        "mean_last", both concatenated (P_φ then maps 2D → d). The critic, the edit and L_align
        all see this one feature.
      energy_correct_steps: L_E also ranks the flagged step above the trajectory's correct steps
        (the attempt's steps before the flag and the revision's other steps), not only above the
        revision's corrected step: more pairs for E_ψ to learn what a wrong step looks like.
      energy_direction: weight of L_E's direction term 1 − cos(−∇_r E_ψ(r_att, e_f), r_rev − r_att):
        the ranking term trains E_ψ to DETECT the flagged step, this one trains the descent
        direction at it — the latent edit's direction there — to point at the revision's step.
        0 = the pure ranking loss.
      energy_form: "mlp", E_ψ(r, e_f) = tanh-MLP([r; W e_f]) → scalar; or "well", a quadratic well
        E_ψ(r, e_f) = ½‖r − g_ψ(e_f)‖² around a learned point g_ψ(e_f) = V tanh(U W e_f + b) + c:
        its descent direction at any step is g_ψ(e_f) − r, a move toward what the critique asks for.
    """

    latent_dim: int | None = 64
    trajectory: str = "token"
    max_steps: int = 32
    eta: float = 0.1
    edit_steps: int = 1
    alpha_width: float = 1.0
    energy_hidden: int = 128
    critique_embedding: str = "pooled"
    num_critique_ids: int = 0
    lam_align: float = 0.1
    lam_decode: float = 1.0
    lam_energy: float = 0.1
    energy_margin: float = 1.0
    energy_freeze: bool = False
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    online_critique: bool = False
    step_pool: str = "mean"
    energy_correct_steps: bool = False
    energy_direction: float = 0.0
    energy_form: str = "mlp"

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"CTSConfig.{name} must be {want}, got {getattr(self, name)!r}")

        if self.latent_dim is not None and not (isinstance(self.latent_dim, int) and self.latent_dim > 0):
            bad("latent_dim", "None or an int > 0")
        if self.trajectory not in TRAJECTORY_LEVELS:
            bad("trajectory", f"one of {TRAJECTORY_LEVELS}")
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            bad("max_steps", "an int > 0")
        if not self.eta >= 0:
            bad("eta", ">= 0")
        if not (isinstance(self.edit_steps, int) and self.edit_steps >= 0):
            bad("edit_steps", "an int >= 0")
        if not self.alpha_width >= 0:
            bad("alpha_width", ">= 0")
        if not (isinstance(self.energy_hidden, int) and self.energy_hidden > 0):
            bad("energy_hidden", "an int > 0")
        if self.critique_embedding not in CRITIQUE_EMBEDDINGS:
            bad("critique_embedding", f"one of {CRITIQUE_EMBEDDINGS}")
        if self.critique_embedding == "learned" and not (
                isinstance(self.num_critique_ids, int) and self.num_critique_ids > 0):
            bad("num_critique_ids", "an int > 0 when critique_embedding='learned'")
        for name in ("lam_align", "lam_decode", "lam_energy", "energy_margin", "energy_direction"):
            if not getattr(self, name) >= 0:
                bad(name, ">= 0")
        if self.energy_form not in ENERGY_FORMS:
            bad("energy_form", f"one of {ENERGY_FORMS}")
        if self.step_pool not in STEP_POOLS:
            bad("step_pool", f"one of {STEP_POOLS}")
        for name in ("energy_freeze", "online_critique", "energy_correct_steps"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "a bool")
        if not isinstance(self.alignment, AlignmentConfig):
            bad("alignment", "an AlignmentConfig")

    def replace(self, **changes) -> "CTSConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------

class CTSHeads(nnx.Module):
    """P_φ (optional D→d linear), E_ψ (MLP on [r_t, W e_f] → scalar, or a quadratic well around a
    learned function of W e_f: cfg.energy_form), optional critique table.

    Args:
      hidden_dim: D, the policy's hidden size (P_φ's input is 2D with step_pool "mean_last").
      critique_dim: D_c, size of e_f (pooled critique states, or the learned table's width).
      cfg: CTSConfig.
      rngs: nnx.Rngs.
    """

    def __init__(self, hidden_dim: int, critique_dim: int, cfg: CTSConfig, *, rngs: nnx.Rngs):
        feature_dim = hidden_dim * (2 if cfg.step_pool == "mean_last" else 1)
        d = feature_dim if cfg.latent_dim is None else cfg.latent_dim
        self.latent_dim = d
        self.project = None if cfg.latent_dim is None else nnx.Linear(feature_dim, d, rngs=rngs)  # P_φ
        self.critique_proj = nnx.Linear(critique_dim, d, use_bias=False, rngs=rngs)  # W (part of ψ)
        self.well = cfg.energy_form == "well"
        # E_ψ's two layers: on [r; W e_f] -> a scalar (mlp), or on W e_f -> the well's centre g_ψ [d] (well)
        self.energy_in = nnx.Linear(d if self.well else 2 * d, cfg.energy_hidden, rngs=rngs)
        self.energy_out = nnx.Linear(cfg.energy_hidden, d if self.well else 1, rngs=rngs)
        self.critique_table = (
            nnx.Embed(cfg.num_critique_ids, critique_dim, rngs=rngs)
            if cfg.critique_embedding == "learned" else None)

    def latents(self, hidden: jax.Array) -> jax.Array:
        """[..., D'] pooled features (`pool_tokens`) -> [..., d]."""
        return hidden if self.project is None else self.project(hidden)

    def energy(self, r: jax.Array, e_f: jax.Array) -> jax.Array:
        """E_ψ(r, e_f): r [..., d], e_f [..., D_c] (broadcast against r) -> [...].

        Smooth (tanh) so that ∇_r E, which drives the edit, is not piecewise constant.
        """
        c = self.critique_proj(e_f)  # (..., d)
        if self.well:  # ½‖r − g_ψ(e_f)‖², g_ψ(e_f) = V tanh(U c + b) + v₀
            centre = self.energy_out(jnp.tanh(self.energy_in(c)))  # (..., d)
            return 0.5 * jnp.sum((r - centre) ** 2, axis=-1)
        c = jnp.broadcast_to(c, r.shape)
        h = jnp.tanh(self.energy_in(jnp.concatenate([r, c], axis=-1)))  # (..., H)
        return self.energy_out(h)[..., 0]


def critique_embedding(heads: CTSHeads, critique: jax.Array, cfg: CTSConfig) -> jax.Array:
    """e_f [B, D_c]: the pooled critique states as given (stop-gradient), or the table rows of
    the ids [B] (trained through L_E only)."""
    if cfg.critique_embedding == "pooled":
        if critique.ndim != 2:
            raise ValueError(f"critique_emb must be [B, D_c] for critique_embedding='pooled', got {critique.shape}")
        return jax.lax.stop_gradient(critique)
    if critique.ndim != 1 or not jnp.issubdtype(critique.dtype, jnp.integer):
        raise ValueError(f"critique_ids must be an int [B] array for critique_embedding='learned', "
                         f"got {critique.dtype}{critique.shape}")
    return heads.critique_table(critique)


# ----------------------------------------------------------------------------------------------
# Trajectory and localisation
# ----------------------------------------------------------------------------------------------

def _check_tokens(hidden, mask, step_ids, flag=None):
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {hidden.shape}")
    B, T, _ = hidden.shape
    for name, arr in (("mask", mask), ("step_ids", step_ids), ("flag", flag)):
        if arr is not None and arr.shape != (B, T):
            raise ValueError(f"{name} must have shape {(B, T)} like hidden, got {arr.shape}")


def _step_onehot(mask, step_ids, num_steps):
    """[B, T] mask, [B, T] step ids -> [B, S, T] float membership of token t in step s."""
    slots = jnp.arange(num_steps)[None, :, None]  # (1, S, 1)
    member = (step_ids[:, None, :] == slots) & (mask[:, None, :] > 0)  # (B, S, T)
    return member.astype(jnp.float32)


def _times(valid: jax.Array, dtype) -> jax.Array:
    """[B, N] bool -> [B, N] position / last valid position, in [0, 1]; 0 where invalid."""
    pos = jnp.arange(valid.shape[1], dtype=dtype)[None, :]
    last = jnp.max(jnp.where(valid, pos, 0.0), axis=1, keepdims=True)
    return jnp.where(valid, pos / jnp.maximum(last, 1.0), 0.0)


def pool_tokens(hidden: jax.Array, member: jax.Array, pool: str) -> jax.Array:
    """One feature per group of tokens: hidden [B, T, D], member [B, K, T] (0/1) -> [B, K, D'].

    "mean": the mean of the group's hidden states; "last": the hidden state of its last token;
    "mean_last": both, concatenated (D' = 2D). An empty group gets 0. Linear in `hidden`.
    """
    member = member.astype(hidden.dtype)
    parts = []
    if pool in ("mean", "mean_last"):
        count = jnp.sum(member, axis=-1)  # (B, K)
        parts.append(jnp.einsum("bkt,btd->bkd", member, hidden) / jnp.maximum(count, 1.0)[..., None])
    if pool in ("last", "mean_last"):
        t = jnp.arange(member.shape[-1])[None, None, :]  # (1, 1, T)
        last_t = jnp.max(jnp.where(member > 0, t, -1), axis=-1, keepdims=True)  # (B, K, 1), -1 if empty
        parts.append(jnp.einsum("bkt,btd->bkd", (t == last_t).astype(hidden.dtype), hidden))
    if not parts:
        raise ValueError(f"pool must be one of {STEP_POOLS}, got {pool!r}")
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def step_features(hidden: jax.Array, mask: jax.Array, step_ids: jax.Array, cfg: CTSConfig
                  ) -> tuple[jax.Array, jax.Array]:
    """The trajectory's points before P_φ: (F [B, N, D'], valid [B, N] bool).

    Token level: N = T, each token its own point (for "mean_last" [h; h]: a one-token step's mean
    and last token are both h). Step level: N = cfg.max_steps, each step pooled by cfg.step_pool.
    """
    _check_tokens(hidden, mask, step_ids)
    if cfg.trajectory == "token":
        F = jnp.concatenate([hidden, hidden], axis=-1) if cfg.step_pool == "mean_last" else hidden
        return F, mask > 0
    member = _step_onehot(mask, step_ids, cfg.max_steps)  # (B, S, T)
    return pool_tokens(hidden, member, cfg.step_pool), jnp.sum(member, axis=-1) > 0


def trajectory(heads: CTSHeads, hidden: jax.Array, mask: jax.Array, step_ids: jax.Array,
               cfg: CTSConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """R_θ = P_φ(h) on the trajectory grid.

    Args:
      hidden: [B, T, D] final hidden states of the response (right-padded).
      mask: [B, T] 1 on real tokens.
      step_ids: [B, T] int, 0-based step index per token, −1 outside any step (step level only).

    Returns:
      R [B, N, d]; weights [B, N] uniform over valid positions (sum 1; all 0 for an empty row);
      times [B, N] in [0, 1]. Token level: N = T. Step level: N = cfg.max_steps, each step pooled
      by cfg.step_pool (`step_features`; pooling before the linear P_φ is the same as after),
      absent steps get weight 0. Time of a step = step index / last present step index.
    """
    F, valid = step_features(hidden, mask, step_ids, cfg)  # (B, N, D'), (B, N)
    R = heads.latents(F)  # (B, N, d)
    w = valid.astype(R.dtype)
    weights = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)
    return R, weights, _times(valid, R.dtype)


def localisation_weights(flag: jax.Array, mask: jax.Array, step_ids: jax.Array, cfg: CTSConfig) -> jax.Array:
    """α [B, N]: where the critique points, on the trajectory grid.

    A position is flagged if it is a flagged token (token level) or a step containing a flagged
    token (step level). α_t ∝ exp(−dist_t² / (2 w²)) with dist_t the distance (in positions) to the
    nearest flagged position (0 inside the span, so the span is a plateau) and w = alpha_width
    (w = 0: indicator of the span), restricted to valid positions and normalized to sum 1.
    Rows with no flagged token get α = 0 (no edit, no CTS loss).
    """
    if flag.shape != mask.shape or step_ids.shape != mask.shape:
        raise ValueError(f"flag {flag.shape}, mask {mask.shape}, step_ids {step_ids.shape} must share [B, T]")
    if cfg.trajectory == "token":
        valid = mask > 0
        flagged = (flag > 0) & valid  # (B, T)
    else:
        member = _step_onehot(mask, step_ids, cfg.max_steps)  # (B, S, T)
        valid = jnp.sum(member, axis=-1) > 0  # (B, S)
        flagged = jnp.einsum("bst,bt->bs", member, (flag > 0).astype(jnp.float32)) > 0
    n = valid.shape[1]
    pos = jnp.arange(n, dtype=jnp.float32)
    gap = jnp.abs(pos[:, None] - pos[None, :])  # (N, N)
    dist = jnp.min(jnp.where(flagged[:, None, :], gap[None], jnp.inf), axis=-1)  # (B, N), inf if no flag
    if cfg.alpha_width > 0:
        raw = jnp.exp(-0.5 * (dist / cfg.alpha_width) ** 2)
    else:
        raw = (dist == 0).astype(jnp.float32)
    raw = jnp.where(valid & jnp.isfinite(dist), raw, 0.0)
    return raw / jnp.maximum(jnp.sum(raw, axis=1, keepdims=True), 1e-30)


# ----------------------------------------------------------------------------------------------
# Energy and latent edit
# ----------------------------------------------------------------------------------------------

def trajectory_energy(heads: CTSHeads, R: jax.Array, alpha: jax.Array, e_f: jax.Array) -> jax.Array:
    """U_ψ(R, f) = Σ_t α_t E_ψ(r_t, e_f): R [B, N, d], alpha [B, N], e_f [B, D_c] -> [B]."""
    energies = heads.energy(R, e_f[:, None, :])  # (B, N)
    return jnp.sum(alpha * energies, axis=1)


def gradient_edit(energy_fn, R: jax.Array, cfg: CTSConfig) -> jax.Array:
    """K steps R ← R − η ∇_R energy_fn(R) from sg(R); energy_fn: [B, N, d] -> [] (rows independent).

    The output is a stop-gradient target. `latent_edit` is this with U_ψ; tests pass a hand-built
    energy whose gradient is known.
    """
    def step(r, _):
        return r - cfg.eta * jax.grad(energy_fn)(r), None

    R_star, _ = jax.lax.scan(step, jax.lax.stop_gradient(R), None, length=cfg.edit_steps)
    return jax.lax.stop_gradient(R_star)


def latent_edit(heads: CTSHeads, R: jax.Array, alpha: jax.Array, e_f: jax.Array, cfg: CTSConfig) -> jax.Array:
    """R* after K steps R ← R − η ∇_R U_ψ(R, f); R, R* [B, N, d], alpha [B, N], e_f [B, D_c].

    The output is a stop-gradient target: no gradient reaches θ, φ (through R) or ψ (the critic's
    parameters are stop-gradiented too, so ψ learns only from L_E, never from moving the target).
    Positions with α_t = 0 (padding, rows without a flag) are not moved.
    """
    graphdef, state = nnx.split(heads)
    critic = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    e_f = jax.lax.stop_gradient(e_f)
    return gradient_edit(lambda r: jnp.sum(trajectory_energy(critic, r, alpha, e_f)), R, cfg)


def edit_direction(R: jax.Array, R_star: jax.Array, at_flag: jax.Array, r_att: jax.Array, r_rev: jax.Array,
                   row_mask: jax.Array) -> dict[str, jax.Array]:
    """Does the latent edit move the attempt toward the revision? Per row, at the flagged positions:

        edit_b   = Σ_t at_flag_bt (R*_bt − R_bt)        the edit there                      [B, d]
        target_b = r_rev_b − r_att_b                     attempt → revision at that step      [B, d]
        cos_b    = ⟨edit_b, target_b⟩ / (‖edit_b‖ ‖target_b‖)
        rel_b    = ‖edit_b‖ / ‖Σ_t at_flag_bt R_bt‖      the edit's size relative to ‖r‖

    Args:
      R, R_star: [B, N, d] the trajectory and its edit.
      at_flag: [B, N] weights of the flagged positions (sum 1 on rows with a flag; α at width 0).
      r_att, r_rev: [B, d] latents of the attempt's flagged step and the revision's corrected step.
      row_mask: [B] rows that count (a flag on both sides).

    Returns:
      per-row `cos` [B] and `rel` [B] (0 on rows that do not count) and `rows` [B] bool: a row
      counts when row_mask holds and both vectors are nonzero (a zero edit has no direction).
    """
    edit = jnp.einsum("bn,bnd->bd", at_flag, R_star - jax.lax.stop_gradient(R))  # (B, d)
    target = jax.lax.stop_gradient(r_rev - r_att)  # (B, d)
    here = jax.lax.stop_gradient(jnp.einsum("bn,bnd->bd", at_flag, R))  # (B, d)
    ne, nt, nh = (jnp.linalg.norm(v, axis=-1) for v in (edit, target, here))  # (B,) ×3
    rows = (jnp.asarray(row_mask) > 0) & (ne > 0) & (nt > 0)
    cos = jnp.where(rows, jnp.sum(edit * target, -1) / jnp.where(rows, ne * nt, 1.0), 0.0)
    rel = jnp.where(rows, ne / jnp.maximum(nh, 1e-12), 0.0)
    return {"cos": cos, "rel": rel, "rows": rows}


def flagged_feature(hidden: jax.Array, mask: jax.Array, flag: jax.Array, pool: str = "mean"
                    ) -> tuple[jax.Array, jax.Array]:
    """The flagged tokens pooled like a step (`pool_tokens`), before P_φ: hidden [B, T, D],
    mask/flag [B, T] -> (f [B, D'], has_flag [B] bool). Rows without flagged tokens get 0, False."""
    sel = ((flag > 0) & (mask > 0))[:, None, :]  # (B, 1, T)
    return pool_tokens(hidden, sel, pool)[:, 0], jnp.sum(sel, axis=(1, 2)) > 0


def flagged_latent(heads: CTSHeads, hidden: jax.Array, mask: jax.Array, flag: jax.Array, pool: str = "mean"
                   ) -> tuple[jax.Array, jax.Array]:
    """Projected latent of the flagged tokens: hidden [B, T, D], mask/flag [B, T] ->
    (r [B, d], has_flag [B] bool). Rows without flagged tokens get r = P_φ(0), has_flag = False."""
    f, has = flagged_feature(hidden, mask, flag, pool)
    return heads.latents(f), has


def correct_step_mask(valid: jax.Array, at_flag: jax.Array, valid_rev: jax.Array, at_flag_rev: jax.Array
                      ) -> jax.Array:
    """Which trajectory points are known-correct steps: [B, N] ×4 -> [B, 2N] (attempt ⊕ revision).

    The attempt's steps before its first flagged step (the flag is the FIRST error), and the
    revision's steps other than its corrected step (that one is L_E's main positive already).
    Rows without a flag get none.
    """
    pos = jnp.arange(valid.shape[1])[None, :]
    flagged = at_flag > 0
    first = jnp.min(jnp.where(flagged, pos, valid.shape[1]), axis=1, keepdims=True)  # (B, 1)
    has = jnp.any(flagged, axis=1, keepdims=True)
    att = valid & (pos < first) & has
    rev = valid_rev & ~(at_flag_rev > 0) & has
    return jnp.concatenate([att, rev], axis=1)


def energy_loss(heads: CTSHeads, R_attempt_flagged: jax.Array, R_revision_flagged: jax.Array,
                e_f: jax.Array, cfg: CTSConfig, *, row_mask: jax.Array | None = None,
                latent_grad: bool = False, R_correct: jax.Array | None = None,
                correct_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_E = mean_b softplus(m + E_ψ(r_rev, e_f) − E_ψ(r_att, e_f)) over counted rows.

    With correct steps (R_correct [B, G, d], correct_mask [B, G]) each row adds the mean over its
    correct steps g of softplus(m + E_ψ(r_g, e_f) − E_ψ(r_att, e_f)): the flagged step ranks above
    every known-correct step of its trajectory too (`CTSConfig.energy_correct_steps`).

    With cfg.energy_direction = λ_dir > 0 each row adds λ_dir · (1 − cos(−∇_r E_ψ(r_att, e_f), r_rev − r_att))
    (`edit_alignment`): the edit's direction at the flagged step, trained to point at the revision's.

    Pushes E low on the revision's corrected step and high on the attempt's flagged step, with
    margin m = energy_margin. The latents are stop-gradiented: only ψ is trained by L_E (in B5);
    `latent_grad=True` lets the gradient through to the latents (the critic warm-up's P_φ fit).

    Args:
      R_attempt_flagged: [B, d] latent of the attempt's flagged step (`flagged_latent`).
      R_revision_flagged: [B, d] latent of the revision's corresponding step.
      e_f: [B, D_c] critique embedding.
      row_mask: optional [B] bool/float, rows to count (rows without a flag: 0).

    Returns:
      (loss [], metrics: energy/attempt, energy/revision, energy/gap (att − rev), energy/acc).
    """
    if R_attempt_flagged.ndim != 2 or R_attempt_flagged.shape != R_revision_flagged.shape:
        raise ValueError(f"R_attempt_flagged {R_attempt_flagged.shape} and R_revision_flagged "
                         f"{R_revision_flagged.shape} must both be [B, d]")
    B = R_attempt_flagged.shape[0]
    w = jnp.ones((B,), jnp.float32) if row_mask is None else jnp.asarray(row_mask, jnp.float32)
    sg = (lambda x: x) if latent_grad else jax.lax.stop_gradient
    e_att = heads.energy(sg(R_attempt_flagged), e_f)  # (B,)
    e_rev = heads.energy(sg(R_revision_flagged), e_f)  # (B,)
    per_row = jax.nn.softplus(cfg.energy_margin + e_rev - e_att)  # (B,)
    if R_correct is not None:
        gm = jnp.asarray(correct_mask, jnp.float32)  # (B, G)
        e_ok = heads.energy(sg(R_correct), e_f[:, None, :])  # (B, G)
        ranked = jax.nn.softplus(cfg.energy_margin + e_ok - e_att[:, None])  # (B, G)
        per_row = per_row + jnp.sum(gm * ranked, axis=1) / jnp.maximum(jnp.sum(gm, axis=1), 1.0)
    direction = {}
    if cfg.energy_direction > 0:
        cos = edit_alignment(heads, sg(R_attempt_flagged), sg(R_revision_flagged), e_f)  # (B,)
        per_row = per_row + cfg.energy_direction * (1.0 - cos)
        direction = {"_cos": cos}
    denom = jnp.maximum(jnp.sum(w), 1.0)

    def wmean(v):
        return jnp.sum(w * v) / denom

    loss = wmean(per_row)
    metrics = {
        "energy/attempt": wmean(e_att),
        "energy/revision": wmean(e_rev),
        "energy/gap": wmean(e_att - e_rev),
        "energy/acc": wmean((e_att > e_rev).astype(jnp.float32)),
    }
    if direction:
        metrics["energy/direction_cos"] = wmean(direction["_cos"])
    return loss, metrics


def edit_alignment(heads: CTSHeads, r_att: jax.Array, r_rev: jax.Array, e_f: jax.Array) -> jax.Array:
    """cos(−∇_r E_ψ(r_att, e_f), r_rev − r_att) per row: r_att, r_rev [B, d], e_f [B, D_c] -> [B].

    The direction a gradient edit moves the flagged step in (at K = 1 the edit there is
    −η α_t ∇E_ψ, whatever η and α), against the attempt → revision direction. Differentiable in ψ
    (a second derivative of E_ψ) and in the latents; 0 where either vector is 0.
    """
    grad_r = jax.grad(lambda r: jnp.sum(heads.energy(r, e_f)))(r_att)  # (B, d); rows independent
    target = r_rev - r_att  # (B, d)
    tiny = jnp.asarray(1e-12, r_att.dtype)
    dot = -jnp.sum(grad_r * target, axis=-1)
    norms = jnp.sqrt(jnp.sum(grad_r ** 2, axis=-1) + tiny) * jnp.sqrt(jnp.sum(target ** 2, axis=-1) + tiny)
    return dot / norms


# ----------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------

TERM_NAMES = ("grpo", "align", "decode", "energy")


def term_weights(cfg: CTSConfig) -> dict[str, float]:
    """The weight of each term in L; a weight of 0 means the term is NOT added (skipped, not ×0)."""
    return {"grpo": 1.0, "align": cfg.lam_align, "decode": cfg.lam_decode,
            "energy": 0.0 if cfg.energy_freeze else cfg.lam_energy}


def cts_total(terms: dict, cfg: CTSConfig, base=None):
    """L = L_GRPO + λ₁ L_align + λ₂ L_decode + λ₃ L_E — the one λ combiner.

    Args:
      terms: {name: value} for names in TERM_NAMES; each value an UNWEIGHTED scalar, or a pytree
        (a gradient) of a term — the loop combines losses and per-term gradients with this. A
        name that is not given is absent.
      base: a value the sum starts from; None: the first added term (None if no term is added).

    A term whose weight is 0 (λ = 0, or L_E under energy_freeze) is skipped, not multiplied by 0,
    so the ablation is bit-identical to the loss without it, gradients included (0·NaN would not be).
    """
    unknown = sorted(set(terms) - set(TERM_NAMES))
    if unknown:
        raise ValueError(f"cts_total: unknown terms {unknown}; expected some of {TERM_NAMES}")
    total = base
    for name, w in term_weights(cfg).items():
        if w == 0 or name not in terms:
            continue
        value = terms[name] if w == 1.0 else jax.tree.map(lambda x, w=w: w * x, terms[name])
        total = value if total is None else jax.tree.map(jnp.add, total, value)
    return total


def cts_loss(heads: CTSHeads, hidden: jax.Array, mask: jax.Array, step_ids: jax.Array, flag: jax.Array,
             critique: jax.Array, hidden_rev: jax.Array, mask_rev: jax.Array, step_ids_rev: jax.Array,
             flag_rev: jax.Array, cfg: CTSConfig, *, energy_rows: jax.Array | None = None
             ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The UNWEIGHTED L_align(R_θ, sg(R*)) and L_E, plus diagnostics (weight them with `cts_total`).

    Args:
      hidden, mask, step_ids, flag: [B, T, D], [B, T] ×3 for the attempt y⁰.
      critique: [B, D_c] pooled critique states ("pooled") or [B] int ids ("learned").
      hidden_rev, mask_rev, step_ids_rev, flag_rev: [B, T', D], [B, T'] ×3 for the revision y¹.
      energy_rows: optional [B] rows L_E may train on (0 on the critic's held-out rows).

    Returns:
      (terms {"align", "energy"}, metrics): metrics hold `cts/align`, `cts/energy`,
      `cts/active_frac`, `cts/edit_norm`, the edit-direction means `cts/edit_cos`,
      `cts/edit_rel`, `cts/u_decrease_frac`, `cts/edit_rows`, per-row `rows/*` arrays (the loop
      drops them from the log; the critic report uses them) and the `ot/*`, `align/*`, `energy/*`
      diagnostics.
    """
    _check_tokens(hidden, mask, step_ids, flag)
    _check_tokens(hidden_rev, mask_rev, step_ids_rev, flag_rev)
    e_f = critique_embedding(heads, critique, cfg)  # (B, D_c)

    # TRAJECTORY, LOCALISATION, EDIT
    R, weights, times = trajectory(heads, hidden, mask, step_ids, cfg)  # (B, N, d), (B, N), (B, N)
    alpha = localisation_weights(flag, mask, step_ids, cfg)  # (B, N)
    active = jnp.sum(alpha, axis=1) > 0  # (B,) rows with a flagged step
    R_star = latent_edit(heads, R, alpha, e_f, cfg)  # (B, N, d), stop-gradient

    # ALIGNMENT
    align, align_metrics = alignment_loss(R, weights, times, R_star, weights, times, cfg.alignment,
                                          row_weights=active.astype(R.dtype))

    # ENERGY CRITIC
    r_att, has_att = flagged_latent(heads, hidden, mask, flag, cfg.step_pool)  # (B, d)
    r_rev, has_rev = flagged_latent(heads, hidden_rev, mask_rev, flag_rev, cfg.step_pool)  # (B, d)
    paired = active & has_att & has_rev  # (B,)
    trains_critic = paired if energy_rows is None else paired & (jnp.asarray(energy_rows) > 0)
    at_flag = localisation_weights(flag, mask, step_ids, cfg.replace(alpha_width=0.0))  # (B, N)
    correct = {}
    if cfg.energy_correct_steps:  # the trajectories' known-correct steps rank below the flagged one
        R_rev, w_rev, _ = trajectory(heads, hidden_rev, mask_rev, step_ids_rev, cfg)  # (B, N, d)
        at_flag_rev = localisation_weights(flag_rev, mask_rev, step_ids_rev, cfg.replace(alpha_width=0.0))
        correct = {"R_correct": jnp.concatenate([R, R_rev], axis=1),  # (B, 2N, d)
                   "correct_mask": correct_step_mask(weights > 0, at_flag, w_rev > 0, at_flag_rev)}
    energy, energy_metrics = energy_loss(heads, r_att, r_rev, e_f, cfg, row_mask=trains_critic, **correct)

    # EDIT DIRECTION (diagnostics): toward the revision? how big? does U drop?
    d = edit_direction(R, R_star, at_flag, r_att, r_rev, paired)
    graphdef, state = nnx.split(heads)
    critic = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    e_sg = jax.lax.stop_gradient(e_f)
    u_before = trajectory_energy(critic, jax.lax.stop_gradient(R), alpha, e_sg)  # (B,)
    u_after = trajectory_energy(critic, R_star, alpha, e_sg)  # (B,)
    n_rows = jnp.maximum(jnp.sum(d["rows"]), 1)
    n_active = jnp.maximum(jnp.sum(active), 1)

    edit = jnp.sqrt(jnp.sum((R_star - jax.lax.stop_gradient(R)) ** 2, axis=-1))  # (B, N)
    metrics = {
        "cts/align": align,
        "cts/energy": energy,
        "cts/active_frac": jnp.mean(active.astype(jnp.float32)),
        "cts/edit_norm": jnp.sum(jnp.where(active, jnp.max(edit, axis=1), 0.0)) / n_active,
        "cts/edit_cos": jnp.sum(d["cos"]) / n_rows,
        "cts/edit_rel": jnp.sum(d["rel"]) / n_rows,
        "cts/u_decrease_frac": jnp.sum(jnp.where(active, u_after < u_before, False)) / n_active,
        "cts/edit_rows": jnp.sum(d["rows"]),
        "rows/edit_cos": d["cos"], "rows/edit_rel": d["rel"], "rows/edit_counted": d["rows"],
        "rows/u_decrease": jnp.where(active, u_after < u_before, False), "rows/active": active,
        "rows/pair_correct": jnp.where(paired, critic.energy(r_att, e_sg) > critic.energy(r_rev, e_sg), False),
        "rows/paired": paired,
        **align_metrics,
        **energy_metrics,
    }
    return {"align": align, "energy": energy}, metrics
