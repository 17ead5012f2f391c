"""results/table.md and its JSON: every method × task, paired against the base, with the
statistics of `cts.stats.inference`, the MDE of `cts.stats.power`, secondary metrics of
`cts.stats.metrics` and, optionally, the figures of `cts.stats.plots`.

The table is a pure function of the listed input files and the arguments: no timestamps, no
absolute paths, sorted iteration everywhere, so the same inputs give a byte-identical
Markdown file.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cts.io import DataError, atomic_write_json, atomic_write_text, sha256_file
from cts.stats import metrics as mt
from cts.stats.cts_diagnostics import cts_section
from cts.stats.data import is_ablation, read_eval_files, read_metrics_file, task_matrices
from cts.stats.inference import ZERO_METHOD, compare_methods
from cts.stats.power import estimate_sd_components, minimum_detectable_effect, plan_comparisons

__all__ = ["build_table", "METRICS", "NARROW_QUESTION", "narrow_question"]

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


def _fmt_ci(est: float, lo: float, hi: float, signed: bool = False) -> str:
    return f"{_fmt(est, signed)} [{_fmt(lo, signed)}, {_fmt(hi, signed)}]"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


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


def _secondary(cells: Mapping[tuple[int, str], dict], correct: np.ndarray, horizons: np.ndarray) -> dict:
    rows = [cells[k] for k in sorted(cells)]
    n_min = min(r["n_samples"] for r in rows)
    return {
        "pass_at_k": {str(k): mt.mean_pass_at_k(rows, k) for k in PASS_K_SHOWN if k <= n_min},
        "min_n_samples": n_min,
        "horizon_curve": mt.horizon_curve(correct, horizons).to_dict(),
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


def _compare(mats, comparisons, *, n_boot: int, seed: int, alpha: float, m_planned: int,
             warnings: list[str]):
    """Bootstrap + Wilcoxon + Holm over `comparisons` on one metric, with each one's MDE."""
    results, means = compare_methods(mats, comparisons, n_boot=n_boot, seed=seed, alpha=alpha)
    comp_json = []
    for c in results:
        warnings += c.warnings
        x, y = mats[c.task][c.method], mats[c.task][c.reference]
        s, p = x.shape
        if p >= 2:
            sd_b, sd_w, _ = estimate_sd_components(x, y)
            mde = minimum_detectable_effect(s, p, sd_between=sd_b, sd_within=sd_w, alpha=alpha,
                                            n_comparisons=m_planned)
        else:
            sd_b = sd_w = mde = None
        d = c.to_dict()
        d.update(sd_between=sd_b, sd_within=sd_w, mde=mde)
        comp_json.append(d)
    return results, means, comp_json


def _comparison_rows(tasks, per_task, mats, means, comp_json) -> list[str]:
    """Markdown rows of one metric's table: every method of every task, with its comparison."""
    by_key = {(d["task"], d["method"]): d for d in comp_json}
    out = []
    for task in tasks:
        tm = per_task[task]
        for m in sorted(mats[task]):
            acc = means[task][m]
            acc_s = _fmt_ci(acc.estimate, acc.low, acc.high)
            c = by_key.get((task, m))
            if c is None:
                out.append(f"| {task} | {m} | — | {acc_s} | — | — | — | | {len(tm.seeds)} | "
                           f"{len(tm.problem_ids)} | — |")
                continue
            dl = c["delta"]
            out.append(f"| {task} | {m} | {c['reference']} | {acc_s} | "
                       f"{_fmt_ci(dl['estimate'], dl['low'], dl['high'], signed=True)} | "
                       f"{_fmt_p(c['test']['p'])} | {_fmt_p(c['p_holm'])} | {'*' if c['significant'] else ''} | "
                       f"{len(tm.seeds)} | {len(tm.problem_ids)} | {_fmt(c['mde'])} |")
    return out


def build_table(eval_files: list[str], *, base: str, ablation_base: str | None,
                metrics_files: Sequence[str] = (), power_plan: dict | None = None, seed: int = 0,
                n_boot: int = 10000, out_md: str, out_json: str, fig_dir: str | None = None,
                alpha: float = 0.05, primary: str = "greedy") -> dict:
    """Build the results table (Markdown + JSON) and, when `fig_dir` is set, the figures.

    Args:
      eval_files: per-(method, task, seed) eval JSONL files (schema: `cts.stats.data.EVAL_FIELDS`).
      base: the method every non-ablation method is compared with (e.g. "B3").
      ablation_base: the method ablations ("B5-A1", ...) are compared with (e.g. "B5"); None
        when there are no ablations.
      metrics_files: training-metrics JSONL files for the learning-curve figures (one figure
        per task and key in CURVE_KEYS); a file's method, task and seed are read from path
        parts equal to a known method / task and a `seed<k>` part.
      power_plan: the planned design (see `cts.stats.power.plan_comparisons`); when given its
        number of planned comparisons sets the MDE's multiplicity, else the table's does.
      seed, n_boot: bootstrap seed and replicates.
      out_md, out_json: outputs (written atomically).
      fig_dir: folder for PNG+SVG figures, or None.
      alpha: family-wise level (Holm).
      primary: the headline metric, "greedy" or "sampled" (see METRICS). The other metric gets
        the same comparisons in a second table, Holm-corrected as its own family.

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
    results, means, comp_json = _compare(mats, comparisons, n_boot=n_boot, seed=seed, alpha=alpha,
                                         m_planned=m_planned, warnings=warnings)
    other_comparisons = [c for c in comparisons if c[1] in metric_mats[other][c[0]]
                         and c[2] in metric_mats[other][c[0]]]
    _, other_means, other_json = _compare(metric_mats[other], other_comparisons, n_boot=n_boot,
                                          seed=seed, alpha=alpha, m_planned=m_planned, warnings=warnings)

    secondary = {task: {m: _secondary(per_task[task].rows[m], mats[task].get(m, per_task[task].correct[m]),
                                      per_task[task].horizons)
                        for m in per_task[task].methods} for task in tasks}

    # ---- figures (first: they may add warnings)
    figures: list[str] = []
    if fig_dir is not None:
        figures = _figures(fig_dir, tasks, per_task, secondary, comp_json, metrics_files, warnings)

    # ---- Markdown
    digest = hashlib.sha256("".join(sorted(sha256_file(f) for f in eval_files)).encode()).hexdigest()[:16]
    n_sig = sum(c.significant for c in results)
    header = ["| Task | Method | vs | Accuracy [95% CI] | Δ vs ref [95% CI] | Wilcoxon p | Holm p | Sig | Seeds | Problems | MDE |",
              "|---|---|---|---|---|---:|---:|:-:|---:|---:|---:|"]
    md = [
        "# Results",
        "",
        f"**Question.** {narrow_question(primary)}",
        "",
        f"**Measured.** {METRICS[primary][0].capitalize()} ({METRICS[primary][1]}) on each task's test "
        f"problems, per (method, task, seed) eval file; the same comparisons on "
        f"{METRICS[other][0]} follow in their own table. Non-ablation methods are compared with the "
        f"base **{base}**; ablations (`<method>-A<k>`) with "
        f"**{ablation_base if ablation_base is not None else '—'}**.",
        f"Accuracy and Δ intervals: crossed bootstrap (seeds resampled, then problem ids, both with "
        f"replacement; the same draws for every method of a task, so Δ is paired by seed and "
        f"problem), 95% percentile, n_boot = {n_boot}, seed = {seed}.",
        f"Test: Wilcoxon signed-rank on per-problem seed-averaged differences, zero_method = "
        f"'{ZERO_METHOD}' (problems with no difference are dropped), scipy method 'auto'; Holm "
        f"correction over the {len(results)} comparisons of this table at α = {alpha}; "
        f"`*` = Holm-adjusted p < {alpha} ({n_sig} of {len(results)}).",
        f"MDE: smallest Δ detectable at 80% power at level {alpha}/{m_planned} (worst-case Holm over "
        f"{m_planned} {'planned ' if power_plan is not None else ''}comparisons), with this data's "
        "own between-problem and seed variance (see cts/stats/power.py).",
        f"Inputs: {len(eval_files)} eval files, {len(rows)} rows, content digest `{digest}`.",
        "",
        *header,
        *_comparison_rows(tasks, per_task, mats, means, comp_json),
        "",
        f"## The same comparisons on {METRICS[other][0]}",
        "",
        f"{METRICS[other][0].capitalize()}: {METRICS[other][1]}. Same bootstrap draws and test; Holm "
        f"over these {len(other_json)} comparisons as a family of their own "
        f"(`*` for {sum(d['significant'] for d in other_json)} of them).",
        "",
        *header,
        *_comparison_rows(tasks, per_task, metric_mats[other], other_means, other_json),
    ]
    md += ["", "## Effect sizes", "",
           "| Task | Method | vs | mean Δ | rank-biserial | Cohen's d_z | nonzero pairs | min attainable p |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in comp_json:
        t = c["test"]
        md.append(f"| {c['task']} | {c['method']} | {c['reference']} | {_fmt(t['mean_delta'], True)} | "
                  f"{_fmt(t['rank_biserial'], True)} | {_fmt(t['cohens_dz'], True)} | {t['n_nonzero']} | "
                  f"{_fmt_p(t['min_attainable_p'])} |")
    md += ["", "## Secondary metrics", "",
           "Horizon slope: OLS of seed-averaged correctness on H over problems [95% t-CI]. "
           "Δ_critique: among problems the base failed and the teacher critiqued, the fraction now "
           "solved, and the mean shift of the first wrong step (positive = later) where both are known; "
           "n counts (problem, seed) rows.",
           "",
           "| Task | Method | pass@k (sampled) | horizon slope [95% CI] | Δ_critique solved (n) | first-error shift (n) |",
           "|---|---|---|---|---|---|"]
    for task in tasks:
        for m in per_task[task].methods:
            sec = secondary[task][m]
            pk = ", ".join(f"@{k} {_fmt(v)}" for k, v in sec["pass_at_k"].items()) or "—"
            hc = sec["horizon_curve"]
            slope = ("— (" + hc["note"] + ")" if hc["slope"] is None
                     else _fmt_ci(hc["slope"], hc["slope_low"], hc["slope_high"], signed=True))
            dc = sec["delta_critique"]
            md.append(f"| {task} | {m} | {pk} | {slope} | {_fmt(dc['solved_rate'])} ({dc['n']}) | "
                      f"{_fmt(dc['mean_first_error_shift'], True, 2)} ({dc['n_shift']}) |")
    tags = sorted({t for task in tasks for m in secondary[task] for t in secondary[task][m]["taxonomy"]})
    if tags:
        md += ["", "## By error type of the base failure (fraction now solved, n)", "",
               "| Task | Method | " + " | ".join(tags) + " |", "|---|---|" + "---|" * len(tags)]
        for task in tasks:
            for m in per_task[task].methods:
                tx = secondary[task][m]["taxonomy"]
                md.append(f"| {task} | {m} | " + " | ".join(
                    f"{_fmt(tx[t]['solved_rate'])} ({tx[t]['n']})" if t in tx else "—" for t in tags) + " |")
    md += cts_section(metrics_files, eval_files, reference=ablation_base)  # critic quality, edit direction
    md += ["", "## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"])
    atomic_write_text(out_md, "\n".join(md) + "\n")

    doc = {
        "question": narrow_question(primary),
        "primary_metric": primary,
        "settings": {"base": base, "ablation_base": ablation_base, "seed": seed, "n_boot": n_boot,
                     "alpha": alpha, "zero_method": ZERO_METHOD, "bootstrap": "crossed seeds x problems, shared draws, percentile",
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
        "warnings": warnings,
    }
    atomic_write_json(out_json, doc)
    return doc


def _figures(fig_dir, tasks, per_task, secondary, comp_json, metrics_files, warnings) -> list[str]:
    from cts.stats import plots  # matplotlib only when figures are asked for

    out = []
    for task in tasks:
        curves = {m: secondary[task][m]["horizon_curve"] for m in per_task[task].methods}
        out += plots.plot_horizon_curves(curves, out_stem=Path(fig_dir) / f"horizon_{task}",
                                         title=f"{task}: accuracy vs horizon")
        tax = {m: secondary[task][m]["taxonomy"] for m in per_task[task].methods}
        if any(tax.values()):
            out += plots.plot_taxonomy(tax, out_stem=Path(fig_dir) / f"taxonomy_{task}",
                                       title=f"{task}: base failures now solved, by error type")
    if comp_json:
        rows = [{"label": f"{c['task']}: {c['method']} − {c['reference']}", "delta": c["delta"]["estimate"],
                 "low": c["delta"]["low"], "high": c["delta"]["high"], "significant": c["significant"]}
                for c in comp_json]
        out += plots.plot_delta_forest(rows, out_stem=Path(fig_dir) / "delta_forest")
    if metrics_files:
        methods = sorted({m for t in tasks for m in per_task[t].methods})
        curves: dict[str, dict] = {}
        for f in metrics_files:
            label, method, task = _run_label(os.fspath(f), methods, tasks)
            runs = curves.setdefault(task, {"curves": {}, "group": {}})
            if label in runs["curves"]:
                raise DataError(f"{f}: learning-curve run label {label!r} is not unique")
            runs["curves"][label], runs["group"][label] = read_metrics_file(f), method
        for task, runs in sorted(curves.items()):  # one figure per task and logged key
            for key in CURVE_KEYS:
                if any(key in c for c in runs["curves"].values()):
                    out += plots.plot_learning_curves(
                        runs["curves"], key=key, group_of=runs["group"], title=f"{task}: {key}",
                        out_stem=Path(fig_dir) / f"curve_{task}_{key.replace('/', '_')}")
                else:
                    warnings.append(f"learning curves ({task}): no metrics file logs {key!r}")
    return out
