"""Power of the primary run-level test (`cts.stats.inference.run_level_test`) and power.md.

Model of the paired differences D[s, p] = x − y of one comparison (accuracy units), the one
the test's variance estimates:

    D[s, p] = δ + a_s + u_p + e_{s,p}
    Var(a_s) = 2·sd_run²     two independent training runs (one per method), each with a
                             run-level accuracy sd of sd_run
    Var(u_p) = sd_problem²   persistent method × problem effects (τ)
    Var(e)   = sd_cell²      what is left in one (seed, problem) cell

so the estimate of δ (the grand mean) has variance

    V = (2·sd_run² + sd_cell²/P)/S + sd_problem²/P,

and the test is a t-test with Welch–Satterthwaite df between S − 1 (the run-level part) and
P − 1 (the problem part). Power at δ, two-sided level α/m (the worst-case Holm threshold for m
planned comparisons): P(|T| > t_crit) with T noncentral t, noncentrality δ/√V (by quadrature over χ²). The MDE solves
power = 0.8. `simulate_power` checks it by running the real test on simulated data. More seeds
shrink only the first term: with sd_problem > 0 there is a floor that only more test problems
lower, and below MIN_SEEDS_FOR_TEST seeds there is no test at all.

Prior (no pilot), stated so a reader can disagree with it:
  sd_run = 0.02     a seed sd of 0.1 on the logit scale at accuracy 0.3–0.5 (logistic slope
                    0.21–0.25): the milder of the issue-15 scenarios; 0.3 logit would be ≈ 0.06.
  sd_cell = 0.5     one cell's paired difference of two pass/fail outcomes (0.67 for greedy at
                    accuracy 0.35; less for sampled pass@1 over 4 samples).
  sd_problem = 0.05 methods fine-tuned from one base policy for 30 steps move most problems
                    alike; a 5-point sd of persistent per-problem differences.
With pilot eval files the three are estimated by the same decomposition the test uses
(`estimate_sd_components`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

from cts.io import DataError, atomic_write_text
from cts.stats.data import is_ablation, read_eval_files, task_matrices
from cts.stats.inference import MIN_SEEDS_FOR_TEST, run_level_contrast

__all__ = [
    "DEFAULT_SD_RUN",
    "DEFAULT_SD_CELL",
    "DEFAULT_SD_PROBLEM",
    "TARGET_DELTA",
    "estimate_variance",
    "power_of_test",
    "minimum_detectable_effect",
    "seeds_needed",
    "simulate_power",
    "estimate_sd_components",
    "plan_comparisons",
    "plan_mde",
    "write_power_report",
]

DEFAULT_SD_RUN = 0.02
DEFAULT_SD_CELL = 0.5
DEFAULT_SD_PROBLEM = 0.05
TARGET_DELTA = 0.03  # the 3-point difference the seed count is planned for
MAX_SEEDS = 200  # seeds_needed gives up beyond this
PLAN_KEYS = ("tasks", "methods", "base", "ablation_base", "ablations", "seeds", "n_test_problems")


def estimate_variance(n_seeds: int, n_problems: int, *, sd_run: float = DEFAULT_SD_RUN,
                  sd_cell: float = DEFAULT_SD_CELL, sd_problem: float = DEFAULT_SD_PROBLEM,
                  ) -> tuple[float, float]:
    """(V, df): the variance of Δ̂ under the module's model and the test's Satterthwaite df."""
    if n_seeds < 2 or n_problems < 2:
        raise ValueError(f"estimate_variance: need n_seeds >= 2 and n_problems >= 2, got {n_seeds}, {n_problems}")
    if min(sd_run, sd_cell, sd_problem) < 0:
        raise ValueError("estimate_variance: sds must be >= 0")
    v_run = (2 * sd_run**2 + sd_cell**2 / n_problems) / n_seeds
    v_prob = sd_problem**2 / n_problems
    v = v_run + v_prob
    if v == 0:
        return 0.0, float(n_seeds - 1)
    df = v**2 / (v_run**2 / (n_seeds - 1) + v_prob**2 / (n_problems - 1))
    return v, float(df)


@functools.lru_cache(maxsize=65536)
def _chi2_midpoints(df: float) -> np.ndarray:
    return sps.chi2.ppf((np.arange(2000) + 0.5) / 2000, df)


def power_of_test(delta: float, n_seeds: int, n_problems: int, *, alpha: float = 0.05,
                  n_comparisons: int = 1, **sds) -> float:
    """Power of the two-sided run-level test at level alpha/n_comparisons (noncentral t)."""
    if n_seeds < MIN_SEEDS_FOR_TEST:
        return 0.0  # no p-value is reported below MIN_SEEDS_FOR_TEST seeds
    v, df = estimate_variance(n_seeds, n_problems, **sds)
    if v == 0:
        return float(delta != 0)
    crit = sps.t.ppf(1 - alpha / (2 * n_comparisons), df)
    nc = abs(delta) / math.sqrt(v)
    # noncentral t tails as E_W[Φ(±nc − crit·√(W/df))], W ~ χ²_df on 2000 quantile midpoints
    # (scipy's nct returns NaN for the small df and large noncentralities met here)
    w = _chi2_midpoints(df)
    scale = crit * np.sqrt(w / df)
    return float(np.mean(sps.norm.cdf(nc - scale) + sps.norm.cdf(-nc - scale)))


def minimum_detectable_effect(n_seeds: int, n_problems: int, *, alpha: float = 0.05,
                              n_comparisons: int = 1, power: float = 0.8, **sds) -> float | None:
    """Smallest |δ| the run-level test detects with probability `power` (accuracy units).

    None below MIN_SEEDS_FOR_TEST seeds (no test) or when every sd is 0 (no variance).
    """
    if n_seeds < 1 or n_problems < 2 or n_comparisons < 1:
        raise ValueError(f"need n_seeds >= 1, n_problems >= 2, n_comparisons >= 1, got "
                         f"{n_seeds}, {n_problems}, {n_comparisons}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("need 0 < alpha < 1, 0 < power < 1")
    if n_seeds < MIN_SEEDS_FOR_TEST:
        return None
    v, _ = estimate_variance(n_seeds, n_problems, **sds)
    if v == 0:
        return None
    f = lambda d: power_of_test(d, n_seeds, n_problems, alpha=alpha, n_comparisons=n_comparisons, **sds) - power  # noqa: E731
    hi = math.sqrt(v)
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-7))


def seeds_needed(delta: float, n_problems: int, *, alpha: float = 0.05, n_comparisons: int = 1,
                 power: float = 0.8, **sds) -> int | None:
    """Fewest seeds whose test reaches `power` at `delta`; None if not within MAX_SEEDS (the
    problem term's floor, sd_problem/√P, is then too high: more problems are needed).
    Bisection: power grows with S (V shrinks and df grows)."""
    ok = lambda s: power_of_test(delta, s, n_problems, alpha=alpha, n_comparisons=n_comparisons,  # noqa: E731
                                 **sds) >= power
    lo, hi = MIN_SEEDS_FOR_TEST, MAX_SEEDS
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def simulate_power(delta: float, *, n_seeds: int, n_problems: int, sd_run: float = DEFAULT_SD_RUN,
                   sd_cell: float = DEFAULT_SD_CELL, sd_problem: float = DEFAULT_SD_PROBLEM,
                   alpha: float = 0.05, n_comparisons: int = 1, n_sim: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo power of the real run-level test (`run_level_contrast`, vectorised) on
    Gaussian data from the module's model."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, math.sqrt(2) * sd_run, (n_sim, n_seeds, 1))
    u = rng.normal(0, sd_problem, (n_sim, 1, n_problems))
    e = rng.normal(0, sd_cell, (n_sim, n_seeds, n_problems))
    r = run_level_contrast(delta + a + u + e, np.full(n_problems, 1.0 / n_problems),
                           np.ones((n_problems, 1)))
    return float(np.mean(np.nan_to_num(r["p"], nan=1.0) < alpha / n_comparisons))


def estimate_sd_components(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float, float, str]:
    """Estimate (sd_run, sd_cell, sd_problem) from a pilot's aligned [S, P] matrices.

    The decomposition of `run_level_contrast`: sd_cell² = MS_E (seeds × problems residual);
    sd_problem² = max(0, Var_p(mean_s D) − MS_E/S); 2·sd_run² = max(0, Var_s(mean_p D) − MS_E/P).
    With 1 seed sd_run and the split cannot be estimated: sd_run is None, all of the
    per-problem variance is put in sd_cell and sd_problem is 0 (the note says so).
    Returns (sd_run, sd_cell, sd_problem, note).
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    s, p = d.shape
    if p < 2:
        raise ValueError(f"estimate_sd_components: need >= 2 problems, got {p}")
    if s < 2:
        return None, float(d[0].std(ddof=1)), 0.0, "1 pilot seed: run-level sd not estimable"
    inter = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    ms_e = float((inter**2).sum() / ((s - 1) * (p - 1)))
    var_run2 = max(0.0, float(d.mean(axis=1).var(ddof=1)) - ms_e / p)
    tau2 = max(0.0, float(d.mean(axis=0).var(ddof=1)) - ms_e / s)
    return math.sqrt(var_run2 / 2), math.sqrt(ms_e), math.sqrt(tau2), f"pilot: {s} seeds × {p} problems"


def _check_plan(plan: Mapping) -> None:
    missing = [k for k in PLAN_KEYS if k not in plan]
    if missing:
        raise DataError(f"power plan: missing key(s) {missing}")
    for k in ("tasks", "methods", "ablations", "seeds"):
        if not isinstance(plan[k], (list, tuple)):
            raise DataError(f"power plan: {k!r} must be a list, got {plan[k]!r}")
    for t in plan["tasks"]:
        n = plan["n_test_problems"].get(t)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DataError(f"power plan: n_test_problems[{t!r}] must be an int >= 1, got {n!r}")
    if plan["base"] not in plan["methods"]:
        raise DataError(f"power plan: base {plan['base']!r} not in methods {plan['methods']}")
    if plan["ablations"] and plan["ablation_base"] not in plan["methods"]:
        raise DataError(f"power plan: ablation_base {plan['ablation_base']!r} not in methods")
    if not plan["seeds"]:
        raise DataError("power plan: 'seeds' is empty")


def plan_comparisons(plan: Mapping) -> list[tuple[str, str, str]]:
    """The family of planned (task, method, reference) comparisons, in a fixed order.

    Every non-ablation method other than the base vs the base; every ablation vs the ablation
    base, on the tasks in `ablation_tasks` (all tasks when the plan has no such key). Task order
    and method order as given in the plan.
    """
    _check_plan(plan)
    out = []
    ablation_tasks = plan.get("ablation_tasks", plan["tasks"])
    for t in plan["tasks"]:
        out += [(t, m, plan["base"]) for m in plan["methods"] if m != plan["base"] and not is_ablation(m)]
        if t in ablation_tasks:
            out += [(t, a, plan["ablation_base"]) for a in plan["ablations"]]
    return out


def _pilot_components(pilot_eval_files: Sequence[str]) -> dict[tuple[str, str, str], tuple]:
    rows = read_eval_files(pilot_eval_files)
    out = {}
    for task in sorted({r["task"] for r in rows}):
        tm = task_matrices(rows, task)
        for m in tm.methods:
            for r in tm.methods:
                if m != r and len(tm.problem_ids) >= 2:
                    out[(task, m, r)] = estimate_sd_components(tm.correct[m], tm.correct[r])
    return out


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(float(np.mean(np.square(values))))


def plan_mde(plan: Mapping, pilot_eval_files: Sequence[str | os.PathLike] = (), *, alpha: float = 0.05,
             power: float = 0.8, target_delta: float = TARGET_DELTA) -> list[dict]:
    """MDE and seeds needed for `target_delta` of every planned comparison.

    Variance: the pilot's estimate for the same pair on the same task; else the pooled (root-
    mean-square) estimate over the task's pilot pairs; else the documented prior. A pilot
    with 1 seed gives no sd_run: the prior's is used. Returns one dict per comparison.
    """
    comps = plan_comparisons(plan)
    pilot = _pilot_components([os.fspath(p) for p in pilot_eval_files]) if pilot_eval_files else {}
    n_seeds = len(plan["seeds"])
    out = []
    for task, method, ref in comps:
        if (task, method, ref) in pilot:
            sd_run, sd_cell, sd_problem, src = pilot[(task, method, ref)]
        elif any(k[0] == task for k in pilot):
            comp = [v for k, v in pilot.items() if k[0] == task]
            runs = [c[0] for c in comp if c[0] is not None]
            sd_run = _rms(runs) if runs else None
            sd_cell, sd_problem = _rms([c[1] for c in comp]), _rms([c[2] for c in comp])
            src = f"pilot, pooled over {len(comp)} pairs of {task}"
        else:
            sd_run, sd_cell, sd_problem, src = DEFAULT_SD_RUN, DEFAULT_SD_CELL, DEFAULT_SD_PROBLEM, "prior"
        if sd_run is None:
            sd_run, src = DEFAULT_SD_RUN, src + " (sd_run: prior)"
        n_p = plan["n_test_problems"][task]
        sds = dict(sd_run=sd_run, sd_cell=sd_cell, sd_problem=sd_problem)
        kw = dict(alpha=alpha, n_comparisons=len(comps), power=power)
        out.append({"task": task, "method": method, "reference": ref, "n_seeds": n_seeds,
                    "n_problems": n_p, **sds, "sd_source": src, "n_comparisons": len(comps),
                    "mde": minimum_detectable_effect(n_seeds, n_p, **kw, **sds) if n_p >= 2 else None,
                    "target_delta": target_delta,
                    "seeds_needed": seeds_needed(target_delta, n_p, **kw, **sds) if n_p >= 2 else None})
    return out


def _fmt_mde(mde: float | None, n_seeds: int) -> str:
    if mde is None:
        return f"no test (< {MIN_SEEDS_FOR_TEST} seeds)" if n_seeds < MIN_SEEDS_FOR_TEST else "no variance"
    return f"{mde:.3f}" if mde < 1 else f"{mde:.3f} (undetectable: > 1)"


def write_power_report(plan: dict, out_md: str | os.PathLike,
                       pilot_eval_files: Sequence[str | os.PathLike] = (), *, alpha: float = 0.05,
                       target_delta: float = TARGET_DELTA) -> list[dict]:
    """Write power.md atomically: the MDE of every planned comparison with the configured seeds,
    the seeds each needs for 80% power at `target_delta` after Holm, and how both depend on the
    variance assumptions. Returns the per-comparison rows."""
    rows = plan_mde(plan, pilot_eval_files, alpha=alpha, target_delta=target_delta)
    m = len(rows)
    n_seeds = len(plan["seeds"])
    lines = [
        "# Power of the planned comparisons",
        "",
        f"Test: the table's primary test, a run-level paired t (unit: training seed; two-way "
        f"seeds × problems variance; cts/stats/inference.py), two-sided at 0.05/{m} = {alpha / m:.4g} "
        f"(the worst-case Holm threshold over the {m} planned comparisons), 80% power, noncentral t "
        f"(cts/stats/power.py). Var(Δ̂) = (2·sd_run² + sd_cell²/P)/S + sd_problem²/P: sd_run is one "
        f"training run's accuracy sd between seeds, sd_cell one (seed, problem) cell's noise, "
        f"sd_problem the persistent per-problem method differences. Prior (no pilot): sd_run = "
        f"{DEFAULT_SD_RUN}, sd_cell = {DEFAULT_SD_CELL}, sd_problem = {DEFAULT_SD_PROBLEM} "
        f"(reasons in cts/stats/power.py).",
        "",
        f"| Comparison | Task | seeds | problems | sd_run, sd_cell, sd_problem | sd source | MDE | seeds for {target_delta:g} |",
        "|---|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        need = r["seeds_needed"]
        lines.append(f"| {r['method']} vs {r['reference']} | {r['task']} | {r['n_seeds']} | "
                     f"{r['n_problems']} | {r['sd_run']:.3f}, {r['sd_cell']:.3f}, {r['sd_problem']:.3f} | "
                     f"{r['sd_source']} | {_fmt_mde(r['mde'], r['n_seeds'])} | "
                     f"{need if need is not None else f'> {MAX_SEEDS}'} |")
    if rows:
        # sensitivity: the configured matrix's smallest task, the prior's sd_cell
        n_p = min(r["n_problems"] for r in rows)
        kw = dict(alpha=alpha, n_comparisons=m, sd_cell=DEFAULT_SD_CELL)
        grid_s = [3, 5, 10, 20]
        lines += ["", f"## How the answer depends on the assumptions ({n_p} problems, Holm over {m})", "",
                  f"MDE at S seeds, and seeds for 80% power at Δ = {target_delta:g} (sd_cell = {DEFAULT_SD_CELL}):",
                  "",
                  "| sd_run | sd_problem | " + " | ".join(f"MDE, {s} seeds" for s in grid_s)
                  + f" | seeds for {target_delta:g} |",
                  "|---:|---:|" + "---:|" * (len(grid_s) + 1)]
        for sd_run in (0.01, 0.02, 0.05):
            for sd_problem in (0.0, 0.05, 0.1):
                mdes = [minimum_detectable_effect(s, n_p, sd_run=sd_run, sd_problem=sd_problem, **kw)
                        for s in grid_s]
                need = seeds_needed(target_delta, n_p, sd_run=sd_run, sd_problem=sd_problem, **kw)
                lines.append(f"| {sd_run:g} | {sd_problem:g} | " + " | ".join(_fmt_mde(x, 3) for x in mdes)
                             + f" | {need if need is not None else f'> {MAX_SEEDS}'} |")
        lines += ["", f"With {n_seeds} seed(s) configured: "
                  + (f"no p-value is reported (fewer than {MIN_SEEDS_FOR_TEST} seeds); the table shows "
                     "Δ with its interval only." if n_seeds < MIN_SEEDS_FOR_TEST else
                     f"the test runs; under the prior it resolves differences of about "
                     f"{max(r['mde'] for r in rows if r['mde'] is not None):.2f} and larger.")
                  + " A floor sd_problem/√P does not shrink with seeds: where 'seeds for' exceeds "
                  f"{MAX_SEEDS}, only more test problems help."]
        one = seeds_needed(target_delta, n_p, alpha=alpha, n_comparisons=1, sd_run=DEFAULT_SD_RUN,
                           sd_cell=DEFAULT_SD_CELL, sd_problem=DEFAULT_SD_PROBLEM)
        lines += ["", f"For a single pre-registered comparison (no Holm), {target_delta:g} under the "
                  f"prior needs {one if one is not None else f'> {MAX_SEEDS}'} seeds."]
    atomic_write_text(out_md, "\n".join(lines) + "\n")
    return rows
