"""Time-augmented alignment divergences between two latent trajectories (L_align).

One entry point, `alignment_loss`, compares a batch of trajectories x [B, N, d] (with
weights x_w [B, N] and times x_t [B, N] in [0, 1]) against y [B, M, d] under the ground cost

    c(i, j) = ‖x_i − y_j‖² + w_t · (t_i − t_j)²

with one of three divergences (`AlignmentConfig.kind`):

  "sinkhorn"  entropic OT (OTT-JAX), balanced (tau = 1) or unbalanced (tau < 1), optionally
              debiased into the Sinkhorn divergence S_ε(x, y) = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y).
  "soft_dtw"  soft dynamic time warping (OTT-JAX `costs.SoftDTW`), optionally debiased.
  "l2"        mean squared distance between same-index latents (ablation A2: no alignment).

The time term is implemented by AUGMENTING the points with √w_t · t (an extra coordinate):
‖[x_i, √w_t t_i] − [y_j, √w_t t_j]‖² is exactly c(i, j), and it keeps OTT's fast squared
Euclidean PointCloud path (norms + one matmul) and its tested gradients, where a custom
`CostFn` would fall back to a generic pairwise vmap.

Variable lengths:
  * Sinkhorn: padded points get zero mass (masses are normalized to 1 per row), never truncation.
  * soft-DTW has no weights, and slicing to the true length is impossible under jit. The points
    get one sentinel appended and carry their offset from the true end; `_MaskedSeqCost` gives
    the real cells their cost, makes a SINGLE path of cells from (n, m) to the padded corner
    free (cost 0: diagonal, then straight along the last row/column) and every other padded
    cell +inf. The only way into that path is the diagonal move from the true corner
    (n−1, m−1), so the padded-corner value equals soft-DTW on the unpadded sequences
    (up to float rounding in the soft-min of {a, +inf, +inf}). OTT's soft-min VJP maps +inf
    entries to zero gradient, so no NaNs flow back.

Gradients: OTT's default implicit differentiation is right for balanced Sinkhorn (balanced and
debiased go through OTT's `Sinkhorn` / `sinkhorn_divergence`). For unbalanced problems (tau < 1)
OTT 0.6's default gradient is wrong (≈1.6x off against finite differences in float64, see
tests/test_alignment.py), its unrolled gradient (`implicit_diff=None`) matches finite differences
only without padding and turns NaN as soon as a mass is zero, and its iterates are not a
stationary point of the unbalanced dual. So tau < 1 uses `_unbalanced_ot`: the exact dual fixed
point on masked masses, differentiated at the optimum (envelope theorem), tested against finite
differences, against primal-dual equality, and for padding invariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn
from ott.tools import sinkhorn_divergence as sd

__all__ = ["ALIGNMENT_KINDS", "AlignmentConfig", "alignment_loss"]

ALIGNMENT_KINDS = ("sinkhorn", "soft_dtw", "l2")


@dataclass(frozen=True, kw_only=True)
class AlignmentConfig:
    """Settings of L_align (hashable: usable as a static jit argument).

    Attributes:
      kind: "sinkhorn" | "soft_dtw" | "l2" (A2 = "l2", A3 = "soft_dtw").
      epsilon: ε, the ABSOLUTE entropic regularisation of Sinkhorn (same units as the cost,
        i.e. squared latent distance; not rescaled by the data).
      tau: τ = ρ/(ρ+ε) for both marginals; 1.0 = balanced, < 1 = unbalanced (KL-relaxed).
      debiased: Sinkhorn divergence (or debiased soft-DTW) instead of the raw cost; it is 0 when
        x and y coincide, which the raw entropic cost is not.
      w_time: w_t, the weight of the squared time difference in the ground cost.
      gamma: γ, the soft-min temperature of soft-DTW.
      max_iterations: Sinkhorn iteration cap.
      threshold: Sinkhorn marginal-error tolerance for convergence.
    """

    kind: str = "sinkhorn"
    epsilon: float = 0.1
    tau: float = 1.0
    debiased: bool = False
    w_time: float = 1.0
    gamma: float = 0.1
    max_iterations: int = 500
    threshold: float = 1e-3

    def __post_init__(self):
        if self.kind not in ALIGNMENT_KINDS:
            raise ValueError(f"AlignmentConfig.kind must be one of {ALIGNMENT_KINDS}, got {self.kind!r}")
        if not self.epsilon > 0:
            raise ValueError(f"AlignmentConfig.epsilon must be > 0, got {self.epsilon!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"AlignmentConfig.tau must be in (0, 1], got {self.tau!r}")
        if not self.w_time >= 0:
            raise ValueError(f"AlignmentConfig.w_time must be >= 0, got {self.w_time!r}")
        if not self.gamma > 0:
            raise ValueError(f"AlignmentConfig.gamma must be > 0, got {self.gamma!r}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 10):
            raise ValueError(f"AlignmentConfig.max_iterations must be an int >= 10, got {self.max_iterations!r}")
        if not self.threshold > 0:
            raise ValueError(f"AlignmentConfig.threshold must be > 0, got {self.threshold!r}")
        if not isinstance(self.debiased, bool):
            raise ValueError(f"AlignmentConfig.debiased must be a bool, got {self.debiased!r}")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _masses(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N] nonnegative weights -> (masses summing to 1, has_mass). Empty rows get uniform mass
    (so the solver stays finite) and has_mass = False (so the caller can drop them)."""
    w = jnp.where(w > 0, w, 0.0)
    total = jnp.sum(w)
    has_mass = total > 0
    uniform = jnp.full_like(w, 1.0 / w.shape[0])
    return jnp.where(has_mass, w / jnp.where(has_mass, total, 1.0), uniform), has_mass


def _augment(x: jax.Array, t: jax.Array, w_time: float) -> jax.Array:
    """[N, d], [N] -> [N, d+1]: append √w_t · t so that SqEuclidean gives the time-augmented cost."""
    return jnp.concatenate([x, jnp.sqrt(w_time) * t[:, None].astype(x.dtype)], axis=-1)


def _sqdist(x: jax.Array, y: jax.Array) -> jax.Array:
    """[N, d'], [M, d'] -> [N, M] squared Euclidean distances."""
    return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)


def _safe_log(w: jax.Array) -> jax.Array:
    """log w with -inf on zero weights and no NaN in its (unused) gradient."""
    pos = w > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, w, 1.0)), -jnp.inf)


def _unbalanced_ot(x, a, y, b, cfg: AlignmentConfig):
    """KL-relaxed entropic OT between x [N, d'] (masses a [N]) and y [M, d'] (masses b [M]).

    OT = min_P <P, C> + ε KL(P | a⊗b) + ρ KL(P1 | a) + ρ KL(Pᵀ1 | b),  ρ = ετ/(1−τ),
       = max_{f,g} −ρ<a, e^{−f/ρ} − 1> − ρ<b, e^{−g/ρ} − 1> − ε<a⊗b, e^{(f⊕g−C)/ε} − 1>.

    Why not OTT here: OTT 0.6's unbalanced iterates are not a stationary point of this dual (its
    potentials carry an ε log a offset the update does not match), so neither its Danskin nor its
    implicit gradient is the gradient of its value, and its unrolled gradient is NaN as soon as a
    mass is zero (padding). This solver runs the exact dual fixed point f = −τε lse_j(log b_j +
    (g_j − C_ij)/ε) on stop-gradient costs, masks zero masses, and differentiates the dual at
    the converged potentials (envelope theorem: dOT/dC = P).

    Returns:
      (value [], converged [] bool, n_iters [] int32).
    """
    eps, tau = cfg.epsilon, cfg.tau
    rho = eps * tau / (1.0 - tau)
    sa, sb = a > 0, b > 0
    log_a, log_b = _safe_log(a), _safe_log(b)
    cost = _sqdist(x, y)  # (N, M)
    cost_sg = jax.lax.stop_gradient(cost)

    def update_f(g):
        f = -tau * eps * jax.nn.logsumexp(log_b[None, :] + (g[None, :] - cost_sg) / eps, axis=1)
        return jnp.where(sa, f, 0.0)  # (N,)

    def update_g(f):
        g = -tau * eps * jax.nn.logsumexp(log_a[:, None] + (f[:, None] - cost_sg) / eps, axis=0)
        return jnp.where(sb, g, 0.0)  # (M,)

    def row_error(f, g):
        # After a g-update the column condition is exact; the row condition P1 = a e^{-f/ρ} is not.
        log_p = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost_sg) / eps
        row_mass = jnp.exp(jax.nn.logsumexp(log_p, axis=1))
        return jnp.sum(jnp.where(sa, jnp.abs(row_mass - a * jnp.exp(-f / rho)), 0.0))

    def cond(state):
        _, _, err, it = state
        return (err > cfg.threshold) & (it < cfg.max_iterations)

    def body(state):
        f, g, _, it = state
        f = update_f(g)
        g = update_g(f)
        return f, g, row_error(f, g), it + 1

    f0 = jnp.zeros(a.shape, cost.dtype)
    g0 = jnp.zeros(b.shape, cost.dtype)
    f, g, err, n_iters = jax.lax.while_loop(cond, body, (f0, g0, jnp.asarray(jnp.inf, cost.dtype), 0))
    f, g = jax.lax.stop_gradient(f), jax.lax.stop_gradient(g)

    log_p = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / eps  # (N, M)
    mass = jnp.sum(jnp.where(sa[:, None] & sb[None, :], jnp.exp(log_p), 0.0))
    div_a = jnp.sum(jnp.where(sa, a * rho * (jnp.exp(-f / rho) - 1.0), 0.0))
    div_b = jnp.sum(jnp.where(sb, b * rho * (jnp.exp(-g / rho) - 1.0), 0.0))
    value = -div_a - div_b - eps * (mass - jnp.sum(a) * jnp.sum(b))
    return value, err <= cfg.threshold, n_iters


def _sinkhorn_row(x, a, y, b, cfg: AlignmentConfig):
    """One pair of point clouds x [N, d'], y [M, d'] with masses a [N], b [M] -> (value, converged, n_iters)."""
    if cfg.tau < 1.0:
        xy, c_xy, n_xy = _unbalanced_ot(x, a, y, b, cfg)
        if not cfg.debiased:
            return xy, c_xy, n_xy
        xx, c_xx, n_xx = _unbalanced_ot(x, a, x, a, cfg)
        yy, c_yy, n_yy = _unbalanced_ot(y, b, y, b, cfg)
        # Séjourné et al. (2019) eq. 15: + ε/2 (m(a) − m(b))², zero here (both masses are 1).
        mass_gap = jnp.sum(a) - jnp.sum(b)
        value = xy - 0.5 * (xx + yy) + 0.5 * cfg.epsilon * mass_gap ** 2
        return value, c_xy & c_xx & c_yy, jnp.maximum(jnp.maximum(n_xy, n_xx), n_yy)
    # Balanced: OTT's default (implicit) differentiation is right (checked against finite differences).
    if cfg.debiased:
        solve_kwargs = dict(max_iterations=cfg.max_iterations, threshold=cfg.threshold)
        value, out = sd.sinkhorn_divergence(
            pointcloud.PointCloud, x, y, a=a, b=b, epsilon=cfg.epsilon, solve_kwargs=solve_kwargs)
        converged = out.converged[0] & out.converged[1] & out.converged[2]
        n_iters = jnp.maximum(jnp.maximum(out.n_iters[0], out.n_iters[1]), out.n_iters[2])
        return value, converged, n_iters
    geom = pointcloud.PointCloud(x, y, epsilon=cfg.epsilon)
    prob = linear_problem.LinearProblem(geom, a=a, b=b)
    out = sinkhorn.Sinkhorn(max_iterations=cfg.max_iterations, threshold=cfg.threshold)(prob)
    return out.reg_ot_cost, out.converged, out.n_iters


class _MaskedSeqCost(costs.CostFn):
    """Ground cost of soft-DTW on padded sequences (see module docstring).

    Points are [..., feature, offset, is_last] where `offset` = index − true length (< 0 on real
    points) and `is_last` = 1 on the final (sentinel) index. Real×real cells: squared Euclidean
    on the features; cells on the unique exit path from (n, m) to the corner: 0; others: +inf.
    """

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        fu, du, lu = u[:-2], u[-2], u[-1]
        fv, dv, lv = v[:-2], v[-2], v[-1]
        real = (du < 0) & (dv < 0)
        exit_path = (du >= 0) & (dv >= 0) & (
            (du == dv) | ((lu > 0) & (dv > du)) | ((lv > 0) & (du > dv)))
        sq = jnp.sum((fu - fv) ** 2)
        return jnp.where(real, sq, jnp.where(exit_path, jnp.zeros_like(sq), jnp.full_like(sq, jnp.inf)))


def _dtw_points(x: jax.Array, valid: jax.Array) -> jax.Array:
    """[N, d'] features, [N] bool (a right-padded mask) -> [N+1, d'+2] points with a sentinel."""
    n_true = jnp.sum(valid.astype(jnp.int32))
    x = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)], axis=0)  # (N+1, d')
    idx = jnp.arange(x.shape[0])
    offset = (idx - n_true).astype(x.dtype)
    is_last = (idx == x.shape[0] - 1).astype(x.dtype)
    return jnp.concatenate([x, offset[:, None], is_last[:, None]], axis=-1)


def _soft_dtw_row(x, x_valid, y, y_valid, cfg: AlignmentConfig):
    sdtw = costs.SoftDTW(gamma=cfg.gamma, ground_cost=_MaskedSeqCost(), debiased=cfg.debiased)
    return sdtw(_dtw_points(x, x_valid), _dtw_points(y, y_valid))


def _l2_row(x, x_valid, y, y_valid):
    both = (x_valid & y_valid).astype(x.dtype)
    sq = jnp.sum((x - y) ** 2, axis=-1)  # (N,)
    return jnp.sum(both * sq) / jnp.maximum(jnp.sum(both), 1.0)


def _check_shapes(x, x_w, x_t, y, y_w, y_t, kind):
    for name, arr, nd in (("x", x, 3), ("y", y, 3), ("x_w", x_w, 2), ("y_w", y_w, 2),
                          ("x_t", x_t, 2), ("y_t", y_t, 2)):
        if arr.ndim != nd:
            raise ValueError(f"alignment_loss: {name} must have {nd} dims, got shape {arr.shape}")
    B, N, d = x.shape
    if y.shape[0] != B or y.shape[2] != d:
        raise ValueError(f"alignment_loss: y shape {y.shape} incompatible with x shape {x.shape}")
    for name, arr, n in (("x_w", x_w, N), ("x_t", x_t, N), ("y_w", y_w, y.shape[1]), ("y_t", y_t, y.shape[1])):
        if arr.shape != (B, n):
            raise ValueError(f"alignment_loss: {name} must have shape {(B, n)}, got {arr.shape}")
    if kind == "l2" and y.shape[1] != N:
        raise ValueError(f"alignment_loss: kind 'l2' needs equal lengths, got N={N}, M={y.shape[1]}")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def alignment_loss(
    x: jax.Array, x_w: jax.Array, x_t: jax.Array,
    y: jax.Array, y_w: jax.Array, y_t: jax.Array,
    cfg: AlignmentConfig, *, row_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batched time-augmented alignment divergence between trajectories x and y.

    Args:
      x: [B, N, d] source trajectory (e.g. R_θ); padded positions have x_w = 0.
      x_w: [B, N] nonnegative weights; normalized to mass 1 per row (Sinkhorn); for soft-DTW and
        l2 only `x_w > 0` matters and must be a right-padded mask (real positions first).
      x_t: [B, N] times in [0, 1].
      y, y_w, y_t: [B, M, d], [B, M], [B, M] the target trajectory (e.g. sg(R*)).
      cfg: AlignmentConfig.
      row_weights: optional [B] nonnegative weights of each row in the batch mean (e.g. 0 for rows
        without a flagged step). Rows with no positive x_w or y_w are dropped as well.

    Returns:
      (loss [], metrics): loss = Σ_b w_b · div_b / max(Σ_b w_b, 1e-12) (0 if no row counts);
      metrics: `align/value` (same as loss), `align/rows` (rows counted), and for Sinkhorn
      `ot/converged` (fraction of counted rows converged), `ot/n_iters` (max over rows).
    """
    _check_shapes(x, x_w, x_t, y, y_w, y_t, cfg.kind)
    B = x.shape[0]
    row_w = jnp.ones((B,), x.dtype) if row_weights is None else jnp.asarray(row_weights, x.dtype)
    if row_w.shape != (B,):
        raise ValueError(f"alignment_loss: row_weights must have shape {(B,)}, got {row_w.shape}")

    a, a_ok = jax.vmap(_masses)(x_w.astype(x.dtype))  # (B, N), (B,)
    b, b_ok = jax.vmap(_masses)(y_w.astype(y.dtype))  # (B, M), (B,)
    row_w = jnp.where(a_ok & b_ok, row_w, 0.0)
    metrics: dict[str, jax.Array] = {}

    if cfg.kind == "sinkhorn":
        xa = jax.vmap(_augment, in_axes=(0, 0, None))(x, x_t, cfg.w_time)  # (B, N, d+1)
        ya = jax.vmap(_augment, in_axes=(0, 0, None))(y, y_t, cfg.w_time)  # (B, M, d+1)
        per_row, converged, n_iters = jax.vmap(lambda xi, ai, yi, bi: _sinkhorn_row(xi, ai, yi, bi, cfg))(
            xa, a, ya, b)
        counted = row_w > 0
        metrics["ot/converged"] = jnp.sum(jnp.where(counted, converged, False)) / jnp.maximum(jnp.sum(counted), 1)
        metrics["ot/n_iters"] = jnp.max(n_iters)
    elif cfg.kind == "soft_dtw":
        xa = jax.vmap(_augment, in_axes=(0, 0, None))(x, x_t, cfg.w_time)
        ya = jax.vmap(_augment, in_axes=(0, 0, None))(y, y_t, cfg.w_time)
        per_row = jax.vmap(lambda xi, vi, yi, wi: _soft_dtw_row(xi, vi, yi, wi, cfg))(xa, x_w > 0, ya, y_w > 0)
    else:
        per_row = jax.vmap(_l2_row)(x, x_w > 0, y, y_w > 0)

    # Dropped rows must not leak NaN/inf into the mean (0 * inf = nan), hence the where.
    contrib = jnp.where(row_w > 0, row_w * per_row, 0.0)
    loss = jnp.sum(contrib) / jnp.maximum(jnp.sum(row_w), 1e-12)
    metrics["align/value"] = loss
    metrics["align/rows"] = jnp.sum(row_w > 0)
    return loss, metrics
