"""Run a candidate program against a code Problem's tests; the verdict is decided outside its reach.

Three test forms (`Problem.tests`):
  (a) assert strings (MBPP / synthetic): each assert counts as one test. The setup runs AFTER the
      candidate, in its namespace, because MBPP setups build objects of the solution's own classes
      (task 367: `root = Node(1)`).
  (b) HumanEval: a single string defining `check(candidate)` whose body is straight-line asserts;
      counts as one test (every assert must hold).
  (c) APPS: dicts. {"input": str, "output": str} pairs, or {"inputs": [...], "outputs": [...]}
      (optionally with "fn_name"). Without fn_name each pair is a stdin→stdout run of the
      program (one sandboxed process per pair; lines compared in the parent after stripping);
      with fn_name each pair is a call `fn(*inputs)`, in one process.

Unforgeable verdicts (forms a, b and call-based c). Each assert is split by
`cts.verifiers.trusted.split_test` into *holes* — the sub-expressions that need the candidate's
code (`f(3)` in `assert f(3) == 7`) — and a *skeleton* the parent evaluates. Only the holes'
source text (and call inputs) enters the sandbox; the harness evaluates them next to the candidate
and prints each value as tagged plain data (exact builtin types; subclasses and other objects are
"not plain data" and fail the test). The parent decodes the values and evaluates the skeleton
with the expected values, which never enter the sandbox. So a candidate that walks the harness's
frames, patches builtins (`print`, `json.dumps`, `os.write`, `sys.exit`, `AssertionError`),
returns always-equal objects or int/str/list subclasses, prints fake reports, writes files, or
exits early can at most claim values for its own holes: it passes a test only with the right value.
Holes that never reported (the process died, timed out or exited early) count as failed tests.

error_type is the failure kind of the first failing test: "syntax" (the candidate does not
compile), "runtime" (an exception, a crash, exceeding a resource limit), "wrong_output" (an
assert failed / output differs / a value is not plain data), "timeout" (the wall-clock limit);
"none" when all pass.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cts.io import DataError
from cts.verifiers.sandbox import SandboxLimits, SandboxResult, isolation_level, run_python
from cts.tasks.schema import Problem
from cts.verifiers.trusted import (SplitTest, UnsupportedTest, bound_names, decode_plain,
                                   evaluate_skeleton, split_humaneval_check, split_test)

__all__ = ["CodeVerdict", "ERROR_TYPES", "check_verifiable", "code_of", "detect_test_form", "normalize_lines",
           "verifiable_problems", "verify_code", "verify_many"]

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


_FENCE = re.compile(r"^```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def code_of(completion: str) -> str:
    """The program in a completion: an instruct model's Markdown answer (prose around a fenced
    block) is cut to the LAST fenced block tagged python/py or untagged, as LiveCodeBench's
    harness does; a completion without a fence is the program as it is."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in ("", "python", "py", "python3")]
    return blocks[-1] if blocks else completion


# ----------------------------------------------------------------------------- test forms

def detect_test_form(problem: Problem) -> str:
    """"asserts" | "humaneval" | "stdio" | "call" for the problem's tests; DataError if mixed."""
    where = f"problem {problem.id!r}: tests"
    tests = problem.tests
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{where}: expected a non-empty list")
    if all(isinstance(t, str) for t in tests):
        # HumanEval: its check(candidate) source, optionally followed by the loader's call line
        call_line = f"check({problem.entry_point})" if problem.entry_point else None
        if "def check(" in tests[0] and (len(tests) == 1 or (len(tests) == 2 and tests[1].strip() == call_line)):
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

# Runs as main.py in the sandbox. It never sees an expected value: it evaluates the source text of
# each hole (a sub-expression that needs the candidate's code, see cts.verifiers.trusted) and
# prints its value in a tagged plain-data form; the parent decodes that and decides. Nothing this
# process prints can do more than claim values for its own holes, so a candidate that walks
# frames, patches builtins, prints fake lines or exits early gains nothing it could not get by
# returning those values honestly. Reports go to a dup of fd 1 (a candidate that closes sys.stdout
# still gets its values reported) behind a per-run nonce (so stray prints are not parsed).
_HARNESS = r"""
import json, os, sys

def _harness():
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    os.remove("spec.json")
    nonce = spec.pop("nonce")
    out = os.dup(1)
    _type, _repr, _len, _isinstance = type, repr, len, isinstance
    import collections
    _dicts = (collections.Counter, collections.OrderedDict, collections.defaultdict)

    def report(**rec):
        os.write(out, ("\n" + nonce + " " + json.dumps(rec) + "\n").encode("utf-8"))

    def short(exc):
        return (_type(exc).__name__ + ": " + str(exc))[:400]

    class Unplain(Exception):
        pass

    def encode(x, depth=0):
        # exact types only: a subclass or any other object is not plain data
        if depth > 100:
            raise Unplain("nested too deeply")
        t = _type(x)
        if x is None:
            return ["none", None]
        if t is bool:
            return ["bool", x]
        if t is int:
            return ["int", x if -2**53 < x < 2**53 else str(x)]
        if t is float:
            return ["float", _repr(x)]
        if t is complex:
            return ["complex", [_repr(x.real), _repr(x.imag)]]
        if t is str:
            return ["str", x]
        if t is bytes:
            return ["bytes", x.hex()]
        if t in (list, tuple, set, frozenset):
            items = sorted(x, key=_repr) if t in (set, frozenset) else x
            return [t.__name__, [encode(v, depth + 1) for v in items]]
        if t is dict or t in _dicts:  # Counter etc. compare as the dicts they are
            return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]]
        raise Unplain(t.__name__)

    def where(exc):  # the candidate's line the exception came from: evidence for a critique
        tb, line = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "solution.py":
                line = tb.tb_lineno
            tb = tb.tb_next
        return "" if line is None else " (solution.py line %d)" % line

    def value(key, thunk):
        try:
            v = thunk()
        except BaseException as e:
            report(kind="value", k=key, err="runtime", msg=short(e) + where(e))
            return
        try:
            report(kind="value", k=key, v=encode(v))
        except Unplain as e:
            report(kind="value", k=key, unplain=str(e)[:100])
        except BaseException as e:  # e.g. an int too long to print
            report(kind="value", k=key, unplain=short(e))

    src = ""
    if os.path.exists("solution.py"):
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
        report(kind="load", msg=short(e) + where(e))
        return
    if spec["setup"]:  # after the candidate: MBPP setups build objects of its classes
        try:
            exec(compile(spec["setup"], "test_setup", "exec"), ns)
        except BaseException as e:
            report(kind="setup", msg=short(e))
            return
    for m in spec.get("modules", []):  # reference runs: the stdlib modules their holes name
        ns[m] = __import__(m)
    for key, source in spec["holes"]:
        value(key, lambda: eval(compile(source, "test", "eval"), ns))
    for key, name, args in spec["calls"]:
        def call(name=name, args=args):
            fn = ns.get(name)
            if fn is None and _isinstance(ns.get("Solution"), type):
                fn = getattr(ns["Solution"](), name, None)  # LeetCode-style APPS solutions
            if fn is None:
                raise NameError("no function %r" % name)
            return fn(*args)
        value(key, call)

_harness()
"""


def _parse_reports(stdout: str, nonce: str) -> list[dict]:
    reports = []
    prefix = nonce + " "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            try:
                rec = json.loads(line[len(prefix):])
            except json.JSONDecodeError:
                continue  # a truncated last line
            if isinstance(rec, dict):
                reports.append(rec)
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


@dataclass
class _Run:
    """What one harness run reported: values by key, and a fatal report (syntax/load/setup)."""

    values: dict[str, dict]
    fatal: dict | None
    result: SandboxResult | None


def _run_harness(code: str | None, setup: str, holes: list[tuple[str, str]],
                 calls: list[tuple[str, str, list]], limits: SandboxLimits, isolation: str | None,
                 where: str, modules: list[str] = ()) -> _Run:
    if not holes and not calls:
        return _Run({}, None, None)
    nonce = "@@" + secrets.token_hex(16) + "@@"
    spec = {"setup": setup, "holes": holes, "calls": calls, "nonce": nonce,
            "modules": sorted(set(modules))}
    try:
        spec_text = json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: test inputs are not JSON-serializable: {e}") from e
    files = {"spec.json": spec_text}
    if code is not None:
        files["solution.py"] = code
    res = run_python(_HARNESS, limits=limits, isolation=isolation, extra_files=files)
    values: dict[str, dict] = {}
    fatal = None
    for rec in _parse_reports(res.stdout, nonce):
        kind = rec.get("kind")
        if kind in ("syntax", "load", "setup") and fatal is None and not values:
            fatal = rec
        elif kind == "value" and isinstance(rec.get("k"), str):
            values.setdefault(rec["k"], rec)  # first report wins
    return _Run(values, fatal, res)


def _hole_value(rec: dict) -> tuple[str, Any]:
    """("ok", value) | ("runtime", msg) | ("unplain", msg) for one value report."""
    if "v" in rec:
        try:
            return "ok", decode_plain(rec["v"])
        except (ValueError, TypeError, OverflowError) as e:
            return "unplain", f"malformed value report ({e})"
    if "unplain" in rec:
        return "unplain", (f"returned a value that is not plain data "
                           f"({str(rec['unplain'])[:100]}); only None, bool, int, float, complex, "
                           f"str, bytes, list, tuple, dict, set and frozenset are compared")
    return "runtime", str(rec.get("msg"))[:400]


def _fatal_verdict(fatal: dict, total: int) -> CodeVerdict:
    kind = fatal.get("kind")
    msg = str(fatal.get("msg"))
    if kind == "syntax":
        return CodeVerdict(0, total, False, "syntax", msg[:_MSG_CHARS])
    if kind == "setup":  # e.g. the setup instantiates a class the candidate lacks
        return CodeVerdict(0, total, False, "runtime",
                           f"test_setup raised with this solution: {msg}"[:_MSG_CHARS])
    return CodeVerdict(0, total, False, "runtime",
                       f"solution raised while loading: {msg}"[:_MSG_CHARS])


def _split_tests(problem: Problem, form: str) -> list[SplitTest]:
    # names the reference solution and setup define are the solution's (MBPP 126 defines `sum`);
    # never names the candidate chose, or it could move the expected side into its own process
    shadowed = bound_names(problem.reference or "") | bound_names(problem.test_setup or "")
    if problem.entry_point:
        shadowed |= {problem.entry_point}
    try:
        if form == "humaneval":
            return split_humaneval_check(problem.tests[0], problem.entry_point, shadowed)
        return [split_test(t, shadowed) for t in problem.tests]
    except UnsupportedTest as e:
        raise DataError(f"problem {problem.id!r}: {e}") from None


def check_verifiable(problem: Problem) -> None:
    """DataError naming the problem and the test line when its tests cannot be decided by the
    trusted parent (e.g. a HumanEval check() that loops over candidate calls); cheap, no sandbox."""
    form = detect_test_form(problem)
    if form != "stdio":
        _split_tests(problem, form)


def verifiable_problems(problems: list[Problem], log=print) -> list[Problem]:
    """The problems whose tests the trusted parent can decide (check_verifiable; every math problem).
    The others are left out here, named in the log, rather than failing a training job later
    (7 of HumanEval's 164). DataError when none is left."""
    kept, dropped = [], []
    for p in problems:
        try:
            if p.kind == "code":
                check_verifiable(p)
            kept.append(p)
        except DataError as e:
            dropped.append(str(e))
    if dropped:
        log(f"left out {len(dropped)} of {len(problems)} problems whose tests cannot be verified outside "
            "the candidate's process:\n  " + "\n  ".join(dropped))
    if not kept:
        raise DataError(f"no verifiable problems among {len(problems)}")
    return kept


def _harness_verdict(problem: Problem, code: str, form: str, limits: SandboxLimits,
                     isolation: str | None) -> CodeVerdict:
    where = f"problem {problem.id!r}"
    if form == "call":
        fn_name, inputs, outputs = _call_cases(problem)
        tests = None
        cand_holes: list[tuple[str, str]] = []
        ref_holes: list[tuple[str, str]] = []
        calls = [(f"c{i}", fn_name, args) for i, args in enumerate(inputs)]
        total = len(inputs)
    else:
        tests = _split_tests(problem, form)
        cand_holes = [(f"t{i}h{j}", h.source) for i, t in enumerate(tests)
                      for j, h in enumerate(t.holes) if not h.reference]
        ref_holes = [(f"t{i}h{j}", h.source) for i, t in enumerate(tests)
                     for j, h in enumerate(t.holes) if h.reference]
        calls = []
        total = 1 if form == "humaneval" else len(tests)
    run = _run_harness(code, problem.test_setup or "", cand_holes, calls, limits, isolation, where)
    if run.fatal is not None:
        return _fatal_verdict(run.fatal, total)
    # expected-side sub-expressions that only the interpreter can compute: a run without the candidate
    modules = [m for t in (tests or []) for h in t.holes if h.reference for m in h.modules]
    ref = _run_harness(None, "", ref_holes, [], limits, isolation, where, modules)
    values = {**run.values, **ref.values}

    outcomes: list[tuple[str, str | None]] = []  # per test: (error_type, message)
    if tests is None:
        for i, want in enumerate(outputs):
            rec = values.get(f"c{i}")
            if rec is None:
                outcomes.append(("missing", None))
                continue
            status, got = _hole_value(rec)
            if status != "ok":
                outcomes.append(("runtime" if status == "runtime" else "wrong_output", got))
            elif _same(got, want):
                outcomes.append(("none", None))
            else:
                outcomes.append(("wrong_output", f"got {got!r}, expected {want!r}"[:400]))
    else:
        for i, t in enumerate(tests):
            outcomes.append(_decide(i, t, values))
    if form == "humaneval":  # one test: every assert of check() must hold
        bad = next((o for o in outcomes if o[0] != "none"), None)
        outcomes = [bad or ("none", None)]
    passed = sum(1 for kind, _ in outcomes if kind == "none")
    first_type, first_msg = "none", None
    for i, (kind, msg) in enumerate(outcomes):
        if kind == "none":
            continue
        if kind == "missing":
            res = run.result if run.result is not None else ref.result
            first_type, msg = _process_failure(res)
        else:
            first_type = kind
        first_msg = f"test {i}: {_describe(problem, form, i)}: {msg}"[:_MSG_CHARS]
        break
    return CodeVerdict(passed, total, first_type == "none", first_type, first_msg)


def _decide(i: int, t: SplitTest, values: dict[str, dict]) -> tuple[str, str | None]:
    """(error_type | "none" | "missing", message) of test i from its holes' reported values."""
    env = {}
    for j in range(len(t.holes)):
        rec = values.get(f"t{i}h{j}")
        if rec is None:
            return "missing", None
        status, value = _hole_value(rec)
        if status != "ok":
            return ("runtime" if status == "runtime" else "wrong_output"), value
        env[f"__hole_{j}"] = value
    try:
        ok = evaluate_skeleton(t.skeleton, env)
    except Exception as e:  # what the assert itself would raise on these values
        return "runtime", f"{type(e).__name__}: {e}"[:400]
    if bool(ok):  # ok is built by the trusted evaluator from plain data
        return "none", None
    shown = ", ".join(f"{t.holes[j].source} = {env[f'__hole_{j}']!r}"[:150] for j in range(len(t.holes)))
    return "wrong_output", f"AssertionError ({shown})"


def _plain(x: Any) -> Any:  # JSON has no tuples: compare tuples as lists
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _same(got: Any, want: Any) -> bool:
    got, want = _plain(got), _plain(want)
    # APPS wraps many expected values in a one-element list.
    return got == want or (isinstance(want, list) and len(want) == 1 and got == want[0])


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

