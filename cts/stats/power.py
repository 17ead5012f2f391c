"""Minimum detectable effect (MDE) of the paired per-problem comparison, and the power report.

Model of the tested quantity (see `cts.stats.inference`): for problem p the seed-averaged
difference is d_p = δ + u_p + mean_s e_{s,p}, with u_p ~ (0, τ²) the problem's persistent
effect (sd_between = τ) and e_{s,p} ~ (0, σ_w²) the seed-to-seed noise of one training run's
difference (sd_within = σ_w). So Var d_p = τ² + σ_w²/S, and more seeds shrink only σ_w.

Analytic MDE at power 1 − β, two-sided level α/m (the worst-case Holm threshold for m planned
comparisons), for the Wilcoxon signed-rank test via its asymptotic relative efficiency
ARE = 3/π against the one-sample test under normal errors:

    MDE = (t_{1−α/(2m), P−1} + t_{1−β, P−1}) · sqrt(τ² + σ_w²/S) / sqrt(P · ARE).

The normal approximation uses t quantiles (P − 1 df) instead of z: with z the simulated power
at the MDE came out 0.71–0.79 for P = 15–100 (1000 simulations each); with t, 0.78–0.81.

Default variance assumption (no pilot): τ = σ_w = 0.5, i.e. a single-seed difference of two
pass/fail outcomes has variance τ² + σ_w² = 0.5 — the largest possible for two independent
Bernoulli(½) outcomes — split equally between persistent problem effects and seed noise.
With pilot eval files the two components are estimated from the observed per-problem
differences (`estimate_sd_components`). `simulate_power` checks the formula by simulation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from cts.io import DataError, atomic_write_text
from cts.stats.data import is_ablation, read_eval_files, task_matrices

__all__ = [
    "DEFAULT_SD_BETWEEN",
    "DEFAULT_SD_WITHIN",
    "WILCOXON_ARE",
    "minimum_detectable_effect",
    "simulate_power",
    "estimate_sd_components",
    "plan_comparisons",
    "plan_mde",
    "write_power_report",
]

DEFAULT_SD_BETWEEN = 0.5
DEFAULT_SD_WITHIN = 0.5
WILCOXON_ARE = 3 / math.pi  # Wilcoxon vs t/z under normal errors (≈ 0.955)
PLAN_KEYS = ("tasks", "methods", "base", "ablation_base", "ablations", "seeds", "n_test_problems")


def minimum_detectable_effect(n_seeds: int, n_problems: int, *, sd_between: float = DEFAULT_SD_BETWEEN,
                              sd_within: float = DEFAULT_SD_WITHIN, alpha: float = 0.05,
                              n_comparisons: int = 1, power: float = 0.8,
                              are: float = WILCOXON_ARE) -> float:
    """Smallest true mean accuracy difference δ detected with probability `power`.

    Args:
      n_seeds: S training seeds per method. n_problems: P test problems.
      sd_between, sd_within: τ and σ_w of the module docstring (accuracy units).
      alpha: family-wise level; the test is run at alpha / n_comparisons (worst-case Holm).
      are: efficiency of the test relative to the z-test (1 for a z/t-test).
    """
    if n_seeds < 1 or n_problems < 2 or n_comparisons < 1:
        raise ValueError(f"need n_seeds >= 1, n_problems >= 2, n_comparisons >= 1, got "
                         f"{n_seeds}, {n_problems}, {n_comparisons}")
    if sd_between < 0 or sd_within < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("need sd >= 0, 0 < alpha < 1, 0 < power < 1")
    t_a = sps.t.ppf(1 - alpha / (2 * n_comparisons), n_problems - 1)
    t_b = sps.t.ppf(power, n_problems - 1)
    sd_d = math.sqrt(sd_between**2 + sd_within**2 / n_seeds)
    return float((t_a + t_b) * sd_d / math.sqrt(n_problems * are))


def simulate_power(delta: float, *, n_seeds: int, n_problems: int, sd_between: float = DEFAULT_SD_BETWEEN,
                   sd_within: float = DEFAULT_SD_WITHIN, alpha: float = 0.05, n_comparisons: int = 1,
                   n_sim: int = 500, seed: int = 0) -> float:
    """Monte-Carlo power of the two-sided Wilcoxon test (zero_method="wilcox") under the
    Gaussian version of the model: d_p = δ + τ·z_p + σ_w·mean_s z_{s,p}."""
    rng = np.random.default_rng(seed)
    level = alpha / n_comparisons
    hits = 0
    for _ in range(n_sim):
        u = rng.normal(0, sd_between, n_problems)
        e = rng.normal(0, sd_within, (n_seeds, n_problems)).mean(axis=0)
        d = delta + u + e
        hits += sps.wilcoxon(d, zero_method="wilcox").pvalue < level
    return hits / n_sim


def estimate_sd_components(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """Estimate (τ, σ_w) from a pilot's aligned [S, P] matrices of two methods.

    D = x − y. σ_w² = mean over problems of the across-seed variance of D (ddof=1);
    τ² = max(0, Var_p(mean_s D) − σ_w²/S). With S = 1 the two cannot be separated: all variance
    is attributed to τ (conservative: it does not shrink with more seeds).
    Returns (sd_between, sd_within, note).
    """
    dmat = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    s, p = dmat.shape
    if p < 2:
        raise ValueError(f"estimate_sd_components: need >= 2 problems, got {p}")
    var_mean = float(dmat.mean(axis=0).var(ddof=1))
    if s < 2:
        return math.sqrt(var_mean), 0.0, "1 pilot seed: all variance treated as between-problem"
    var_w = float(dmat.var(axis=0, ddof=1).mean())
    var_b = max(0.0, var_mean - var_w / s)
    return math.sqrt(var_b), math.sqrt(var_w), f"pilot: {s} seeds × {p} problems"


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


def _pilot_components(pilot_eval_files: Sequence[str]) -> dict[tuple[str, str, str], tuple[float, float, str]]:
    rows = read_eval_files(pilot_eval_files)
    out = {}
    for task in sorted({r["task"] for r in rows}):
        tm = task_matrices(rows, task)
        for m in tm.methods:
            for r in tm.methods:
                if m != r and len(tm.problem_ids) >= 2:
                    out[(task, m, r)] = estimate_sd_components(tm.correct[m], tm.correct[r])
    return out


def plan_mde(plan: Mapping, pilot_eval_files: Sequence[str | os.PathLike] = (), *, alpha: float = 0.05,
             power: float = 0.8) -> list[dict]:
    """MDE of every planned comparison. Variance: the pilot's estimate for the same pair on the
    same task; else the pooled (root-mean-square) estimate over the task's pilot pairs; else
    the documented default. Returns one dict per comparison."""
    comps = plan_comparisons(plan)
    pilot = _pilot_components([os.fspath(p) for p in pilot_eval_files]) if pilot_eval_files else {}
    n_seeds = len(plan["seeds"])
    out = []
    for task, method, ref in comps:
        if (task, method, ref) in pilot:
            sd_b, sd_w, src = pilot[(task, method, ref)]
        elif any(k[0] == task for k in pilot):
            comp = [v for k, v in pilot.items() if k[0] == task]
            sd_b = math.sqrt(np.mean([c[0] ** 2 for c in comp]))
            sd_w = math.sqrt(np.mean([c[1] ** 2 for c in comp]))
            src = f"pilot, pooled over {len(comp)} pairs of {task}"
        else:
            sd_b, sd_w, src = DEFAULT_SD_BETWEEN, DEFAULT_SD_WITHIN, "default assumption"
        n_p = plan["n_test_problems"][task]
        out.append({"task": task, "method": method, "reference": ref, "n_seeds": n_seeds,
                    "n_problems": n_p, "sd_between": sd_b, "sd_within": sd_w,
                    "sd_diff": math.sqrt(sd_b**2 + sd_w**2 / n_seeds), "sd_source": src,
                    "n_comparisons": len(comps),
                    "mde": minimum_detectable_effect(n_seeds, n_p, sd_between=sd_b, sd_within=sd_w,
                                                     alpha=alpha, n_comparisons=len(comps), power=power)})
    return out


def write_power_report(plan: dict, out_md: str | os.PathLike,
                       pilot_eval_files: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """Write power.md (one row per planned comparison) atomically; returns the rows."""
    rows = plan_mde(plan, pilot_eval_files)
    m = len(rows)
    lines = [
        "# Power of the planned comparisons",
        "",
        f"Minimum detectable effect (MDE) on mean greedy accuracy, at 80% power and two-sided "
        f"level 0.05/{m} = {0.05 / m:.4g} (worst-case Holm threshold over the {m} planned comparisons), "
        "for the Wilcoxon signed-rank test on per-problem seed-averaged differences "
        f"(t-quantile approximation, P − 1 df, with ARE 3/π). sd of a problem's seed-averaged difference = "
        "sqrt(sd_between² + sd_within²/seeds). Default (no pilot): sd_between = sd_within = 0.5.",
        "",
        "| Comparison | Task | n seeds | n problems | assumed sd (between, within → diff) | sd source | MDE |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    for r in rows:
        mde = f"{r['mde']:.3f}" if r["mde"] < 1 else f"{r['mde']:.3f} (undetectable: > 1)"
        lines.append(f"| {r['method']} vs {r['reference']} | {r['task']} | {r['n_seeds']} | "
                     f"{r['n_problems']} | {r['sd_between']:.3f}, {r['sd_within']:.3f} → "
                     f"{r['sd_diff']:.3f} | {r['sd_source']} | {mde} |")
    atomic_write_text(out_md, "\n".join(lines) + "\n")
    return rows
