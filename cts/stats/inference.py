"""Paired inference between methods evaluated on the same seeds and problems.

Design: within a task every method is evaluated on the same S training seeds and the same
P test problems, so seeds and problems are *crossed* random factors and every comparison is
paired by (seed, problem).

Bootstrap (`crossed_bootstrap`): each replicate resamples seed indices with replacement
(S of S) and, independently, problem ids with replacement (P of P); the same two index
draws are applied to every method of the task, so Δ intervals are paired. A replicate's
statistic is the mean over the resampled seeds × resampled problems, computed exactly as
w_seedᵀ X w_problem with multiplicity weights. Percentile intervals. With S = 1 the seed
factor cannot be resampled and the interval reflects problem sampling only (a warning says so).

Test (`wilcoxon_paired`): Wilcoxon signed-rank on the per-problem differences averaged over
seeds, d_p = mean_s(X[s, p] − Y[s, p]), through `scipy.stats.wilcoxon(d, zero_method="wilcox",
method="auto")`. zero_method="wilcox" (Wilcoxon's original rule) drops problems with d_p = 0:
problems both methods solve (or fail) equally often say nothing about the direction of the
difference, and keeping them ("pratt"/"zsplit") changes the statistic's null distribution
without adding evidence. The effective sample size is the number of nonzero d_p, reported.
scipy's "auto" is exact without ties/zeros for n ≤ 50, an exhaustive (deterministic) sign-flip
permutation for n ≤ 13 with ties or zeros, and the normal approximation otherwise.

Multiplicity: Holm step-down over the whole family of planned comparisons (`holm_adjust`,
equal to statsmodels `multipletests(method="holm")`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

__all__ = [
    "ZERO_METHOD",
    "Interval",
    "crossed_bootstrap_weights",
    "crossed_bootstrap",
    "wilcoxon_paired",
    "holm_adjust",
    "Comparison",
    "compare_methods",
    "task_rng",
]

ZERO_METHOD = "wilcox"
MIN_PROBLEMS = 10  # below this a per-problem test has almost no power; warn
_CHUNK = 512  # bootstrap replicates per block: bounds memory at _CHUNK × (S + P) floats


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


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
                      ) -> tuple[dict[str, Interval], dict[tuple[str, str], Interval]]:
    """Means of each method and paired differences, with shared-index percentile intervals.

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


def _scipy_method(d: np.ndarray) -> str:
    """Which null distribution scipy's method="auto" uses for these differences."""
    nz = np.abs(d[d != 0])
    has_ties = len(np.unique(nz)) < len(nz)
    if len(d) <= 50 and not has_ties and not np.any(d == 0):
        return "exact"
    if len(d) <= 13:
        return "permutation"
    return "asymptotic"


def wilcoxon_paired(x: np.ndarray, y: np.ndarray, *, alpha_threshold: float = 0.05) -> dict:
    """Wilcoxon signed-rank test and effect sizes for method x vs reference y.

    Args:
      x, y: [S, P] aligned 0/1 (or real) matrices.
      alpha_threshold: the level this test must reach to count (α/m under worst-case Holm);
        used only for the "cannot reach" warning.

    Returns a dict: n_problems, n_nonzero, mean_delta (mean of d_p), statistic (scipy's
    min(R+, R−), None if all d_p = 0), p, scipy_method, min_attainable_p, rank_biserial
    ((R+ − R−)/(R+ + R−) over nonzero d_p), cohens_dz (mean/sd of d_p, ddof=1; None if sd = 0),
    notes (list of strings).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"wilcoxon_paired: shapes {x.shape} and {y.shape} must be equal and 2-D")
    n_seeds, n_problems = x.shape
    d = (x - y).sum(axis=0) / n_seeds  # [P]; sum first so equal integer sums give equal floats
    nonzero = d[d != 0]
    notes = []
    if n_seeds < 2:
        notes.append("1 seed: training-seed variance is not captured by the test or the CI")
    if n_problems < MIN_PROBLEMS:
        notes.append(f"only {n_problems} problems (< {MIN_PROBLEMS}): the test has little power")
    sd = float(d.std(ddof=1)) if n_problems > 1 else 0.0
    out = {"n_problems": n_problems, "n_seeds": n_seeds, "n_nonzero": int(len(nonzero)),
           "mean_delta": float(d.mean()), "cohens_dz": float(d.mean() / sd) if sd > 0 else None,
           "zero_method": ZERO_METHOD}
    if len(nonzero) == 0:
        notes.append("all per-problem differences are zero: p set to 1, no test run")
        out.update(statistic=None, p=1.0, scipy_method=None, min_attainable_p=1.0, rank_biserial=None)
        out["notes"] = notes
        return out
    res = sps.wilcoxon(d, zero_method=ZERO_METHOD, method="auto")
    # the most extreme data with the same zeros/ties pattern: every nonzero difference positive
    min_p = float(sps.wilcoxon(np.abs(d), zero_method=ZERO_METHOD, method="auto").pvalue)
    ranks = sps.rankdata(np.abs(nonzero))
    r_plus, r_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
    if min_p > alpha_threshold:
        notes.append(f"cannot reach significance: with {len(nonzero)} nonzero differences the "
                     f"smallest attainable p is {min_p:.3g} > {alpha_threshold:.3g}")
    out.update(statistic=float(res.statistic), p=float(res.pvalue), scipy_method=_scipy_method(d),
               min_attainable_p=min_p, rank_biserial=(r_plus - r_minus) / (r_plus + r_minus))
    out["notes"] = notes
    return out


@dataclass
class Comparison:
    """One planned comparison `method` vs `reference` on `task`, with all its numbers."""

    task: str
    method: str
    reference: str
    mean: Interval
    reference_mean: Interval
    delta: Interval
    test: dict
    p_holm: float | None = None
    significant: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_methods(tasks: Mapping[str, Mapping[str, np.ndarray]],
                    comparisons: Sequence[tuple[str, str, str]], *, n_boot: int, seed: int,
                    alpha: float = 0.05, confidence: float = 0.95,
                    ) -> tuple[list[Comparison], dict[str, dict[str, Interval]]]:
    """Run the whole family: bootstrap per task, Wilcoxon per comparison, Holm over all.

    Args:
      tasks: {task: {method: [S, P] matrix}} (aligned within a task).
      comparisons: (task, method, reference) triples; the family for Holm.
      n_boot, seed: bootstrap size and seed (results are a pure function of the inputs).
      alpha: family-wise level.

    Returns (comparisons in the given order, {task: {method: Interval of its mean}}).
    """
    m = len(comparisons)
    means_by_task, deltas_by_task = {}, {}
    for task in sorted(tasks):
        pairs = sorted({(mm, r) for t, mm, r in comparisons if t == task})
        means_by_task[task], deltas_by_task[task] = crossed_bootstrap(
            tasks[task], pairs, n_boot=n_boot, rng=task_rng(seed, task), confidence=confidence)
    results = []
    for task, method, ref in comparisons:
        test = wilcoxon_paired(tasks[task][method], tasks[task][ref],
                               alpha_threshold=alpha / max(m, 1))
        results.append(Comparison(task=task, method=method, reference=ref,
                                  mean=means_by_task[task][method],
                                  reference_mean=means_by_task[task][ref],
                                  delta=deltas_by_task[task][(method, ref)], test=test,
                                  warnings=[f"{task} {method} vs {ref}: {n}" for n in test["notes"]]))
    if results:
        adj = holm_adjust([c.test["p"] for c in results])
        for c, p in zip(results, adj):
            c.p_holm = float(p)
            c.significant = bool(p < alpha)
    return results, means_by_task
