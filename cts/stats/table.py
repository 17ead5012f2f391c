"""results/table.md and its JSON: every method × task, paired against the base, with the
statistics of `cts.stats.inference`, the MDE of `cts.stats.power`, secondary metrics of
`cts.stats.metrics` and, optionally, the figures of `cts.stats.plots`.

The Markdown is a list of sections, each built by one function of a `TableContext`
(`SECTIONS`; the warnings always come last). A new section is one more builder: append it to
`SECTIONS`, or pass it in `build_table(..., extra_sections=[...])`; a builder may add warnings
(`ctx.warnings`) and JSON (`ctx.extra_json[name] = ...`).

The table is a pure function of the listed input files and the arguments: no timestamps, no
absolute paths, sorted iteration everywhere, so the same inputs give a byte-identical
Markdown file.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cts.io import DataError, atomic_write_json, atomic_write_text, sha256_file
from cts.stats import metrics as mt
from cts.stats.cts_diagnostics import cts_section
from cts.stats.data import TaskMatrices, is_ablation, read_eval_files, read_metrics_file, task_matrices
from cts.stats.inference import (MIN_SEEDS_FOR_TEST, PRIMARY_TEST, SECONDARY_TEST, ZERO_METHOD,
                                 compare_methods, horizon_contrasts)
from cts.stats.power import estimate_sd_components, minimum_detectable_effect, plan_comparisons

__all__ = ["build_table", "METRICS", "NARROW_QUESTION", "narrow_question", "TableContext", "SECTIONS",
           "unique_warnings"]

METRICS = {  # name -> (label, what one problem's value is)
    "greedy": ("greedy pass@1", "1 when the greedy (argmax) completion is correct, else 0"),
    "sampled": ("sampled pass@1", "the fraction of the eval's n_samples completions, drawn at the eval "
                "temperature, that are correct (the expected reward GRPO maximises)"),
}


def narrow_question(metric: str = "greedy") -> str:
    return (f"Does a method's {METRICS[metric][0]} on the held-out test problems differ from the "
            "base method's, when both are trained with the same seeds and scored on the same problems?")


NARROW_QUESTION = narrow_question("greedy")
PASS_K_SHOWN = (1, 4, 10)  # k values reported when every row of a cell has n_samples >= k
CURVE_KEYS = ("loss", "reward/mean")  # learning-curve figures drawn when these keys are logged


def _fmt(x: float | None, signed: bool = False, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return s.replace("-", "−")


def _fmt_ci(est: float, lo: float | None, hi: float | None, signed: bool = False) -> str:
    if lo is None or hi is None:
        return f"{_fmt(est, signed)} [—]"
    return f"{_fmt(est, signed)} [{_fmt(lo, signed)}, {_fmt(hi, signed)}]"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def unique_warnings(warnings: Sequence[str]) -> list[str]:
    """Each warning once, in order of first appearance."""
    return list(dict.fromkeys(warnings))


def _run_label(path: str, methods: Sequence[str], tasks: Sequence[str]) -> tuple[str, str, str]:
    """(label, method, task) of a metrics file from its path parts: the first part equal to a
    known method, the first equal to a known task, and a `seed<k>` part. Unrecognised method:
    the path itself is the label and the method; unrecognised task: "all"."""
    parts = Path(path).with_suffix("").parts
    method = next((p for p in parts if p in methods), None)
    task = next((p for p in parts if p in tasks), None)
    seed = next((m.group(0) for p in parts for m in [re.search(r"seed\d+", p)] if m), None)
    if method is None:
        return path, path, task or "all"
    return "/".join(x for x in (method, task, seed) if x), method, task or "all"


def _renamed(d: dict, old: str, new: str) -> dict:
    return {new if k == old else k: v for k, v in d.items()}


def _clipped(curve: dict) -> dict:
    """A per-H mean curve with its interval bounds clipped to [0, 1] (outcomes are proportions)."""
    clip = lambda v, f: None if v is None else f(v)  # noqa: E731
    return {**curve, "low": [clip(v, lambda a: max(0.0, a)) for v in curve["low"]],
            "high": [clip(v, lambda a: min(1.0, a)) for v in curve["high"]]}


def _secondary(cells: Mapping[tuple[int, str], dict], values: np.ndarray, horizons: np.ndarray) -> dict:
    rows = [cells[k] for k in sorted(cells)]
    n_min = min(r["n_samples"] for r in rows)
    return {
        "pass_at_k": {str(k): mt.mean_pass_at_k(rows, k) for k in PASS_K_SHOWN if k <= n_min},
        "min_n_samples": n_min,
        # the table's metric by H, run-level intervals (the same model as the comparisons)
        "horizon_curve": _clipped(_renamed(horizon_contrasts(values, np.zeros_like(values), horizons),
                                           "delta", "mean")),
        "delta_critique": mt.delta_critique(rows),
        "taxonomy": mt.taxonomy_breakdown(rows),
    }


def _metric_matrices(per_task, metric: str, warnings: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{task: {method: [S, P] matrix}} of one metric; a method without samples has no sampled row."""
    out = {}
    for task, tm in per_task.items():
        source = tm.correct if metric == "greedy" else tm.sampled
        out[task] = {m: x for m, x in source.items() if x is not None}
        for m in sorted(set(source) - set(out[task])):
            warnings.append(f"task {task}: {m} has rows with n_samples = 0: no {METRICS[metric][0]}")
    return out


def _mde_text(c: dict) -> str:
    if c["mde"] is not None:
        return _fmt(c["mde"])
    if c["test"]["n_seeds"] < MIN_SEEDS_FOR_TEST:
        return f"no test (< {MIN_SEEDS_FOR_TEST} seeds)"
    return "no variance"


def _p_text(test: dict) -> str:
    if test["p"] is not None:
        return _fmt_p(test["p"])
    if test["n_seeds"] < MIN_SEEDS_FOR_TEST:
        return f"no test: {test['n_seeds']} seed{'s' if test['n_seeds'] != 1 else ''}"
    return "no variance"


def _compare(mats, comparisons, horizons, *, n_boot: int, seed: int, alpha: float, m_planned: int,
             warnings: list[str]):
    """Run-level test + Holm (primary), Wilcoxon (secondary), Δ(H), and each comparison's MDE
    with this data's own variance components."""
    results, means = compare_methods(mats, comparisons, n_boot=n_boot, seed=seed, alpha=alpha,
                                     horizons=horizons)
    comp_json = []
    for c in results:
        warnings += c.warnings
        x, y = mats[c.task][c.method], mats[c.task][c.reference]
        s, p = x.shape
        sd_run = sd_cell = sd_problem = mde = None
        if s >= 2 and p >= 2:
            sd_run, sd_cell, sd_problem, _ = estimate_sd_components(x, y)
            mde = minimum_detectable_effect(s, p, sd_run=sd_run, sd_cell=sd_cell, sd_problem=sd_problem,
                                            alpha=alpha, n_comparisons=m_planned)
        d = c.to_dict()
        d.update(sd_run=sd_run, sd_cell=sd_cell, sd_problem=sd_problem, mde=mde)
        comp_json.append(d)
    return results, means, comp_json


@dataclass
class TableContext:
    """Everything a section builder may read (and `warnings` / `extra_json` it may extend)."""

    eval_files: list[str]
    rows: list[dict]
    tasks: list[str]
    per_task: dict[str, TaskMatrices]
    base: str
    ablation_base: str | None
    primary: str
    other: str
    metric_mats: dict[str, dict[str, dict[str, np.ndarray]]]
    means: dict[str, dict]  # metric -> {task: {method: Interval}}
    comparisons: dict[str, list[dict]]  # metric -> comparison JSON (primary first)
    secondary: dict[str, dict[str, dict]]  # task -> method -> secondary metrics
    m_planned: int
    power_plan: dict | None
    alpha: float
    n_boot: int
    seed: int
    warnings: list[str] = field(default_factory=list)
    extra_json: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- sections

def _comparison_rows(ctx: TableContext, metric: str) -> list[str]:
    """Markdown rows of one metric's table: every method of every task, with its comparison."""
    by_key = {(d["task"], d["method"]): d for d in ctx.comparisons[metric]}
    out = []
    for task in ctx.tasks:
        tm = ctx.per_task[task]
        for m in sorted(ctx.metric_mats[metric][task]):
            acc = ctx.means[metric][task][m]
            acc_s = _fmt_ci(acc.estimate, acc.low, acc.high)
            c = by_key.get((task, m))
            if c is None:
                out.append(f"| {task} | {m} | — | {acc_s} | — | — | — | | {len(tm.seeds)} | "
                           f"{len(tm.problem_ids)} | — |")
                continue
            dl = c["delta"]
            out.append(f"| {task} | {m} | {c['reference']} | {acc_s} | "
                       f"{_fmt_ci(dl['estimate'], dl['low'], dl['high'], signed=True)} | "
                       f"{_p_text(c['test'])} | {_fmt_p(c['p_holm'])} | {'*' if c['significant'] else ''} | "
                       f"{len(tm.seeds)} | {len(tm.problem_ids)} | {_mde_text(c)} |")
    return out


TABLE_HEADER = ["| Task | Method | vs | Mean [95% CI] | Δ vs ref [95% CI] | p (run-level t) | Holm p | Sig | Seeds | Problems | MDE |",
                "|---|---|---|---|---|---:|---:|:-:|---:|---:|---:|"]


def section_header(ctx: TableContext) -> list[str]:
    digest = hashlib.sha256("".join(sorted(sha256_file(f) for f in ctx.eval_files)).encode()).hexdigest()[:16]
    comps = ctx.comparisons[ctx.primary]
    n_p = sum(c["test"]["p"] is not None for c in comps)
    n_sig = sum(c["significant"] for c in comps)
    label = METRICS[ctx.primary][0]
    return [
        "# Results",
        "",
        f"**Question.** {narrow_question(ctx.primary)}",
        "",
        f"**Measured.** {label.capitalize()} ({METRICS[ctx.primary][1]}) on each task's test "
        f"problems, per (method, task, seed) eval file; the same comparisons on "
        f"{METRICS[ctx.other][0]} follow in their own table. Non-ablation methods are compared with the "
        f"base **{ctx.base}**; ablations (`<method>-A<k>`) with "
        f"**{ctx.ablation_base if ctx.ablation_base is not None else '—'}**.",
        f"**Test (primary).** {PRIMARY_TEST[0].upper() + PRIMARY_TEST[1:]}: the unit is the training run, "
        "so the variance between seeds enters; persistent per-problem differences enter through the "
        "problems term; means, Δ and their 95% intervals come from the same model. "
        f"No p-value with fewer than {MIN_SEEDS_FOR_TEST} seeds: no test holds its level there "
        "(simulated in tests/test_stats_calibration.py). "
        f"Holm over the {n_p} comparisons of this table that have a p-value, α = {ctx.alpha}; "
        f"`*` = Holm-adjusted p < {ctx.alpha} ({n_sig} of {len(comps)}).",
        f"MDE: smallest |Δ| this test detects with 80% power at level {ctx.alpha}/{ctx.m_planned} "
        f"(worst-case Holm over {ctx.m_planned} {'planned ' if ctx.power_plan is not None else ''}comparisons), "
        "with this comparison's own seed, cell and problem variance (cts/stats/power.py).",
        f"Inputs: {len(ctx.eval_files)} eval files, {len(ctx.rows)} rows, content digest `{digest}`.",
        "",
        *TABLE_HEADER,
        *_comparison_rows(ctx, ctx.primary),
    ]


def section_horizon(ctx: TableContext) -> list[str]:
    """Δ at each horizon H and the slope of Δ over H, per comparison, on the primary metric."""
    comps = ctx.comparisons[ctx.primary]
    if not comps:
        return []
    hs = sorted({h for c in comps for h in c["horizon"]["horizons"]})
    out = ["", f"## Δ by horizon H ({METRICS[ctx.primary][0]})", "",
           "The delayed-credit question asked directly: Δ vs the reference at each horizon H (steps of "
           "the reference solution) and the OLS slope of Δ on H (change in Δ per extra step), each with "
           "the run-level model's 95% interval; slope p-values Holm-adjusted as their own family.",
           "",
           "| Task | Method | vs | " + " | ".join(f"Δ at H={h} [95% CI]" for h in hs)
           + " | slope of Δ per step [95% CI] | slope p | Holm p |",
           "|---|---|---|" + "---|" * len(hs) + "---|---:|---:|"]
    for c in comps:
        hz = c["horizon"]
        cells = []
        for h in hs:
            if h in hz["horizons"]:
                j = hz["horizons"].index(h)
                cells.append(_fmt_ci(hz["delta"][j], hz["low"][j], hz["high"][j], signed=True))
            else:
                cells.append("—")
        slope = ("— (" + hz["note"] + ")" if hz["slope"] is None
                 else _fmt_ci(hz["slope"], hz["slope_low"], hz["slope_high"], signed=True))
        out.append(f"| {c['task']} | {c['method']} | {c['reference']} | " + " | ".join(cells)
                   + f" | {slope} | {_fmt_p(hz['slope_p'])} | {_fmt_p(hz.get('slope_p_holm'))} |")
    return out


def section_other_metric(ctx: TableContext) -> list[str]:
    other = ctx.comparisons[ctx.other]
    return ["", f"## The same comparisons on {METRICS[ctx.other][0]}", "",
            f"{METRICS[ctx.other][0].capitalize()}: {METRICS[ctx.other][1]}. Same test; Holm over these "
            f"{sum(c['test']['p'] is not None for c in other)} comparisons as a family of their own "
            f"(`*` for {sum(c['significant'] for c in other)} of them).",
            "", *TABLE_HEADER, *_comparison_rows(ctx, ctx.other)]


def section_conditional_wilcoxon(ctx: TableContext) -> list[str]:
    out = ["", "## Secondary: per-problem Wilcoxon, conditional on these trained seeds", "",
           f"{SECONDARY_TEST}: it asks whether *these* trained runs differ across problems, not whether the "
           "training procedures do, so it ignores the variance between seeds and is no substitute for the "
           f"primary test. Per-problem seed-averaged differences; zero_method = '{ZERO_METHOD}' (problems "
           "with no difference dropped), exact null over the nonzero differences (normal approximation "
           "only above 500); Holm over this column as its own family. Δ interval: problems resampled, "
           f"seeds fixed (n_boot = {ctx.n_boot}, seed = {ctx.seed}).",
           "",
           "| Task | Method | vs | Δ [95% CI, seeds fixed] | Wilcoxon p | Holm p | nonzero | min attainable p | rank-biserial | Cohen's d_z |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in ctx.comparisons[ctx.primary]:
        t = c["secondary"]
        dc = t["delta_conditional"]
        out.append(f"| {c['task']} | {c['method']} | {c['reference']} | "
                   f"{_fmt_ci(dc['estimate'], dc['low'], dc['high'], signed=True)} | {_fmt_p(t['p'])} | "
                   f"{_fmt_p(t['p_holm'])} | {t['n_nonzero']} | {_fmt_p(t['min_attainable_p'])} | "
                   f"{_fmt(t['rank_biserial'], True)} | {_fmt(t['cohens_dz'], True)} |")
    return out


def section_secondary_metrics(ctx: TableContext) -> list[str]:
    out = ["", "## Secondary metrics", "",
           f"Horizon slope: OLS slope of the method's {METRICS[ctx.primary][0]} on H, run-level 95% interval. "
           "Δ_critique: among problems the base failed and the teacher critiqued, the fraction now "
           "solved, and the mean shift of the first wrong step (positive = later) where both are known; "
           "n counts (problem, seed) rows.",
           "",
           "| Task | Method | pass@k (sampled) | horizon slope [95% CI] | Δ_critique solved (n) | first-error shift (n) |",
           "|---|---|---|---|---|---|"]
    for task in ctx.tasks:
        for m in ctx.per_task[task].methods:
            sec = ctx.secondary[task][m]
            pk = ", ".join(f"@{k} {_fmt(v)}" for k, v in sec["pass_at_k"].items()) or "—"
            hc = sec["horizon_curve"]
            slope = ("— (" + hc["note"] + ")" if hc["slope"] is None
                     else _fmt_ci(hc["slope"], hc["slope_low"], hc["slope_high"], signed=True))
            dc = sec["delta_critique"]
            out.append(f"| {task} | {m} | {pk} | {slope} | {_fmt(dc['solved_rate'])} ({dc['n']}) | "
                       f"{_fmt(dc['mean_first_error_shift'], True, 2)} ({dc['n_shift']}) |")
    return out


def section_taxonomy(ctx: TableContext) -> list[str]:
    tags = sorted({t for task in ctx.tasks for m in ctx.secondary[task] for t in ctx.secondary[task][m]["taxonomy"]})
    if not tags:
        return []
    out = ["", "## By error type of the base failure (fraction now solved, n)", "",
           "| Task | Method | " + " | ".join(tags) + " |", "|---|---|" + "---|" * len(tags)]
    for task in ctx.tasks:
        for m in ctx.per_task[task].methods:
            tx = ctx.secondary[task][m]["taxonomy"]
            out.append(f"| {task} | {m} | " + " | ".join(
                f"{_fmt(tx[t]['solved_rate'])} ({tx[t]['n']})" if t in tx else "—" for t in tags) + " |")
    return out


# The table's sections in order (the warnings follow them). One line adds a section.
SECTIONS: list[Callable[[TableContext], list[str]]] = [
    section_header,
    section_horizon,
    section_other_metric,
    section_conditional_wilcoxon,
    section_secondary_metrics,
    section_taxonomy,
]


def build_table(eval_files: list[str], *, base: str, ablation_base: str | None,
                metrics_files: Sequence[str] = (), power_plan: dict | None = None, seed: int = 0,
                n_boot: int = 10000, out_md: str, out_json: str, fig_dir: str | None = None,
                alpha: float = 0.05, primary: str = "greedy",
                extra_sections: Sequence[Callable[[TableContext], list[str]]] = ()) -> dict:
    """Build the results table (Markdown + JSON) and, when `fig_dir` is set, the figures.

    Args:
      eval_files: per-(method, task, seed) eval JSONL files (schema: `cts.stats.data.EVAL_FIELDS`).
      base: the method every non-ablation method is compared with (e.g. "B3").
      ablation_base: the method ablations ("B5-A1", ...) are compared with (e.g. "B5"); None
        when there are no ablations.
      metrics_files: training-metrics JSONL files for the learning-curve figures (one figure
        per task and key in CURVE_KEYS, mean ± 95% CI over seeds per method); a file's method,
        task and seed are read from path parts equal to a known method / task and a `seed<k>` part.
      power_plan: the planned design (see `cts.stats.power.plan_comparisons`); when given its
        number of planned comparisons sets the MDE's multiplicity, else the table's does.
      seed, n_boot: the secondary (seeds-fixed) bootstrap's seed and replicates.
      out_md, out_json: outputs (written atomically).
      fig_dir: folder for PNG+SVG figures, or None.
      alpha: family-wise level (Holm).
      primary: the headline metric, "greedy" or "sampled" (see METRICS). The other metric gets
        the same comparisons in a second table, Holm-corrected as its own family.
      extra_sections: builders appended after `SECTIONS` (before the warnings).

    Returns the JSON document.
    """
    if primary not in METRICS:
        raise ValueError(f"build_table: primary must be one of {sorted(METRICS)}, got {primary!r}")
    other = "sampled" if primary == "greedy" else "greedy"
    eval_files = [os.fspath(p) for p in eval_files]
    rows = read_eval_files(eval_files)
    tasks = sorted({r["task"] for r in rows})
    warnings: list[str] = []
    per_task = {}
    for task in tasks:
        per_task[task] = task_matrices(rows, task)
        warnings += per_task[task].warnings
    metric_mats = {metric: _metric_matrices(per_task, metric, warnings) for metric in METRICS}
    mats = metric_mats[primary]
    comparisons: list[tuple[str, str, str]] = []
    for task in tasks:
        for m in sorted(mats[task]):
            if m == base:
                continue
            ref = ablation_base if is_ablation(m) else base
            if ref is None:
                warnings.append(f"task {task}: ablation {m} not compared (no ablation_base given)")
            elif ref not in mats[task]:
                warnings.append(f"task {task}: {m} not compared: reference {ref} has no eval files")
            else:
                comparisons.append((task, m, ref))
    if not comparisons:
        warnings.append("no comparisons: only the base (or no reference) was evaluated")
    m_planned = len(plan_comparisons(power_plan)) if power_plan is not None else max(len(comparisons), 1)
    horizons = {t: per_task[t].horizons for t in tasks}
    kw = dict(n_boot=n_boot, seed=seed, alpha=alpha, m_planned=m_planned, warnings=warnings)
    _, means, comp_json = _compare(mats, comparisons, horizons, **kw)
    other_comparisons = [c for c in comparisons if c[1] in metric_mats[other][c[0]]
                         and c[2] in metric_mats[other][c[0]]]
    _, other_means, other_json = _compare(metric_mats[other], other_comparisons, horizons, **kw)

    secondary = {task: {m: _secondary(per_task[task].rows[m], mats[task].get(m, per_task[task].correct[m]),
                                      per_task[task].horizons)
                        for m in per_task[task].methods} for task in tasks}
    ctx = TableContext(eval_files=eval_files, rows=rows, tasks=tasks, per_task=per_task, base=base,
                       ablation_base=ablation_base, primary=primary, other=other,
                       metric_mats=metric_mats, means={primary: means, other: other_means},
                       comparisons={primary: comp_json, other: other_json}, secondary=secondary,
                       m_planned=m_planned, power_plan=power_plan, alpha=alpha, n_boot=n_boot,
                       seed=seed, warnings=warnings)

    # ---- figures (first: they may add warnings)
    figures: list[str] = []
    if fig_dir is not None:
        figures = _figures(fig_dir, ctx, metrics_files)

    # ---- Markdown
    md: list[str] = []
    for builder in [*SECTIONS, *extra_sections]:
        md += builder(ctx)
    md += cts_section(metrics_files or [], eval_files, reference=ablation_base)  # critic quality, edit direction
    ctx.warnings[:] = unique_warnings(ctx.warnings)
    md += ["", "## Warnings", ""] + ([f"- {w}" for w in ctx.warnings] or ["- none"])
    atomic_write_text(out_md, "\n".join(md) + "\n")

    doc = {
        "question": narrow_question(primary),
        "primary_metric": primary,
        "settings": {"base": base, "ablation_base": ablation_base, "seed": seed, "n_boot": n_boot,
                     "alpha": alpha, "primary_test": PRIMARY_TEST, "secondary_test": SECONDARY_TEST,
                     "min_seeds_for_test": MIN_SEEDS_FOR_TEST, "zero_method": ZERO_METHOD,
                     "secondary_bootstrap": "problems resampled, seeds fixed, percentile",
                     "mde_n_comparisons": m_planned},
        "inputs": [{"file": os.path.basename(f), "sha256": sha256_file(f)} for f in eval_files],
        "metrics_inputs": [{"file": os.path.basename(os.fspath(f)), "sha256": sha256_file(f)}
                           for f in metrics_files],
        "tasks": {task: {"seeds": per_task[task].seeds, "n_problems": len(per_task[task].problem_ids),
                         "methods": {m: {"accuracy": vars(means[task][m]) if m in means[task] else None, **secondary[task][m]}
                                     for m in per_task[task].methods}} for task in tasks},
        "comparisons": comp_json,
        "other_metric": {"metric": other, "comparisons": other_json,
                         "means": {task: {m: vars(iv) for m, iv in sorted(other_means[task].items())}
                                   for task in sorted(other_means)}},
        "figures": [os.path.relpath(f, os.path.dirname(os.path.abspath(out_json))) for f in figures],
        "warnings": ctx.warnings,
        **({"extra": ctx.extra_json} if ctx.extra_json else {}),
    }
    atomic_write_json(out_json, doc)
    return doc


def _figures(fig_dir, ctx: TableContext, metrics_files) -> list[str]:
    from cts.stats import plots  # matplotlib only when figures are asked for

    out = []
    label = METRICS[ctx.primary][0]
    by_task: dict[str, list[dict]] = {}
    for c in ctx.comparisons[ctx.primary]:
        by_task.setdefault(c["task"], []).append(c)
    for task in ctx.tasks:
        curves = {m: ctx.secondary[task][m]["horizon_curve"] for m in ctx.per_task[task].methods}
        deltas = {f"{c['method']} − {c['reference']}": c["horizon"] for c in by_task.get(task, [])}
        out += plots.plot_horizon_curves(curves, deltas=deltas, metric=label,
                                         out_stem=Path(fig_dir) / f"horizon_{task}",
                                         title=f"{task}: {label} vs horizon")
        tax = {m: ctx.secondary[task][m]["taxonomy"] for m in ctx.per_task[task].methods}
        if any(tax.values()):
            out += plots.plot_taxonomy(tax, out_stem=Path(fig_dir) / f"taxonomy_{task}",
                                       title=f"{task}: base failures now solved, by error type")
    comps = ctx.comparisons[ctx.primary]
    if any(c["delta"]["low"] is not None for c in comps):
        rows = [{"label": f"{c['task']}: {c['method']} − {c['reference']}", "delta": c["delta"]["estimate"],
                 "low": c["delta"]["low"], "high": c["delta"]["high"], "significant": c["significant"]}
                for c in comps if c["delta"]["low"] is not None]
        out += plots.plot_delta_forest(rows, out_stem=Path(fig_dir) / "delta_forest", metric=label,
                                       test="run-level t, unit: training seed")
    elif comps:
        ctx.warnings.append("forest plot not drawn: 1 seed, no interval for any Δ")
    if metrics_files:
        methods = sorted({m for t in ctx.tasks for m in ctx.per_task[t].methods})
        curves: dict[str, dict] = {}
        for f in metrics_files:
            run, method, task = _run_label(os.fspath(f), methods, ctx.tasks)
            runs = curves.setdefault(task, {"curves": {}, "group": {}})
            if run in runs["curves"]:
                raise DataError(f"{f}: learning-curve run label {run!r} is not unique")
            runs["curves"][run], runs["group"][run] = read_metrics_file(f), method
        for task, runs in sorted(curves.items()):  # one figure per task and logged key
            for key in CURVE_KEYS:
                if any(key in c for c in runs["curves"].values()):
                    out += plots.plot_learning_curves(
                        runs["curves"], key=key, group_of=runs["group"], title=f"{task}: {key}",
                        out_stem=Path(fig_dir) / f"curve_{task}_{key.replace('/', '_')}")
                else:
                    ctx.warnings.append(f"learning curves ({task}): no metrics file logs {key!r}")
    return out
