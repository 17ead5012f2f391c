"""Blinded human evaluation: export a sample, import the labels, measure agreement and quality.

Round trip:
  1. `export_blinded_sample(items, ...)` draws up to n items per method (seeded), shuffles
     them, numbers them `item-0001`, ... in shuffled order, and writes two CSVs: the blinded
     sheet (item_id, task, prompt, response, empty label column — no method, no seed) for the
     annotators, and the key (item_id → method, task, problem_id, seed, teacher labels) kept
     away from them.
  2. Annotators fill `label` (and optionally `annotator`) and return CSVs.
  3. `import_annotations(files, key, labels=...)` validates them: an unknown item id, a label
     outside the allowed set, an empty label or a duplicate (annotator, item) raises DataError
     naming the file and row.
  4. `summarize_human_eval(...)`: Cohen κ for every pair of raters (annotator–annotator,
     teacher–annotator, teacher–teacher) and per-method mean quality with a bootstrap CI.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cts.io import DataError, atomic_write_text
from cts.stats.kappa import pairwise_kappa

__all__ = [
    "ITEM_KEYS",
    "TEACHER_PREFIX",
    "export_blinded_sample",
    "read_key",
    "import_annotations",
    "summarize_human_eval",
]

ITEM_KEYS = ("task", "method", "problem_id", "seed", "prompt", "response")
TEACHER_PREFIX = "teacher:"  # key-file column prefix for a teacher's label of the item
BLINDED_COLUMNS = ("item_id", "task", "prompt", "response", "label", "annotator", "comment")


def _csv_text(header: Sequence[str], rows: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in header})
    return buf.getvalue()


def export_blinded_sample(items: Sequence[dict], *, n_per_method: int, seed: int,
                          out_csv: str | os.PathLike, out_key: str | os.PathLike) -> list[dict]:
    """Sample, blind and write the annotation sheet and its key; returns the key rows.

    Args:
      items: dicts with ITEM_KEYS and optionally `teacher_labels` ({teacher name: label}).
      n_per_method: items drawn per method (all of a method's items if it has fewer); equal
        numbers per method keep per-method quality estimates comparably precise.
      seed: seeds the draw and the shuffle (same inputs + seed → same files).
      out_csv: the blinded sheet. out_key: the key CSV.
    """
    if n_per_method < 1:
        raise ValueError(f"n_per_method must be >= 1, got {n_per_method}")
    for i, it in enumerate(items):
        missing = [k for k in ITEM_KEYS if k not in it]
        if missing:
            raise DataError(f"item {i}: missing key(s) {missing}")
    # canonical order first, so the draw does not depend on the caller's item order
    ordered = sorted(items, key=lambda it: (it["method"], it["task"], it["problem_id"], int(it["seed"])))
    seen = set()
    for it in ordered:
        k = (it["method"], it["task"], it["problem_id"], int(it["seed"]))
        if k in seen:
            raise DataError(f"duplicate item (method, task, problem_id, seed) {k}")
        seen.add(k)
    rng = np.random.default_rng(seed)
    picked = []
    for method in sorted({it["method"] for it in ordered}):
        pool = [it for it in ordered if it["method"] == method]
        take = rng.choice(len(pool), size=min(n_per_method, len(pool)), replace=False)
        picked += [pool[j] for j in sorted(take)]
    picked = [picked[j] for j in rng.permutation(len(picked))]
    width = max(4, len(str(len(picked))))
    teachers = sorted({t for it in picked for t in it.get("teacher_labels", {}) or {}})
    blinded, key = [], []
    for n, it in enumerate(picked, 1):
        item_id = f"item-{n:0{width}d}"
        blinded.append({"item_id": item_id, "task": it["task"], "prompt": it["prompt"],
                        "response": it["response"]})
        row = {"item_id": item_id, "method": it["method"], "task": it["task"],
               "problem_id": it["problem_id"], "seed": int(it["seed"])}
        for t in teachers:
            label = (it.get("teacher_labels") or {}).get(t)
            row[TEACHER_PREFIX + t] = "" if label is None else label
        key.append(row)
    atomic_write_text(out_csv, _csv_text(BLINDED_COLUMNS, blinded))
    atomic_write_text(out_key, _csv_text(["item_id", "method", "task", "problem_id", "seed"]
                                         + [TEACHER_PREFIX + t for t in teachers], key))
    return key


def read_key(path: str | os.PathLike) -> dict[str, dict]:
    """Read a key CSV into {item_id: {method, task, problem_id, seed, teacher_labels}}."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"item_id", "method", "task", "problem_id", "seed"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: key file needs columns {sorted(need)}, got {reader.fieldnames}")
        out = {}
        for row in reader:
            where = f"{path}: row {reader.line_num}"
            if row["item_id"] in out:
                raise DataError(f"{where}: duplicate item_id {row['item_id']!r}")
            try:
                seed = int(row["seed"])
            except ValueError:
                raise DataError(f"{where}: seed must be an int, got {row['seed']!r}") from None
            out[row["item_id"]] = {
                "method": row["method"], "task": row["task"], "problem_id": row["problem_id"],
                "seed": seed,
                "teacher_labels": {k[len(TEACHER_PREFIX):]: v for k, v in row.items()
                                   if k.startswith(TEACHER_PREFIX) and v != ""}}
    return out


def import_annotations(paths: Sequence[str | os.PathLike], key: Mapping[str, dict], *,
                       labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """Read annotator CSVs (columns item_id, label[, annotator]) into {annotator: {item_id: label}}.

    The annotator is the row's `annotator` value, or the file's stem when the column is absent
    or blank. Raises DataError naming file and row for an unknown item id, an empty label, a
    label outside `labels`, or a second label for the same (annotator, item).
    """
    allowed = set(labels)
    out: dict[str, dict[str, str]] = {}
    first_seen: dict[tuple[str, str], str] = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"item_id", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path}: needs columns item_id and label, got {reader.fieldnames}")
            for row in reader:
                where = f"{path}: row {reader.line_num}"
                item, label = row["item_id"].strip(), (row["label"] or "").strip()
                annotator = (row.get("annotator") or "").strip() or Path(path).stem
                if item not in key:
                    raise DataError(f"{where}: unknown item_id {item!r} (not in the key file)")
                if not label:
                    raise DataError(f"{where}: empty label for item {item!r}")
                if label not in allowed:
                    raise DataError(f"{where}: label {label!r} for item {item!r} not in {sorted(allowed)}")
                if (annotator, item) in first_seen:
                    raise DataError(f"{where}: duplicate label by {annotator!r} for item {item!r} "
                                    f"(first at {first_seen[(annotator, item)]})")
                first_seen[(annotator, item)] = where
                out.setdefault(annotator, {})[item] = label
    return out


def summarize_human_eval(annotations: Mapping[str, Mapping[str, str]], key: Mapping[str, dict], *,
                         label_scores: Mapping[str, float], n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> dict:
    """Agreement and per-method human-judged quality.

    Args:
      annotations: {annotator: {item_id: label}} (from `import_annotations`).
      key: {item_id: {...}} (from `read_key`).
      label_scores: quality score of each label (e.g. {"correct": 1, "partly": 0.5, "wrong": 0});
        also fixes the label set and order used for κ.
      n_boot, seed: percentile bootstrap over items within a method.

    Returns {"kappa": [pairwise dicts with rater_a, rater_b, kind, κ fields],
             "methods": {method: {"n_items", "mean", "low", "high"}}}; an item's score is the mean
    of its annotators' label scores.
    """
    labels = list(label_scores)
    ratings: dict[str, dict[str, str]] = {f"human:{a}": dict(v) for a, v in annotations.items()}
    for item_id, info in sorted(key.items()):
        for teacher, label in info["teacher_labels"].items():
            if label not in label_scores:
                raise DataError(f"key: item {item_id!r}: teacher {teacher!r} label {label!r} "
                                f"not in {labels}")
            ratings.setdefault(TEACHER_PREFIX + teacher, {})[item_id] = label
    for annotator, labs in sorted(annotations.items()):
        for item_id, label in labs.items():
            if item_id not in key or label not in label_scores:
                raise DataError(f"annotator {annotator!r}: item {item_id!r} label {label!r}: "
                                "item not in the key or label not in label_scores")
    kappas = pairwise_kappa(ratings, labels=labels)
    for k in kappas:
        kinds = sorted(r.split(":", 1)[0] for r in (k["rater_a"], k["rater_b"]))
        k["kind"] = "-".join(kinds)  # human-human, human-teacher, teacher-teacher
    item_scores: dict[str, list[float]] = {}
    for labs in annotations.values():
        for item_id, label in labs.items():
            item_scores.setdefault(item_id, []).append(float(label_scores[label]))
    by_method: dict[str, list[float]] = {}
    for item_id in sorted(item_scores):
        by_method.setdefault(key[item_id]["method"], []).append(float(np.mean(item_scores[item_id])))
    rng = np.random.default_rng(seed)
    a = (1 - confidence) / 2
    methods = {}
    for method in sorted(by_method):
        s = np.array(by_method[method])
        boot = s[rng.integers(0, len(s), size=(n_boot, len(s)))].mean(axis=1)
        lo, hi = np.quantile(boot, [a, 1 - a])
        methods[method] = {"n_items": len(s), "mean": float(s.mean()), "low": float(lo), "high": float(hi)}
    return {"kappa": kappas, "methods": methods}
