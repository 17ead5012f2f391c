"""Run a candidate program against a code Problem's tests inside the sandbox.

Three test forms (`Problem.tests`):
  (a) assert strings (MBPP / synthetic): the candidate, then `test_setup`, then each assert,
      all in ONE sandboxed process and one namespace; each assert counts as one test. The
      setup runs AFTER the candidate because MBPP setups build objects of the solution's own
      classes (task 367: `root = Node(1)`); names it defines are still there when asserts run.
  (b) HumanEval: a single string defining `check(candidate)`; the harness calls
      `check(<entry_point>)`. Counts as one test.
  (c) APPS: dicts. {"input": str, "output": str} pairs, or {"inputs": [...], "outputs": [...]}
      (optionally with "fn_name"). Without fn_name each pair is a stdin→stdout run of the
      program (one sandboxed process per pair; lines compared after stripping); with fn_name
      each pair is a call `fn(*inputs)` compared with the output, in one process.

Forms (a), (b) and call-based (c) run a small harness that reports each test on its own
stdout line prefixed by a per-run random nonce; the nonce reaches the harness through a file
that it deletes before the candidate runs, so a candidate cannot print fake "passed" lines
without digging the nonce out of the harness's memory. Tests that never reported (the process
died, timed out or exited early) count as failed.

error_type is the failure kind of the first failing test: "syntax" (the candidate does not
compile), "runtime" (an exception, a crash, exceeding a resource limit), "wrong_output" (an
assert failed / output differs), "timeout" (the wall-clock limit); "none" when all pass.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cts.io import DataError
from cts.sandbox import SandboxLimits, SandboxResult, isolation_level, run_python
from cts.tasks.schema import Problem

__all__ = ["CodeVerdict", "ERROR_TYPES", "detect_test_form", "normalize_lines", "verify_code",
           "verify_many"]

ERROR_TYPES = ("none", "syntax", "runtime", "wrong_output", "timeout")
_MSG_CHARS = 500  # keep failure messages short: they end up in JSONL rows and prompts


@dataclass(frozen=True)
class CodeVerdict:
    """The outcome of one candidate on one problem.

    Attributes:
      passed: tests passed.
      total: tests run (assert count; 1 for HumanEval; pair count for APPS).
      all_passed: passed == total.
      error_type: one of ERROR_TYPES, the kind of the first failure ("none" if all passed).
      first_failure: a short description of the first failing test, None if all passed.
    """

    passed: int
    total: int
    all_passed: bool
    error_type: str
    first_failure: str | None

    def __post_init__(self):
        if self.error_type not in ERROR_TYPES:
            raise ValueError(f"error_type must be one of {ERROR_TYPES}, got {self.error_type!r}")
        if not 0 <= self.passed <= self.total:
            raise ValueError(f"passed={self.passed} outside [0, total={self.total}]")

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


# ----------------------------------------------------------------------------- test forms

def detect_test_form(problem: Problem) -> str:
    """"asserts" | "humaneval" | "stdio" | "call" for the problem's tests; DataError if mixed."""
    where = f"problem {problem.id!r}: tests"
    tests = problem.tests
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{where}: expected a non-empty list")
    if all(isinstance(t, str) for t in tests):
        if len(tests) == 1 and "def check(" in tests[0]:
            if not problem.entry_point:
                raise DataError(f"problem {problem.id!r}: HumanEval-style check() "
                                "needs entry_point")
            return "humaneval"
        return "asserts"
    if all(isinstance(t, dict) for t in tests):
        if all("fn_name" in t for t in tests):
            return "call"
        if all(("input" in t and "output" in t) or ("inputs" in t and "outputs" in t)
               for t in tests):
            return "stdio"
    raise DataError(f"{where}: expected assert strings, one check() string, or APPS dicts "
                    f"with input/output (or inputs/outputs[/fn_name]); got {tests[:1]!r}...")


def _stdio_pairs(problem: Problem) -> list[tuple[str, str]]:
    pairs = []
    for i, t in enumerate(problem.tests):
        where = f"problem {problem.id!r}: tests[{i}]"
        if "input" in t:
            inp, out = t["input"], t["output"]
            if not isinstance(inp, str) or not isinstance(out, str):
                raise DataError(f"{where}: input/output must be strings")
            pairs.append((inp, out))
        else:
            ins, outs = t["inputs"], t["outputs"]
            if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
                raise DataError(f"{where}: inputs/outputs must be lists of equal length")
            for inp, out in zip(ins, outs):
                pairs.append((_as_text(inp), _as_text(out)))
    return pairs


def _as_text(x: Any) -> str:
    # APPS stores some stdio cases as lists of lines.
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _call_cases(problem: Problem) -> tuple[str, list[list[Any]], list[Any]]:
    fn_names = {t["fn_name"] for t in problem.tests}
    if len(fn_names) != 1:
        raise DataError(f"problem {problem.id!r}: tests name several fn_name values "
                        f"{sorted(fn_names)}")
    inputs, outputs = [], []
    for i, t in enumerate(problem.tests):
        ins, outs = t.get("inputs"), t.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise DataError(f"problem {problem.id!r}: tests[{i}]: inputs/outputs must be lists "
                            "of equal length")
        inputs += [a if isinstance(a, list) else [a] for a in ins]
        outputs += outs
    return fn_names.pop(), inputs, outputs


def normalize_lines(text: str) -> list[str]:
    """Output lines, each stripped, without leading or trailing blank lines."""
    return [ln.strip() for ln in text.strip().splitlines()]


# ----------------------------------------------------------------------------- the harness

# Runs as main.py in the sandbox. Reads spec.json (nonce + tests) and deletes it before any
# candidate code runs; reports on a dup of fd 1 so a candidate that closes or redirects
# sys.stdout cannot hide the reports (missing reports count as failures anyway).
_HARNESS = r'''
import json, os, sys, traceback

def _harness():
    # Everything lives in this frame: the candidate's namespace is a separate dict, and
    # `import __main__` shows no nonce (only frame walking would find it).
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    os.remove("spec.json")
    nonce = spec.pop("nonce")
    out = os.dup(1)

    def report(**rec):
        os.write(out, ("\n" + nonce + " " + json.dumps(rec) + "\n").encode("utf-8"))

    def short(exc):
        return (type(exc).__name__ + ": " + str(exc))[:400]

    def err_kind(exc):
        return "wrong_output" if isinstance(exc, AssertionError) else "runtime"

    def plain(x):  # JSON has no tuples: compare tuples as lists
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    def same(got, want):
        got, want = plain(got), plain(want)
        # APPS wraps many expected values in a one-element list.
        return got == want or (isinstance(want, list) and len(want) == 1 and got == want[0])

    with open("solution.py", encoding="utf-8") as f:
        src = f.read()
    os.remove("solution.py")
    try:
        code = compile(src, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes
        report(kind="syntax", msg=short(e))
        return
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, ns)
    except BaseException as e:
        report(kind="load", msg=short(e), tb=traceback.format_exc()[-800:])
        return
    if spec["setup"]:  # after the candidate: MBPP setups build objects of its classes
        try:
            exec(compile(spec["setup"], "test_setup", "exec"), ns)
        except BaseException as e:
            report(kind="setup", msg=short(e))
            return
    form = spec["form"]
    if form == "asserts":
        for i, t in enumerate(spec["tests"]):
            try:
                exec(compile(t, "test_%d" % i, "exec"), ns)
                report(kind="test", i=i, ok=True)
            except BaseException as e:
                report(kind="test", i=i, ok=False, err=err_kind(e), msg=short(e))
    elif form == "humaneval":
        try:
            exec(compile(spec["tests"][0], "check", "exec"), ns)
            ns["check"](ns[spec["entry_point"]])
            report(kind="test", i=0, ok=True)
        except BaseException as e:
            report(kind="test", i=0, ok=False, err=err_kind(e), msg=short(e))
    elif form == "call":
        name = spec["fn_name"]
        fn = ns.get(name)
        if fn is None and isinstance(ns.get("Solution"), type):
            fn = getattr(ns["Solution"](), name, None)  # LeetCode-style APPS solutions
        for i, (args, want) in enumerate(zip(spec["inputs"], spec["outputs"])):
            if fn is None:
                report(kind="test", i=i, ok=False, err="runtime", msg="no function %r" % name)
                continue
            try:
                got = fn(*args)
                ok = same(got, want)
                report(kind="test", i=i, ok=ok, err=None if ok else "wrong_output",
                       msg=None if ok else ("got %r, expected %r" % (got, want))[:400])
            except BaseException as e:
                report(kind="test", i=i, ok=False, err="runtime", msg=short(e))

_harness()
'''


def _parse_reports(stdout: str, nonce: str) -> list[dict]:
    reports = []
    prefix = nonce + " "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            try:
                reports.append(json.loads(line[len(prefix):]))
            except json.JSONDecodeError:
                continue  # a truncated last line
    return reports


def _process_failure(res: SandboxResult) -> tuple[str, str]:
    """(error_type, message) for a run whose reports stopped early."""
    if res.timed_out:
        return "timeout", f"timed out after {res.wall_s:.1f}s"
    if res.output_truncated:
        return "runtime", "output limit exceeded"
    if res.killed_by_signal is not None:
        return "runtime", f"killed by signal {res.killed_by_signal}"
    tail = res.stderr.strip().splitlines()[-1:] or [""]
    msg = f"process exited with status {res.returncode} before finishing: {tail[0]}"
    return "runtime", msg[:_MSG_CHARS]


def _harness_verdict(problem: Problem, code: str, form: str, limits: SandboxLimits,
                     isolation: str | None) -> CodeVerdict:
    spec: dict[str, Any] = {"form": form, "setup": problem.test_setup or "",
                            "entry_point": problem.entry_point}
    if form == "call":
        spec["fn_name"], spec["inputs"], spec["outputs"] = _call_cases(problem)
        total = len(spec["inputs"])
    else:
        spec["tests"] = list(problem.tests)
        total = 1 if form == "humaneval" else len(problem.tests)
    nonce = "@@" + secrets.token_hex(16) + "@@"
    try:
        spec_text = json.dumps({**spec, "nonce": nonce}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DataError(f"problem {problem.id!r}: tests are not JSON-serializable: {e}") from e
    res = run_python(_HARNESS, limits=limits, isolation=isolation,
                     extra_files={"spec.json": spec_text, "solution.py": code})
    reports = _parse_reports(res.stdout, nonce)
    by_test: dict[int, dict] = {}
    for rec in reports:
        kind = rec.get("kind")
        if kind == "syntax":
            return CodeVerdict(0, total, False, "syntax", f"{rec.get('msg')}"[:_MSG_CHARS])
        if kind == "setup":  # e.g. the setup instantiates a class the candidate lacks
            msg = f"test_setup raised with this solution: {rec.get('msg')}"
            return CodeVerdict(0, total, False, "runtime", msg[:_MSG_CHARS])
        if kind == "load":
            msg = f"solution raised while loading: {rec.get('msg')}"
            return CodeVerdict(0, total, False, "runtime", msg[:_MSG_CHARS])
        if kind == "test" and isinstance(rec.get("i"), int) and 0 <= rec["i"] < total:
            by_test.setdefault(rec["i"], rec)  # first report wins: later ones may be forged
    passed = sum(1 for rec in by_test.values() if rec.get("ok") is True)
    first_type, first_msg = "none", None
    for i in range(total):
        rec = by_test.get(i)
        if rec is None:
            first_type, first_msg = _process_failure(res)
            first_msg = f"test {i}: {first_msg}"
            break
        if rec.get("ok") is not True:
            first_type = rec.get("err") if rec.get("err") in ERROR_TYPES else "runtime"
            first_msg = f"test {i}: {_describe(problem, form, i)}: {rec.get('msg')}"
            first_msg = first_msg[:_MSG_CHARS]
            break
    return CodeVerdict(passed, total, first_type == "none", first_type, first_msg)


def _describe(problem: Problem, form: str, i: int) -> str:
    if form == "asserts":
        return problem.tests[i].strip()[:200]
    if form == "humaneval":
        return f"check({problem.entry_point})"
    return f"case {i}"


def _stdio_verdict(problem: Problem, code: str, limits: SandboxLimits,
                   isolation: str | None) -> CodeVerdict:
    # The program itself is main.py; compile it first in the sandbox so a syntax error is
    # reported as such rather than as a runtime failure of the first case.
    check = ("import sys\ntry:\n    compile(open('solution.py', encoding='utf-8').read(), "
             "'solution.py', 'exec')\nexcept (SyntaxError, ValueError) as e:\n"
             "    print(type(e).__name__ + ': ' + str(e)); sys.exit(3)\n")
    pairs = _stdio_pairs(problem)
    total = len(pairs)
    res = run_python(check, limits=limits, isolation=isolation, extra_files={"solution.py": code})
    if res.returncode == 3:
        return CodeVerdict(0, total, False, "syntax", res.stdout.strip()[:_MSG_CHARS])
    if res.returncode != 0:
        return CodeVerdict(0, total, False, *_process_failure(res))
    passed, first_type, first_msg = 0, "none", None
    for i, (inp, want) in enumerate(pairs):
        res = run_python(code, stdin=inp, limits=limits, isolation=isolation)
        if res.returncode == 0 and not res.output_truncated:
            if normalize_lines(res.stdout) == normalize_lines(want):
                passed += 1
                continue
            err, msg = "wrong_output", (f"case {i}: got {res.stdout.strip()[:150]!r}, "
                                        f"expected {want.strip()[:150]!r}")
        else:
            err, msg = _process_failure(res)
            if not res.timed_out and res.returncode is not None:
                tail = res.stderr.strip().splitlines()[-1:] or [""]
                msg = f"exit status {res.returncode}: {tail[0]}"
            msg = f"case {i}: {msg}"
        if first_msg is None:
            first_type, first_msg = err, msg[:_MSG_CHARS]
        if res.timed_out:
            break  # the rest would likely time out too; they count as failed
    return CodeVerdict(passed, total, passed == total, first_type, first_msg)


def verify_code(problem: Problem, code: str, *, limits: SandboxLimits = SandboxLimits(),
                isolation: str | None = None) -> CodeVerdict:
    """Run `code` against `problem.tests` in the sandbox.

    Args:
      problem: a Problem with kind "code" (tests in one of the forms of the module docstring).
      code: the candidate's source.
      limits: sandbox limits per process (the wall-clock limit covers all asserts of form (a)).
      isolation: force a sandbox level (default: the best available).

    Raises:
      DataError: the problem is not a code problem or its tests are malformed.
    """
    if problem.kind != "code":
        raise DataError(f"problem {problem.id!r}: verify_code needs kind='code', "
                        f"got {problem.kind!r}")
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    form = detect_test_form(problem)
    if form == "stdio":
        return _stdio_verdict(problem, code, limits, isolation)
    return _harness_verdict(problem, code, form, limits, isolation)


def verify_many(items: Sequence[tuple[Problem, str]], *, workers: int = 2,
                limits: SandboxLimits = SandboxLimits(),
                isolation: str | None = None) -> list[CodeVerdict]:
    """verify_code over (problem, code) pairs with a bounded thread pool; order preserved."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isolation is None:
        isolation = isolation_level()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda it: verify_code(it[0], it[1], limits=limits,
                                                    isolation=isolation), items))

