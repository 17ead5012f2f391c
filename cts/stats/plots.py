"""Figures of the evaluation (matplotlib, Agg backend). Every function writes `<out_stem>.png`
and `<out_stem>.svg` and returns the two paths.

SVGs are written without a date and with a fixed hash salt, so identical inputs give
identical files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

__all__ = ["plot_learning_curves", "plot_horizon_curves", "plot_delta_forest", "plot_taxonomy"]

plt.rcParams["svg.hashsalt"] = "cts"  # deterministic SVG element ids


def _save(fig, out_stem: str | os.PathLike) -> list[str]:
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        final = stem.with_name(stem.name + f".{ext}")
        tmp = stem.with_name(f".{stem.name}.{ext}.tmp")
        fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        os.replace(tmp, final)  # atomic: a reader never sees a half-written figure
        paths.append(str(final))
    plt.close(fig)
    return paths


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(sorted(set(names)))}


def _t_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column of `values` [runs, steps] (NaN = not logged): mean, low, high of the t-interval
    over the runs that logged it (NaN bounds where fewer than 2), and that count."""
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(n > 0, values, 0.0), axis=0) if values.size else values
        sd = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / np.maximum(n - 1, 1))
        half = np.where(n >= 2, sps.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1)), np.nan)
    mean = np.where(n > 0, mean, np.nan)
    return mean, mean - half, mean + half, n


def plot_learning_curves(curves: Mapping[str, Mapping[str, np.ndarray]], *, key: str,
                         out_stem: str | os.PathLike, group_of: Mapping[str, str] | None = None,
                         title: str = "") -> list[str]:
    """Metric `key` against `step`: per group (a method) the mean over its runs (seeds) with a
    95% t-interval band over seeds at each logged step (no band where fewer than 2 runs).

    Args:
      curves: {run label: {"step": [N], key: [N], ...}} (from `cts.stats.data.read_metrics_file`).
      key: the metric to plot (e.g. "loss", "reward/mean"); runs without it are skipped.
      group_of: {run label: group}; a run without a group is its own group.
    """
    group_of = dict(group_of or {})
    runs = [r for r in sorted(curves) if key in curves[r]]
    if not runs:
        raise ValueError(f"plot_learning_curves: no run has metric {key!r}")
    groups: dict[str, list[str]] = {}
    for r in runs:
        groups.setdefault(group_of.get(r, r), []).append(r)
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for g, members in sorted(groups.items()):
        steps = np.unique(np.concatenate([np.asarray(curves[r]["step"]) for r in members]))
        grid = np.full((len(members), len(steps)), np.nan)  # [runs, steps]
        for i, r in enumerate(members):
            idx = np.searchsorted(steps, np.asarray(curves[r]["step"]))
            grid[i, idx] = np.asarray(curves[r][key], dtype=float)
        mean, lo, hi, n = _t_band(grid)
        ok = n > 0
        ax.plot(steps[ok], mean[ok], color=colors[g], lw=1.4,
                label=f"{g} (mean of {len(members)} seed{'s' if len(members) != 1 else ''})")
        band = n >= 2
        if band.any():
            ax.fill_between(steps[band], lo[band], hi[band], color=colors[g], alpha=0.2, lw=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{key} (mean ± 95% CI over seeds)")
    ax.set_title(title or f"{key} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_stem)


def _errorbar_series(ax, x, y, low, high, *, color, label, dodge):
    x = np.asarray(x, dtype=float) + dodge
    y = np.asarray(y, dtype=float)
    lo = np.array([np.nan if v is None else v for v in low], dtype=float)
    hi = np.array([np.nan if v is None else v for v in high], dtype=float)
    err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
    ax.errorbar(x, y, yerr=err, color=color, marker="o", ms=4, capsize=3, lw=1.3, label=label)


def _slope_text(c: Mapping) -> str:
    if c.get("slope") is None:
        return ""
    if c.get("slope_low") is None:
        return f" (slope {c['slope']:+.3f}/step)"
    return f" (slope {c['slope']:+.3f} [{c['slope_low']:+.3f}, {c['slope_high']:+.3f}]/step)"


def plot_horizon_curves(curves: Mapping[str, Mapping], *, out_stem: str | os.PathLike,
                        deltas: Mapping[str, Mapping] | None = None, metric: str = "accuracy",
                        title: str = "") -> list[str]:
    """The table's metric vs horizon H per method, and (right panel, when `deltas` is given)
    Δ vs the reference per comparison, each with its 95% run-level interval as error bars.

    Args:
      curves: {method: {horizons, mean, low, high, slope, slope_low, slope_high}} (None where an
        interval is undefined).
      deltas: {"A − B": {horizons, delta, low, high, slope, ...}} (`inference.horizon_contrasts`).
      metric: the metric's name for the axis labels (the table's primary metric).
    """
    panels = 2 if deltas else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    colors = _colors(list(curves))
    for i, m in enumerate(sorted(curves)):
        c = curves[m]
        _errorbar_series(ax, c["horizons"], c["mean"], c["low"], c["high"], color=colors[m],
                         label=m + _slope_text(c), dodge=(i - (len(curves) - 1) / 2) * 0.06)
    ax.set_xlabel("horizon H (steps of the reference solution)")
    ax.set_ylabel(f"{metric} [95% CI, run-level]")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title or f"{metric} vs horizon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if deltas:
        ax = axes[0, 1]
        dcol = _colors(list(deltas))
        for i, k in enumerate(sorted(deltas)):
            c = deltas[k]
            _errorbar_series(ax, c["horizons"], c["delta"], c["low"], c["high"], color=dcol[k],
                             label=k + _slope_text(c), dodge=(i - (len(deltas) - 1) / 2) * 0.06)
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set_xlabel("horizon H (steps of the reference solution)")
        ax.set_ylabel(f"Δ {metric} vs reference [95% CI, run-level]")
        ax.set_title("paired differences by horizon")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_stem)


def plot_delta_forest(rows: Sequence[Mapping], *, out_stem: str | os.PathLike, title: str = "",
                      metric: str = "accuracy", test: str = "") -> list[str]:
    """Forest plot of paired differences.

    Args:
      rows: dicts with label, delta, low, high and optionally significant (bool); drawn top to
        bottom in the given order.
      metric: what Δ is a difference of (axis label); test: the test behind "significant".
    """
    if not rows:
        raise ValueError("plot_delta_forest: no rows")
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        color = "tab:red" if r.get("significant") else "tab:blue"
        ax.errorbar([r["delta"]], [yi], xerr=[[r["delta"] - r["low"]], [r["high"] - r["delta"]]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel(f"Δ {metric} vs reference [95% CI]" + (f"; red: Holm-significant by {test}" if test else ""),
                  fontsize=8)
    ax.set_title(title or f"paired differences: {metric}")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out_stem)


def plot_taxonomy(breakdown: Mapping[str, Mapping[str, Mapping]], *, out_stem: str | os.PathLike,
                  title: str = "") -> list[str]:
    """Grouped bars: per error tag of the base failure, the fraction each method now solves.

    Args:
      breakdown: {method: {tag: {"n", "solved_rate"}}} (from `metrics.taxonomy_breakdown`).
    """
    tags = sorted({t for b in breakdown.values() for t in b})
    methods = sorted(breakdown)
    if not tags:
        raise ValueError("plot_taxonomy: no tagged base failures")
    colors = _colors(methods)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(tags) * max(1, len(methods) / 2)), 4.0))
    x = np.arange(len(tags))
    for i, m in enumerate(methods):
        vals = [breakdown[m].get(t, {}).get("solved_rate", np.nan) for t in tags]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, color=colors[m], label=m)
    ns = [max((breakdown[m].get(t, {}).get("n", 0) for m in methods), default=0) for t in tags]
    ax.set_xticks(x, [f"{t}\n(n={n})" for t, n in zip(tags, ns)], fontsize=8)
    ax.set_ylabel("fraction of base failures now solved")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "by error type of the base failure")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, out_stem)
