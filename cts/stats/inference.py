"""Paired inference between methods evaluated on the same seeds and problems.

Design: within a task every method is evaluated on the same S training seeds and the same
P test problems; comparisons are paired by (seed, problem). The claim a comparison supports is
about a *training procedure*, so the unit of replication is the training run (a seed), not
the problem: two methods can differ on every problem of one pair of runs by chance alone.

Primary test (`run_level_contrast`, `run_level_test`): a t-test whose unit is the training run,
with the variance of a two-way (seeds × problems) random-effects decomposition. For a linear
contrast θ = Σ_p c_p · E[D[s, p]] of the paired differences D = X − Y ([S, P]):

    θ̂_s  = Σ_p c_p D[s, p]          one training run's estimate (e.g. its mean Δ)     [S]
    θ̂    = mean_s θ̂_s
    V̂    = Var_s(θ̂_s)/S  +  τ̂² Σ_p c_p²
    τ̂²   = max(0, RSS_p/(P − k) − MS_E/S)

Var_s(θ̂_s)/S carries everything that varies between runs (seed effects and the problem-level
sampling noise of each run); τ̂² is the variance of persistent per-problem effects around the
contrast's model (k columns: the mean, a line in H, or per-H means), estimated from the
seed-averaged residuals RSS_p minus their noise share MS_E/S (MS_E: the seeds × problems
interaction mean square). V̂ is the two-way cluster-robust variance of Cameron, Gelbach &
Miller (2011, JBES 29:238) written in ANOVA form, truncated at its seed part (never below it).
Reference distribution: t with Welch–Satterthwaite df, V̂² / (V̂_seed²/(S − 1) + Var̂(V̂_problem)/2),
the second term from the df of the two mean squares behind τ̂² (floored at 1): S − 1 (the
small-number-of-clusters choice, G − 1 for the scarcer dimension) when the run-level term
dominates, more when the problem term does. With τ̂ = 0 it is the paired t-test on per-seed mean differences that Colas,
Sigaud & Oudeyer (2018, "How many random seeds?") recommend for comparing RL algorithms; the
τ term keeps the level when methods differ persistently problem by problem (a per-seed t
alone rejected a true null in 16–53% of simulations with method × problem sd 0.3–1.0 logit and
pass@1 over 16 samples). Its level and CI coverage are checked by simulation in
tests/test_stats_calibration.py (`cts.stats.simulate`): type-I 0.035–0.055 and coverage
0.94–0.96 in the standard cases; somewhat liberal at 3 seeds when a seed sd of 0.3 logit meets
strong method × problem effects (sd 0.5–1.0) on sampled outcomes (type-I ≈ 0.07, coverage 0.91),
≤ 0.06 at 5 seeds.

Below MIN_SEEDS_FOR_TEST seeds no p-value is reported: with 2 seeds the run-level variance has
1 degree of freedom (a two-sided Holm threshold over 18 comparisons needs |t| > 229), the exact
sign-flip test over 2 runs cannot go below p = 0.5, this test's simulated type-I error reaches
0.12–0.14 with seed sd 0.3 and persistent method × problem effects, and the per-problem tests
that ignore the run-level variance are worse (8–31% false positives at seed sd 0.1–0.3 logit;
`python -m cts.stats.simulate`). With 1 seed there is no run-level variance at all.

Secondary (`wilcoxon_paired`): Wilcoxon signed-rank over problems on seed-averaged
differences d_p, *conditional on these trained seeds* (it asks whether these particular runs
differ on this problem population, not whether the procedures do). Problems with d_p = 0 are
dropped (Wilcoxon's rule) before anything else, so the null distribution is that of the n
nonzero differences: exact (all 2ⁿ sign patterns, midranks for ties, by dynamic programming)
for n ≤ EXACT_MAX_N, else the normal approximation with tie correction. The smallest p those n
can give, 2·2⁻ⁿ, is reported and warned about when it cannot pass the Holm threshold.

Bootstrap (`crossed_bootstrap`): percentile intervals with multiplicity weights; the table uses
it with the seed draw switched off (`resample_seeds=False`) for the secondary's conditional
interval. Resampling 2–5 seeds misstates run-level variance (coverage 0.89 at seed sd 0.3 with
2 seeds, 0.99 with none, in `python -m cts.stats.simulate`; 75.5% in issue 15's simulation), so
it is not the primary interval.

Multiplicity: Holm step-down over the comparisons of a family that have a p-value
(`holm_adjust`, equal to statsmodels `multipletests(method="holm")`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

__all__ = [
    "ZERO_METHOD",
    "PRIMARY_TEST",
    "SECONDARY_TEST",
    "MIN_SEEDS_FOR_TEST",
    "Interval",
    "run_level_contrast",
    "run_level_test",
    "run_level_mean",
    "horizon_contrasts",
    "signed_rank_exact_p",
    "crossed_bootstrap_weights",
    "crossed_bootstrap",
    "wilcoxon_paired",
    "holm_adjust",
    "Comparison",
    "compare_methods",
    "task_rng",
]

ZERO_METHOD = "wilcox"
PRIMARY_TEST = ("run-level paired t (unit: training seed; two-way seeds × problems variance; "
                "Satterthwaite df)")
SECONDARY_TEST = "Wilcoxon signed-rank over problems, conditional on these trained seeds"
MIN_SEEDS_FOR_TEST = 3  # see the module docstring: why 2 seeds get no p-value
EXACT_MAX_N = 500  # exact signed-rank null up to this many nonzero differences (DP: O(n³) adds)
MIN_PROBLEMS = 10  # below this a per-problem test has almost no power; warn
_CHUNK = 512  # bootstrap replicates per block: bounds memory at _CHUNK × (S + P) floats


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (None when the data cannot give one, e.g. 1 seed)."""

    estimate: float
    low: float | None
    high: float | None


def task_rng(seed: int, task: str) -> np.random.Generator:
    """A generator for one task's bootstrap that depends only on (seed, task name).

    Keyed by a stable hash of the name, so adding or removing another task does not change
    this task's draws (Python's `hash` is salted per process and cannot be used).
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(task.encode())]))


def crossed_bootstrap_weights(n_seeds: int, n_problems: int, n_boot: int,
                              rng: np.random.Generator):
    """Yield blocks of multiplicity weights of the crossed (seeds × problems) bootstrap.

    Yields (w_seed [b, S], w_problem [b, P]) with rows summing to 1, b ≤ _CHUNK, n_boot rows
    in all. Row i of w_seed is (count of seed s in replicate i's seed draw) / S.
    """
    if n_seeds < 1 or n_problems < 1 or n_boot < 1:
        raise ValueError(f"need n_seeds, n_problems, n_boot >= 1, got {n_seeds}, {n_problems}, {n_boot}")
    done = 0
    while done < n_boot:
        b = min(_CHUNK, n_boot - done)
        s_idx = rng.integers(0, n_seeds, size=(b, n_seeds))
        p_idx = rng.integers(0, n_problems, size=(b, n_problems))
        offs = np.arange(b)[:, None]
        w_s = np.bincount((s_idx + offs * n_seeds).ravel(), minlength=b * n_seeds)
        w_p = np.bincount((p_idx + offs * n_problems).ravel(), minlength=b * n_problems)
        yield (w_s.reshape(b, n_seeds) / n_seeds, w_p.reshape(b, n_problems) / n_problems)
        done += b


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def crossed_bootstrap(matrices: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]] = (), *,
                      n_boot: int, rng: np.random.Generator, confidence: float = 0.95,
                      resample_seeds: bool = True,
                      ) -> tuple[dict[str, Interval], dict[tuple[str, str], Interval]]:
    """Means of each method and paired differences, with shared-index percentile intervals.

    With resample_seeds=False every replicate keeps all seeds (weight 1/S each) and resamples
    problems only: an interval conditional on these trained seeds.

    Args:
      matrices: {method: [S, P] array}, all the same shape and alignment.
      pairs: (method, reference) pairs whose Δ = mean(method) − mean(reference) is wanted.
      n_boot: replicates.
      rng: source of the index draws (see `task_rng`).
      confidence: interval level.

    Returns ({method: Interval}, {(method, reference): Interval}).
    """
    names = sorted(matrices)
    if not names:
        raise ValueError("crossed_bootstrap: no matrices")
    shape = np.shape(matrices[names[0]])
    for m in names:
        if np.shape(matrices[m]) != shape or len(shape) != 2:
            raise ValueError(f"crossed_bootstrap: {m!r} has shape {np.shape(matrices[m])}, expected {shape} (2-D)")
    for m, r in pairs:
        if m not in matrices or r not in matrices:
            raise KeyError(f"crossed_bootstrap: pair ({m!r}, {r!r}) names a method without a matrix")
    stack = np.stack([np.asarray(matrices[m], dtype=float) for m in names])  # [M, S, P]
    reps = []
    for w_s, w_p in crossed_bootstrap_weights(shape[0], shape[1], n_boot, rng):
        if not resample_seeds:
            w_s = np.full_like(w_s, 1.0 / shape[0])
        reps.append(np.einsum("bs,msp,bp->bm", w_s, stack, w_p))  # [b, M]
    reps = np.concatenate(reps)  # [n_boot, M]
    point = stack.mean(axis=(1, 2))  # [M]
    col = {m: i for i, m in enumerate(names)}
    means = {m: Interval(float(point[i]), *_percentile(reps[:, i], confidence)) for m, i in col.items()}
    deltas = {}
    for m, r in pairs:
        diff = reps[:, col[m]] - reps[:, col[r]]
        deltas[(m, r)] = Interval(float(point[col[m]] - point[col[r]]), *_percentile(diff, confidence))
    return means, deltas


def holm_adjust(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order (= multipletests(method="holm")[1]).

    p_(i) sorted ascending, adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm_adjust: need a 1-D list of p-values in [0, 1], got {pvalues!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj_sorted
    return out


# ----------------------------------------------------------------------------- primary: run-level t

def run_level_contrast(d: np.ndarray, weights: np.ndarray, design: np.ndarray, *,
                       confidence: float = 0.95) -> dict[str, np.ndarray]:
    """The run-level t of the module docstring for one linear contrast, vectorised.

    Args:
      d: [..., S, P] paired differences (or one method's outcomes, for its mean); leading
        dimensions are independent data sets (the calibration simulations pass thousands).
      weights: [P] contrast c (1/P for the mean; a row of (GᵀG)⁻¹Gᵀ in general).
      design: [P, k] the contrast's model G (a column of ones for the mean); τ̂² is estimated
        from the seed-averaged residuals around it.
      confidence: interval level.

    Returns {estimate, se, df, t, p, low, high, var_seed, var_problem}, each [...]. se, t, p,
    low, high are NaN with S < 2 (df 0), and t, p NaN where se = 0 (no variance).
    """
    d = np.asarray(d, dtype=float)
    weights = np.asarray(weights, dtype=float)
    design = np.asarray(design, dtype=float)
    n_seeds, n_problems = d.shape[-2:]
    k = design.shape[1]
    if weights.shape != (n_problems,) or design.shape[0] != n_problems:
        raise ValueError(f"run_level_contrast: weights {weights.shape} / design {design.shape} do not "
                         f"match {n_problems} problems")
    theta_s = d @ weights  # [..., S] one estimate per training run
    est = theta_s.mean(axis=-1)
    nan = np.full(est.shape, np.nan)
    if n_seeds < 2:
        return {"estimate": est, "se": nan, "df": np.zeros(est.shape), "t": nan, "p": nan, "low": nan, "high": nan,
                "var_seed": nan, "var_problem": nan}
    var_seed = theta_s.var(axis=-1, ddof=1) / n_seeds
    if n_problems > k:
        q, _ = np.linalg.qr(design)  # [P, k] orthonormal basis of the model's column space
        dbar = d.mean(axis=-2)  # [..., P] seed-averaged
        resid = dbar - (dbar @ q) @ q.T
        ms_resid = (resid ** 2).sum(axis=-1) / (n_problems - k)
        inter = d - d.mean(axis=-1, keepdims=True) - d.mean(axis=-2, keepdims=True) \
            + d.mean(axis=(-2, -1), keepdims=True)  # [..., S, P] seeds × problems residual
        ms_e = (inter ** 2).sum(axis=(-2, -1)) / ((n_seeds - 1) * (n_problems - 1))
        tau2 = np.maximum(0.0, ms_resid - ms_e / n_seeds)
    else:  # no residual degrees of freedom: the problem term cannot be estimated
        tau2 = np.zeros(est.shape)
    var_problem = tau2 * float(weights @ weights)
    se = np.sqrt(var_seed + var_problem)
    # Welch–Satterthwaite: S − 1 df when the run-level term dominates, up to P − k when the
    # problem term does (a fixed S − 1 made the test far too conservative, type-I ≈ 0.01,
    # with strong method × problem effects; see tests/test_stats_calibration.py)
    # Var(V̂_problem)/2 of the mean-square difference that estimates τ², Satterthwaite-style
    # (ms_resid has P − k df, ms_e (S − 1)(P − 1)); zero when τ̂² is truncated to 0
    half_var_problem = np.where(tau2 > 0, float(weights @ weights) ** 2 * (
        ms_resid ** 2 / max(n_problems - k, 1) + (ms_e / n_seeds) ** 2 / ((n_seeds - 1) * (n_problems - 1))),
        0.0) if n_problems > k else np.zeros(est.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (var_seed + var_problem) ** 2 / (var_seed ** 2 / (n_seeds - 1) + half_var_problem)
    df = np.maximum(1.0, np.where(np.isfinite(df), df, n_seeds - 1))  # a noisy τ̂² can pull it below S − 1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, est / np.where(se > 0, se, 1.0), np.nan)
    p = np.where(np.isnan(t), np.nan, 2 * sps.t.sf(np.abs(np.nan_to_num(t)), df))
    half = sps.t.ppf(0.5 + confidence / 2, df) * se
    return {"estimate": est, "se": se, "df": df, "t": t, "p": p, "low": est - half,
            "high": est + half, "var_seed": var_seed, "var_problem": var_problem}


def _mean_contrast(n_problems: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n_problems, 1.0 / n_problems), np.ones((n_problems, 1))


def _none_if_nan(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def run_level_mean(x: np.ndarray, confidence: float = 0.95) -> Interval:
    """One method's mean outcome [S, P] (values in [0, 1]) with the run-level interval, clipped
    to [0, 1] since the symmetric t-interval can leave it with few seeds (None bounds with 1 seed)."""
    x = np.asarray(x, dtype=float)
    r = run_level_contrast(x, *_mean_contrast(x.shape[1]), confidence=confidence)
    lo, hi = _none_if_nan(r["low"]), _none_if_nan(r["high"])
    if lo is not None:
        lo, hi = max(0.0, lo), min(1.0, hi)
    return Interval(float(r["estimate"]), lo, hi)


def run_level_test(x: np.ndarray, y: np.ndarray, *, confidence: float = 0.95) -> dict:
    """Primary test of Δ = mean(x) − mean(y) for [S, P] matrices paired by seed and problem.

    Returns a dict: test (PRIMARY_TEST), n_seeds, n_problems, estimate, se, df, low, high (None
    with 1 seed), t, p (None below MIN_SEEDS_FOR_TEST seeds or without variance),
    var_seed, var_problem, no_variance (bool), notes (why a number is missing).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"run_level_test: shapes {x.shape} and {y.shape} must be equal and 2-D")
    n_seeds, n_problems = x.shape
    d = x - y
    r = run_level_contrast(d, *_mean_contrast(n_problems), confidence=confidence)
    out = {"test": PRIMARY_TEST, "n_seeds": n_seeds, "n_problems": n_problems,
           **{k: _none_if_nan(r[k]) for k in ("estimate", "se", "df", "t", "p", "low", "high",
                                              "var_seed", "var_problem")}}
    notes = []
    out["no_variance"] = bool(n_seeds >= 2 and out["se"] == 0.0)
    if n_seeds < 2:
        notes.append("1 seed: no variance between training runs can be estimated; no CI, no p-value")
    elif out["no_variance"]:
        notes.append("no variance: every training run gives the same difference on every problem; "
                     "no p-value")
    elif n_seeds < MIN_SEEDS_FOR_TEST:
        notes.append(f"{n_seeds} seeds: no p-value (the run-level variance has {n_seeds - 1} df; "
                     f"no test holds its level and has power with < {MIN_SEEDS_FOR_TEST} seeds, "
                     "see cts/stats/inference.py); the CI is t with about 1 df")
    if n_seeds < MIN_SEEDS_FOR_TEST or out["no_variance"]:
        out["p"] = out["t"] = None
    out["notes"] = notes
    return out


def horizon_contrasts(x: np.ndarray, y: np.ndarray, horizons: np.ndarray, *,
                      confidence: float = 0.95) -> dict:
    """Δ = x − y as a function of the horizon H, by the run-level model.

    Args:
      x, y: [S, P] paired matrices; horizons: [P] ints.

    Returns {horizons [K], delta [K], low [K], high [K], n_problems [K], slope, slope_low,
    slope_high, slope_p, note}: Δ at each H (contrast: the mean over that H's problems, model:
    per-H means) and the OLS slope of Δ on H (Δ change per extra step; model: a line in H),
    each with the run-level t interval (seeds − 1 df). p is None below MIN_SEEDS_FOR_TEST seeds.
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    h = np.asarray(horizons)
    n_seeds, n_problems = d.shape
    if h.shape != (n_problems,):
        raise ValueError(f"horizon_contrasts: horizons {h.shape} do not match {n_problems} problems")
    levels = np.unique(h)
    onehot = (h[:, None] == levels[None, :]).astype(float)  # [P, K]
    counts = onehot.sum(axis=0)
    per_h = {"horizons": [int(v) for v in levels], "n_problems": [int(c) for c in counts],
             "delta": [], "low": [], "high": []}
    for j in range(len(levels)):
        r = run_level_contrast(d, onehot[:, j] / counts[j], onehot, confidence=confidence)
        per_h["delta"].append(float(r["estimate"]))
        per_h["low"].append(_none_if_nan(r["low"]))
        per_h["high"].append(_none_if_nan(r["high"]))
    out = {**per_h, "slope": None, "slope_low": None, "slope_high": None, "slope_p": None, "note": ""}
    if len(levels) < 2 or n_problems < 3:
        out["note"] = f"slope undefined: {n_problems} problems, {len(levels)} distinct horizon(s)"
        return out
    design = np.column_stack([np.ones(n_problems), h.astype(float)])
    w = np.linalg.pinv(design)[1]  # [P] the OLS slope as a linear contrast
    r = run_level_contrast(d, w, design, confidence=confidence)
    out.update(slope=float(r["estimate"]), slope_low=_none_if_nan(r["low"]),
               slope_high=_none_if_nan(r["high"]))
    if n_seeds >= MIN_SEEDS_FOR_TEST:
        out["slope_p"] = _none_if_nan(r["p"])
    else:
        out["note"] = f"{n_seeds} seed(s): no p-value for the slope"
    return out


# ----------------------------------------------------------------------------- secondary: Wilcoxon

def signed_rank_exact_p(d: np.ndarray) -> tuple[float, float]:
    """Exact two-sided p of the signed-rank statistic of nonzero differences `d` [n], and R+.

    Null: the 2ⁿ sign patterns of the observed |d| (midranks for ties) are equally likely.
    Doubled midranks are integers, so the distribution of 2·R+ is built exactly by the
    recursion f_i(t) = ½ f_{i−1}(t) + ½ f_{i−1}(t − 2r_i). p = min(1, 2·min(P(R+ ≤ r), P(R+ ≥ r))),
    scipy's convention for its exact test.
    """
    d = np.asarray(d, dtype=float)
    if d.ndim != 1 or len(d) == 0 or np.any(d == 0):
        raise ValueError("signed_rank_exact_p: need a 1-D array of nonzero differences")
    r2 = np.rint(2 * sps.rankdata(np.abs(d))).astype(np.int64)  # doubled midranks: integers
    total = int(r2.sum())
    dist = np.zeros(total + 1)
    dist[0] = 1.0
    for r in r2:
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[:-r]
        dist = 0.5 * (dist + shifted)
    obs = int(r2[d > 0].sum())
    cdf = dist[:obs + 1].sum()
    sf = dist[obs:].sum()
    return float(min(1.0, 2 * min(cdf, sf))), obs / 2


def wilcoxon_paired(x: np.ndarray, y: np.ndarray, *, alpha_threshold: float = 0.05) -> dict:
    """Secondary test: Wilcoxon signed-rank over problems for x vs y, conditional on these seeds.

    Args:
      x, y: [S, P] aligned 0/1 (or real) matrices.
      alpha_threshold: the level this test must reach to count (α/m under worst-case Holm);
        used only for the "cannot reach" warning.

    Returns a dict: test, n_problems, n_seeds, n_nonzero, mean_delta (mean of d_p), statistic
    (min(R+, R−), None if all d_p = 0), p, method ("exact" | "asymptotic"), min_attainable_p
    (2·2⁻ⁿ for n nonzero), rank_biserial ((R+ − R−)/(R+ + R−)), cohens_dz (mean/sd of d_p,
    ddof=1; None if sd = 0), notes.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"wilcoxon_paired: shapes {x.shape} and {y.shape} must be equal and 2-D")
    n_seeds, n_problems = x.shape
    d = (x - y).sum(axis=0) / n_seeds  # [P]; sum first so equal integer sums give equal floats
    nonzero = d[d != 0]  # Wilcoxon's rule: zeros carry no sign; the test is on these n
    n = len(nonzero)
    notes = []
    if n_problems < MIN_PROBLEMS:
        notes.append(f"only {n_problems} problems (< {MIN_PROBLEMS}): the per-problem test has little power")
    sd = float(d.std(ddof=1)) if n_problems > 1 else 0.0
    out = {"test": SECONDARY_TEST, "n_problems": n_problems, "n_seeds": n_seeds, "n_nonzero": n,
           "mean_delta": float(d.mean()), "cohens_dz": float(d.mean() / sd) if sd > 0 else None,
           "zero_method": ZERO_METHOD}
    if n == 0:
        notes.append("all per-problem differences are zero: p set to 1, no test run")
        out.update(statistic=None, p=1.0, method=None, min_attainable_p=1.0, rank_biserial=None)
        out["notes"] = notes
        return out
    ranks = sps.rankdata(np.abs(nonzero))
    r_plus, r_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
    if n <= EXACT_MAX_N:
        p, _ = signed_rank_exact_p(nonzero)
        method = "exact"
    else:
        p = float(sps.wilcoxon(nonzero, method="asymptotic").pvalue)
        method = "asymptotic"
    min_p = min(1.0, 2.0 ** (1 - n))  # only "all signs alike" reaches the extreme rank sum
    if min_p > alpha_threshold:
        notes.append(f"cannot reach significance: with {n} nonzero differences the smallest "
                     f"attainable Wilcoxon p is {min_p:.3g} > {alpha_threshold:.3g}")
    out.update(statistic=min(r_plus, r_minus), p=p, method=method, min_attainable_p=min_p,
               rank_biserial=(r_plus - r_minus) / (r_plus + r_minus))
    out["notes"] = notes
    return out


# ----------------------------------------------------------------------------- the family

@dataclass
class Comparison:
    """One planned comparison `method` vs `reference` on `task`, with all its numbers.

    `test` is the primary run-level test (`run_level_test`), `p_holm`/`significant` its Holm
    result; `secondary` the conditional Wilcoxon (`wilcoxon_paired` + `p_holm` + the
    problems-only bootstrap interval `delta_conditional`); `horizon` the Δ(H) analysis.
    """

    task: str
    method: str
    reference: str
    mean: Interval
    reference_mean: Interval
    delta: Interval
    test: dict
    secondary: dict = field(default_factory=dict)
    horizon: dict | None = None
    p_holm: float | None = None
    significant: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _holm_where_defined(ps: Sequence[float | None]) -> list[float | None]:
    idx = [i for i, p in enumerate(ps) if p is not None]
    out: list[float | None] = [None] * len(ps)
    if idx:
        for i, a in zip(idx, holm_adjust([ps[i] for i in idx])):
            out[i] = float(a)
    return out


def compare_methods(tasks: Mapping[str, Mapping[str, np.ndarray]],
                    comparisons: Sequence[tuple[str, str, str]], *, n_boot: int, seed: int,
                    alpha: float = 0.05, confidence: float = 0.95,
                    horizons: Mapping[str, np.ndarray] | None = None,
                    ) -> tuple[list[Comparison], dict[str, dict[str, Interval]]]:
    """Run the whole family: run-level test per comparison, Holm over those with a p-value;
    the conditional Wilcoxon and its problems-only bootstrap as a secondary family.

    Args:
      tasks: {task: {method: [S, P] matrix}} (aligned within a task).
      comparisons: (task, method, reference) triples; the family for Holm.
      n_boot, seed: the secondary bootstrap's size and seed (pure function of the inputs).
      alpha: family-wise level.
      horizons: {task: [P] horizons}; when given every comparison gets its Δ(H) analysis, and
        the slopes are Holm-adjusted as a family of their own (`horizon["slope_p_holm"]`).

    Returns (comparisons in the given order, {task: {method: run-level Interval of its mean}}).
    """
    m = len(comparisons)
    means_by_task = {task: {mm: run_level_mean(x, confidence) for mm, x in sorted(tasks[task].items())}
                     for task in sorted(tasks)}
    cond_by_task = {}
    for task in sorted(tasks):
        pairs = sorted({(mm, r) for t, mm, r in comparisons if t == task})
        if pairs:
            _, cond_by_task[task] = crossed_bootstrap(
                tasks[task], pairs, n_boot=n_boot, rng=task_rng(seed, task), confidence=confidence,
                resample_seeds=False)
    results = []
    for task, method, ref in comparisons:
        x, y = tasks[task][method], tasks[task][ref]
        test = run_level_test(x, y, confidence=confidence)
        sec = wilcoxon_paired(x, y, alpha_threshold=alpha / max(m, 1))
        sec["delta_conditional"] = vars(cond_by_task[task][(method, ref)])
        hz = (horizon_contrasts(x, y, horizons[task], confidence=confidence)
              if horizons is not None else None)
        notes = test["notes"] + [f"Wilcoxon (secondary): {n}" for n in sec["notes"]]
        results.append(Comparison(task=task, method=method, reference=ref,
                                  mean=means_by_task[task][method],
                                  reference_mean=means_by_task[task][ref],
                                  delta=Interval(test["estimate"], test["low"], test["high"]),
                                  test=test, secondary=sec, horizon=hz,
                                  warnings=[f"{task} {method} vs {ref}: {n}" for n in notes]))
    for c, p in zip(results, _holm_where_defined([c.test["p"] for c in results])):
        c.p_holm = p
        c.significant = bool(p is not None and p < alpha)
    for c, p in zip(results, _holm_where_defined([c.secondary["p"] for c in results])):
        c.secondary["p_holm"] = p
    if horizons is not None:
        for c, p in zip(results, _holm_where_defined([c.horizon["slope_p"] for c in results])):
            c.horizon["slope_p_holm"] = p
    return results, means_by_task
