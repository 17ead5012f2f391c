"""Simulated paired evaluations with known truth, to calibrate the table's inference.

Generative model (logit scale), for methods A and B, seeds s = 1..S, problems p = 1..P:

    logit P(correct) = μ + b_p + a_{m,s} + c_{m,p} + δ·[m = A]
    b_p ~ N(0, sd_problem²)       problem difficulty, shared by the methods
    a_{m,s} ~ N(0, sd_seed²)       one training run's effect (independent per method and seed)
    c_{m,p} ~ N(0, sd_interaction²) persistent method × problem effect
    outcome = Binomial(n_samples, P(correct)) / n_samples   (n_samples = 1: greedy 0/1)

The true Δ = E[acc_A] − E[acc_B] over problems and runs is
E[σ(μ + δ + σ_tot Z)] − E[σ(μ + σ_tot Z)], σ_tot² = sd_problem² + sd_seed² + sd_interaction²,
computed by Gauss–Hermite quadrature (`true_delta`). `calibrate` runs a test on many
simulated data sets at once (the primary run-level test fully vectorised) and returns its
rejection rate at δ = 0 (type-I error) and its CI's coverage of the true Δ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from scipy.special import expit

from cts.stats.inference import (crossed_bootstrap, run_level_contrast, task_rng)

__all__ = ["simulate_paired", "true_delta", "calibrate", "TESTS", "calibration_table"]

TESTS = ("run_level", "wilcoxon_problems")  # the primary test; the table's former test


def true_delta(delta_logit: float, *, base_logit: float, sd_total: float) -> float:
    """E[σ(μ + δ + sd·Z)] − E[σ(μ + sd·Z)], Z ~ N(0, 1), by 80-node Gauss–Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    return float(w @ (expit(base_logit + delta_logit + sd_total * z) - expit(base_logit + sd_total * z)))


def simulate_paired(rng: np.random.Generator, *, n_reps: int, n_seeds: int, n_problems: int,
                    delta_logit: float = 0.0, base_logit: float = -0.5, sd_problem: float = 1.0,
                    sd_seed: float = 0.0, sd_interaction: float = 0.0, n_samples: int = 1,
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw `n_reps` independent paired evaluations.

    Returns (a [R, S, P], b [R, S, P], true Δ = E[a] − E[b]); a has the effect δ.
    """
    if n_reps < 1 or n_seeds < 1 or n_problems < 1 or n_samples < 1:
        raise ValueError("simulate_paired: need n_reps, n_seeds, n_problems, n_samples >= 1")
    shape = (n_reps, n_seeds, n_problems)
    b_p = rng.normal(0, sd_problem, (n_reps, 1, n_problems))
    out = []
    for eff in (delta_logit, 0.0):
        a_s = rng.normal(0, sd_seed, (n_reps, n_seeds, 1))
        c_p = rng.normal(0, sd_interaction, (n_reps, 1, n_problems))
        prob = expit(base_logit + b_p + a_s + c_p + eff)
        out.append(rng.binomial(n_samples, np.broadcast_to(prob, shape)) / n_samples)
    sd_total = math.sqrt(sd_problem**2 + sd_seed**2 + sd_interaction**2)
    return out[0], out[1], true_delta(delta_logit, base_logit=base_logit, sd_total=sd_total)


def _old_wilcoxon_reject(a, b, alpha):
    """The table's former test, as it ran: scipy wilcoxon on seed-averaged d_p, zeros dropped,
    method "auto" (normal approximation above 50 problems, counted with the zeros)."""
    d = (a - b).mean(axis=1)  # [R, P]
    p = np.array([sps.wilcoxon(row, zero_method="wilcox").pvalue if np.any(row) else 1.0 for row in d])
    return p < alpha


def _old_bootstrap_cover(a, b, truth, n_boot, seed, confidence):
    """The table's former Δ interval: crossed (seeds × problems) percentile bootstrap."""
    hits = []
    for i in range(a.shape[0]):
        _, dl = crossed_bootstrap({"a": a[i], "b": b[i]}, [("a", "b")], n_boot=n_boot,
                                  rng=task_rng(seed + i, "calibration"), confidence=confidence)
        iv = dl[("a", "b")]
        hits.append(iv.low <= truth <= iv.high)
    return np.array(hits)


def calibrate(test: str, *, n_reps: int, n_seeds: int, n_problems: int = 160, sd_seed: float,
              delta_logit: float = 0.4, sd_problem: float = 1.0, sd_interaction: float = 0.0,
              base_logit: float = -0.5, n_samples: int = 1, alpha: float = 0.05,
              confidence: float = 0.95, seed: int = 0, n_boot: int = 1000) -> dict:
    """Type-I error (data with δ = 0) and CI coverage (data with δ = delta_logit) of one test.

    Args:
      test: "run_level" (primary: its t-test and t-interval) or "wilcoxon_problems" (the former
        table: Wilcoxon over problems + crossed bootstrap interval; slow, not vectorised).
      The rest: the generator's parameters (`simulate_paired`), the level and the repetitions.

    Returns {test, n_seeds, n_problems, sd_seed, n_reps, type1, coverage, mc_se} where mc_se is
    the Monte-Carlo standard error of a rate of 0.05.
    """
    if test not in TESTS:
        raise ValueError(f"calibrate: test must be one of {TESTS}, got {test!r}")
    rng = np.random.default_rng([seed, n_seeds, n_problems, int(round(sd_seed * 1000)), TESTS.index(test)])
    kw = dict(n_reps=n_reps, n_seeds=n_seeds, n_problems=n_problems, base_logit=base_logit,
              sd_problem=sd_problem, sd_seed=sd_seed, sd_interaction=sd_interaction, n_samples=n_samples)
    a0, b0, _ = simulate_paired(rng, delta_logit=0.0, **kw)
    a1, b1, truth = simulate_paired(rng, delta_logit=delta_logit, **kw)
    if test == "run_level":
        w, g = np.full(n_problems, 1.0 / n_problems), np.ones((n_problems, 1))
        r0 = run_level_contrast(a0 - b0, w, g, confidence=confidence)
        r1 = run_level_contrast(a1 - b1, w, g, confidence=confidence)
        type1 = float(np.mean(np.nan_to_num(r0["p"], nan=1.0) < alpha))
        coverage = float(np.mean((r1["low"] <= truth) & (truth <= r1["high"])))
    else:
        type1 = float(np.mean(_old_wilcoxon_reject(a0, b0, alpha)))
        coverage = float(np.mean(_old_bootstrap_cover(a1, b1, truth, n_boot, seed, confidence)))
    return {"test": test, "n_seeds": n_seeds, "n_problems": n_problems, "sd_seed": sd_seed,
            "sd_interaction": sd_interaction, "n_samples": n_samples, "n_reps": n_reps, "true_delta": truth,
            "type1": type1, "coverage": coverage, "mc_se": math.sqrt(0.05 * 0.95 / n_reps)}


def calibration_table(rows: Sequence[dict]) -> str:
    """Markdown table of `calibrate` results, one row per case, tests side by side."""
    case = lambda r: (r["n_seeds"], r["sd_seed"], r["sd_interaction"], r.get("n_samples", 1))  # noqa: E731
    keys = sorted({case(r) for r in rows})
    tests = [t for t in TESTS if any(r["test"] == t for r in rows)]
    head = "| seeds | seed sd (logit) | interaction sd | samples | " + " | ".join(
        f"{t}: type-I | {t}: coverage" for t in tests) + " |"
    lines = [head, "|" + "---:|" * (4 + 2 * len(tests))]
    for k in keys:
        cells = []
        for t in tests:
            r = next((r for r in rows if r["test"] == t and case(r) == k), None)
            cells += ["—", "—"] if r is None else [f"{r['type1']:.3f}", f"{r['coverage']:.3f}"]
        lines.append(f"| {k[0]} | {k[1]:g} | {k[2]:g} | {k[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m cts.stats.simulate [--reps N] [--out FILE]`: the calibration table of the primary
    test and of the former one, side by side (160 problems, seeds 2/3/5, seed sd 0/0.1/0.3, and
    three cases with method × problem effects)."""
    import argparse

    from cts.io import atomic_write_text

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cases = [*((s, sd, 0.0, 1) for s in (2, 3, 5) for sd in (0.0, 0.1, 0.3)),
             *((s, 0.1, 0.5, 1) for s in (2, 3, 5)),
             *((s, 0.3, 0.5, 16) for s in (2, 3, 5))]  # the hardest: sampled outcomes, little cell noise
    rows = [calibrate(t, n_reps=args.reps, n_seeds=s, sd_seed=sd, sd_interaction=si, n_samples=ns,
                      n_boot=args.n_boot) for t in TESTS for s, sd, si, ns in cases]
    text = (f"Calibration: {args.reps} simulated data sets per cell, 160 problems, difficulty sd 1 "
            "(logit), 0/1 outcomes (samples = 1) or pass@1 over 16 samples; type-I error at nominal 0.05 (true Δ = 0) and coverage of "
            "the true Δ by the nominal 95% interval (δ = 0.4 logit); interaction sd = persistent "
            "method × problem effects. run_level = the table's primary "
            "test and interval; wilcoxon_problems = the former table (per-problem Wilcoxon, crossed "
            f"seeds × problems bootstrap, n_boot = {args.n_boot}).\n\n" + calibration_table(rows) + "\n")
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
