"""Point metrics of one evaluated policy: pass@k, accuracy, horizon curve, Δ_critique, taxonomy.

All functions are pure. Matrices are [S, P] = seeds × problems (see `cts.stats.data`).
Uncertainty for the headline comparisons lives in `cts.stats.inference`; the intervals here
are the simple analytic ones used for curves and secondary tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "pass_at_k",
    "mean_pass_at_k",
    "accuracy",
    "HorizonCurve",
    "horizon_curve",
    "delta_critique",
    "taxonomy_breakdown",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1).

    1 − C(n−c, k)/C(n, k), computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i) so no binomial
    coefficient is ever formed (they overflow float64 for n in the hundreds).
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer))
            and isinstance(k, (int, np.integer))):
        raise TypeError(f"pass_at_k needs ints, got n={n!r} c={c!r} k={k!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n} c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k} n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(rows: Sequence[dict], k: int) -> float | None:
    """Mean pass@k over rows (keys n_samples, n_correct); None when some row has n_samples < k."""
    if not rows or any(r["n_samples"] < k for r in rows):
        return None
    return float(np.mean([pass_at_k(r["n_samples"], r["n_correct"], k) for r in rows]))


def accuracy(correct: np.ndarray) -> float:
    """Mean greedy pass@1 of a 0/1 matrix [S, P] (equivalently: mean over seeds of per-seed accuracy)."""
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        raise ValueError("accuracy of an empty matrix")
    return float(correct.mean())


@dataclass(frozen=True)
class HorizonCurve:
    """Accuracy as a function of the reference solution's horizon H.

    Attributes:
      horizons: [K] distinct H values, ascending.
      accuracy: [K] mean of the seed-averaged correctness of the problems with that H.
      low, high: [K] 95% t-interval over those problems, clipped to [0, 1] (NaN where only one
        problem).
      n_problems: [K] problems per H.
      slope: OLS slope of seed-averaged correctness on H (accuracy change per extra step),
        None when fewer than 3 problems or fewer than 2 distinct H.
      slope_low, slope_high: its 95% t-interval (n − 2 df), None with it.
      note: why the slope is None, else "".
    """

    horizons: np.ndarray
    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_problems: np.ndarray
    slope: float | None
    slope_low: float | None
    slope_high: float | None
    note: str = ""

    def to_dict(self) -> dict:
        nan_none = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
        return {"horizons": [int(h) for h in self.horizons], "accuracy": nan_none(self.accuracy),
                "low": nan_none(self.low), "high": nan_none(self.high),
                "n_problems": [int(n) for n in self.n_problems], "slope": self.slope,
                "slope_low": self.slope_low, "slope_high": self.slope_high, "note": self.note}


def horizon_curve(correct: np.ndarray, horizons: np.ndarray, confidence: float = 0.95) -> HorizonCurve:
    """Accuracy per horizon and its linear trend.

    Args:
      correct: [S, P] 0/1 greedy correctness.
      horizons: [P] int horizon of each problem.
      confidence: interval level.

    The unit is the problem (its correctness averaged over seeds), since seeds of one problem
    are not independent observations of the trend.
    """
    correct = np.asarray(correct, dtype=float)
    horizons = np.asarray(horizons)
    if correct.ndim != 2 or correct.shape[1] != horizons.shape[0]:
        raise ValueError(f"horizon_curve: correct {correct.shape} does not match horizons {horizons.shape}")
    y = correct.mean(axis=0)  # [P]
    hs = np.unique(horizons)
    acc, lo, hi, ns = [], [], [], []
    for h in hs:
        yh = y[horizons == h]
        m = float(yh.mean())
        acc.append(m)
        ns.append(len(yh))
        if len(yh) > 1:
            half = sps.t.ppf(0.5 + confidence / 2, len(yh) - 1) * yh.std(ddof=1) / np.sqrt(len(yh))
            lo.append(max(0.0, m - half))  # accuracy is bounded: clip the symmetric interval
            hi.append(min(1.0, m + half))
        else:
            lo.append(np.nan)
            hi.append(np.nan)
    slope = slope_low = slope_high = None
    note = ""
    if len(y) < 3 or len(hs) < 2:
        note = f"slope undefined: {len(y)} problems, {len(hs)} distinct horizon(s)"
    else:
        x = horizons.astype(float)
        xc = x - x.mean()
        b = float(xc @ (y - y.mean()) / (xc @ xc))
        resid = y - y.mean() - b * xc
        se = float(np.sqrt(resid @ resid / (len(y) - 2) / (xc @ xc)))
        half = float(sps.t.ppf(0.5 + confidence / 2, len(y) - 2)) * se
        slope, slope_low, slope_high = b, b - half, b + half
    return HorizonCurve(horizons=hs, accuracy=np.array(acc), low=np.array(lo), high=np.array(hi),
                        n_problems=np.array(ns), slope=slope, slope_low=slope_low,
                        slope_high=slope_high, note=note)


def delta_critique(rows: Sequence[dict]) -> dict:
    """Δ_critique: what training on critiques changed on the problems the critiques were about.

    Restricted to rows where the base policy failed (`base_correct` false) and the teacher
    critiqued that failure (`critiqued` true). Returns
      n: such rows; solved_rate: fraction this policy now solves (None if n = 0);
      n_shift: rows where both first-error steps are known (base's and this policy's, i.e.
        still wrong); mean_first_error_shift: mean of first_error_step − base_first_error_step
        over them (positive = the first mistake now comes later; None if n_shift = 0).
    """
    sel = [r for r in rows if not r["base_correct"] and r["critiqued"]]
    shift = [r["first_error_step"] - r["base_first_error_step"] for r in sel
             if r["first_error_step"] is not None and r["base_first_error_step"] is not None]
    return {
        "n": len(sel),
        "solved_rate": float(np.mean([r["correct"] for r in sel])) if sel else None,
        "n_shift": len(shift),
        "mean_first_error_shift": float(np.mean(shift)) if shift else None,
    }


def taxonomy_breakdown(rows: Sequence[dict]) -> dict[str, dict]:
    """Per error tag of the base failure: {tag: {"n": rows, "solved_rate": fraction now correct}}.

    Only rows where the base failed and carry a tag; tags sorted for deterministic output.
    """
    by_tag: dict[str, list[bool]] = {}
    for r in rows:
        if not r["base_correct"] and r["taxonomy"] is not None:
            by_tag.setdefault(r["taxonomy"], []).append(r["correct"])
    return {t: {"n": len(v), "solved_rate": float(np.mean(v))} for t, v in sorted(by_tag.items())}
