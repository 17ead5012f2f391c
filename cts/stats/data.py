"""Reading and validating the eval stage's per-problem JSONL, and pivoting it into matrices.

One eval file holds one (method, task, seed) cell, one row per test problem (schema in
`EVAL_FIELDS`). The statistics work on a task's correctness matrices `X[method]` of shape
[S, P] (seeds × problems), aligned so that column p is the same problem and row s the same
seed for every method: that alignment is what makes the comparisons paired.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cts.io import DataError, read_jsonl

__all__ = [
    "EVAL_FIELDS",
    "ABLATION_PATTERN",
    "TaskMatrices",
    "read_eval_files",
    "read_metrics_file",
    "is_ablation",
    "task_matrices",
]

# key -> allowed types. `bool` is checked exactly (Python's bool is an int subclass).
EVAL_FIELDS: dict[str, tuple[type, ...]] = {
    "problem_id": (str,),
    "task": (str,),
    "method": (str,),
    "seed": (int,),
    "horizon": (int,),
    "correct": (bool,),
    "n_samples": (int,),
    "n_correct": (int,),
    "base_correct": (bool,),
    "critiqued": (bool,),
    "base_first_error_step": (int, type(None)),
    "first_error_step": (int, type(None)),
    "taxonomy": (str, type(None)),
}

ABLATION_PATTERN = re.compile(r"^(?P<parent>.+)-A\d+$")  # "B5-A2": ablation A2 of method B5


def is_ablation(method: str) -> bool:
    """True for ablation ids such as "B5-A1" (compared against the ablation base, not the base)."""
    return bool(ABLATION_PATTERN.match(method))


def _type_ok(value, types: tuple[type, ...]) -> bool:
    if bool in types:
        return type(value) is bool
    if isinstance(value, bool):  # a bool where an int is expected is a schema error
        return False
    return isinstance(value, types)


def read_eval_files(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read and validate eval JSONL files; returns all rows (each a dict with `EVAL_FIELDS`).

    Raises DataError naming file:line for a missing key, a wrongly typed value,
    `n_correct > n_samples`, a negative count, or a (task, method, seed, problem_id) that
    appears twice (naming both places).
    """
    rows: list[dict] = []
    seen: dict[tuple, str] = {}
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("no eval files given")
    for path in paths:
        for lineno, row in enumerate(read_jsonl(path, required=EVAL_FIELDS), 1):
            where = f"{path}:{lineno}"  # read_jsonl skips blank lines; eval files have none
            for key, types in EVAL_FIELDS.items():
                if not _type_ok(row[key], types):
                    names = "|".join("null" if t is type(None) else t.__name__ for t in types)
                    raise DataError(f"{where}: key {key!r} must be {names}, got {row[key]!r}")
            if row["n_samples"] < 0 or not 0 <= row["n_correct"] <= row["n_samples"]:
                raise DataError(f"{where}: need 0 <= n_correct <= n_samples, got "
                                f"n_correct={row['n_correct']} n_samples={row['n_samples']}")
            if row["horizon"] < 1:
                raise DataError(f"{where}: key 'horizon' must be >= 1, got {row['horizon']}")
            cell = (row["task"], row["method"], row["seed"], row["problem_id"])
            if cell in seen:
                raise DataError(f"{where}: duplicate (task, method, seed, problem_id) {cell}, "
                                f"first seen at {seen[cell]}")
            seen[cell] = where
            rows.append(row)
    return rows


def read_metrics_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a training-metrics JSONL into {key: values[N]} sorted by `step`, `step` included.

    Rows need an int `step`. A key is kept when its values are numbers (bools and strings are
    not metrics); a key absent from some rows is NaN there, so metrics logged at different
    cadences still line up. A key that is numeric in one row and not in another raises
    DataError naming the row.
    """
    rows = read_jsonl(path, required=("step",))
    if not rows:
        raise DataError(f"{path}: no rows")
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for i, row in enumerate(rows, 1):
        if not _type_ok(row["step"], (int,)):
            raise DataError(f"{path}: row {i}: 'step' must be an int, got {row['step']!r}")
    keys = sorted({k for r in rows for k, v in r.items() if is_num(v)})
    for i, row in enumerate(rows, 1):
        for k in keys:
            if k in row and row[k] is not None and not is_num(row[k]):
                raise DataError(f"{path}: row {i}: metric {k!r} must be a number, got {row[k]!r}")
    rows = sorted(rows, key=lambda r: r["step"])
    return {k: np.array([np.nan if r.get(k) is None else float(r[k]) for r in rows]) for k in keys}


@dataclass
class TaskMatrices:
    """One task's eval results pivoted into aligned [S, P] matrices.

    Attributes:
      task: the task name.
      seeds: [S] the seeds present for every method (sorted).
      problem_ids: [P] the problems (sorted).
      horizons: [P] int array, H of each problem.
      correct: {method: float array [S, P]} greedy pass@1 as 0/1.
      sampled: {method: float array [S, P]} sampled pass@1, n_correct / n_samples (None for a
        method with a row that drew no samples).
      rows: {method: {(seed, problem_id): row}} the raw rows on the kept seeds.
      warnings: what was dropped to align the methods.
    """

    task: str
    seeds: list[int]
    problem_ids: list[str]
    horizons: np.ndarray
    correct: dict[str, np.ndarray]
    sampled: dict[str, np.ndarray | None]
    rows: dict[str, dict[tuple[int, str], dict]]
    warnings: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return sorted(self.correct)


def task_matrices(rows: Sequence[dict], task: str) -> TaskMatrices:
    """Pivot one task's rows into aligned matrices.

    Seeds not evaluated for every method are dropped (with a warning) so that every paired
    comparison uses the same seeds. Within a kept (method, seed) cell the problem set must
    equal the task's problem set: a missing or extra problem raises DataError naming the cell,
    because silently dropping problems would bias paired differences.
    """
    task_rows = [r for r in rows if r["task"] == task]
    if not task_rows:
        raise DataError(f"task {task!r}: no eval rows")
    by_method: dict[str, dict[tuple[int, str], dict]] = {}
    for r in task_rows:
        by_method.setdefault(r["method"], {})[(r["seed"], r["problem_id"])] = r
    seeds_of = {m: {s for s, _ in cells} for m, cells in by_method.items()}
    common = set.intersection(*seeds_of.values())
    warnings = []
    for m in sorted(by_method):
        extra = sorted(seeds_of[m] - common)
        if extra:
            warnings.append(f"task {task}: method {m}: seeds {extra} dropped "
                            "(not evaluated for every method)")
    if not common:
        raise DataError(f"task {task!r}: no seed is shared by all methods "
                        f"{ {m: sorted(s) for m, s in sorted(seeds_of.items())} }")
    seeds = sorted(common)
    problems = sorted({p for cells in by_method.values() for (s, p) in cells if s in common})
    problem_set = set(problems)
    for m, cells in sorted(by_method.items()):
        for s in seeds:
            got = {p for (ss, p) in cells if ss == s}
            if got != problem_set:
                missing, extra = sorted(problem_set - got), sorted(got - problem_set)
                raise DataError(f"task {task!r} method {m!r} seed {s}: problem set differs from "
                                f"the task's: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                                f", extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
    horizons = np.zeros(len(problems), dtype=int)
    for j, p in enumerate(problems):
        hs = {cells[(s, p)]["horizon"] for cells in by_method.values() for s in seeds}
        if len(hs) != 1:
            raise DataError(f"task {task!r} problem {p!r}: inconsistent horizon values {sorted(hs)}")
        horizons[j] = hs.pop()
    correct = {m: np.array([[float(cells[(s, p)]["correct"]) for p in problems] for s in seeds])
               for m, cells in by_method.items()}
    sampled = {}
    for m, cells in by_method.items():
        grid = [[cells[(s, p)] for p in problems] for s in seeds]
        sampled[m] = (None if any(r["n_samples"] == 0 for row in grid for r in row) else
                      np.array([[r["n_correct"] / r["n_samples"] for r in row] for row in grid]))
    kept = {m: {k: v for k, v in cells.items() if k[0] in common} for m, cells in by_method.items()}
    return TaskMatrices(task=task, seeds=seeds, problem_ids=problems, horizons=horizons,
                        correct=correct, sampled=sampled, rows=kept, warnings=warnings)
