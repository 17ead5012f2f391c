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


def plot_learning_curves(curves: Mapping[str, Mapping[str, np.ndarray]], *, key: str,
                         out_stem: str | os.PathLike, group_of: Mapping[str, str] | None = None,
                         title: str = "") -> list[str]:
    """One line per run of metric `key` against `step`.

    Args:
      curves: {run label: {"step": [N], key: [N], ...}} (from `cts.stats.data.read_metrics_file`).
      key: the metric to plot (e.g. "loss", "reward/mean"); runs without it are skipped.
      group_of: {run label: group} — runs of one group (a method) share a colour.
    """
    group_of = dict(group_of or {})
    runs = [r for r in sorted(curves) if key in curves[r]]
    if not runs:
        raise ValueError(f"plot_learning_curves: no run has metric {key!r}")
    colors = _colors([group_of.get(r, r) for r in runs])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labelled = set()
    for r in runs:
        g = group_of.get(r, r)
        y = np.asarray(curves[r][key], dtype=float)
        ok = ~np.isnan(y)
        ax.plot(np.asarray(curves[r]["step"])[ok], y[ok], color=colors[g], lw=1.2, alpha=0.8,
                label=None if g in labelled else g)
        labelled.add(g)
    ax.set_xlabel("training step")
    ax.set_ylabel(key)
    ax.set_title(title or f"{key} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_stem)


def plot_horizon_curves(curves: Mapping[str, Mapping], *, out_stem: str | os.PathLike,
                        title: str = "") -> list[str]:
    """Accuracy vs horizon H, one line per method with its 95% interval as a band/error bars.

    Args:
      curves: {method: HorizonCurve.to_dict()} — keys horizons, accuracy, low, high (None where
        undefined) and slope.
    """
    colors = _colors(list(curves))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, m in enumerate(sorted(curves)):
        c = curves[m]
        h = np.asarray(c["horizons"], dtype=float) + (i - (len(curves) - 1) / 2) * 0.06  # dodge
        acc = np.asarray(c["accuracy"], dtype=float)
        lo = np.array([np.nan if v is None else v for v in c["low"]], dtype=float)
        hi = np.array([np.nan if v is None else v for v in c["high"]], dtype=float)
        err = np.vstack([np.nan_to_num(acc - lo), np.nan_to_num(hi - acc)])
        slope = "" if c.get("slope") is None else f" (slope {c['slope']:+.3f}/step)"
        ax.errorbar(h, acc, yerr=err, color=colors[m], marker="o", ms=4, capsize=3, lw=1.3,
                    label=m + slope)
    ax.set_xlabel("horizon H (steps of the reference solution)")
    ax.set_ylabel("greedy accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title or "accuracy vs horizon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_stem)


def plot_delta_forest(rows: Sequence[Mapping], *, out_stem: str | os.PathLike,
                      title: str = "") -> list[str]:
    """Forest plot of paired differences.

    Args:
      rows: dicts with label, delta, low, high and optionally significant (bool); drawn top to
        bottom in the given order.
    """
    if not rows:
        raise ValueError("plot_delta_forest: no rows")
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        color = "tab:red" if r.get("significant") else "tab:blue"
        ax.errorbar([r["delta"]], [yi], xerr=[[r["delta"] - r["low"]], [r["high"] - r["delta"]]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel("Δ accuracy vs reference [95% bootstrap CI] (red: Holm-significant)")
    ax.set_title(title or "paired differences")
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
