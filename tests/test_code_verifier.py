"""Tests for cts.verifiers.code: every test form, every error type, forgery attempts, MBPP."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from cts.io import DataError
from cts.verifiers.sandbox import SandboxLimits
from cts.tasks.schema import Problem
from cts.verifiers.code import (CodeVerdict, detect_test_form, normalize_lines, verify_code,
                                verify_many)

MBPP = Path(__file__).resolve().parents[1] / "data" / "mbpp" / "mbpp.jsonl"  # vendored (CC-BY-4.0)
QUICK = SandboxLimits(timeout_s=1.0, cpu_s=2)


def _problem(tests, *, setup="", entry_point=None, pid="p-1", kind="code"):
    return Problem(id=pid, task="synthetic", kind=kind, prompt="...", reference="",
                   tests=tests, test_setup=setup, entry_point=entry_point,
                   answer=None if kind == "code" else "1")


ADD = _problem(["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"])


# ----------------------------------------------------------------------------- asserts form

def test_correct_solution_passes_every_assert():
    assert verify_code(ADD, "def add(a, b):\n    return a + b\n") == CodeVerdict(3, 3, True, "none", None)


def test_partly_wrong_solution_counts_each_assert():
    # Wrong only when a == b: asserts 0 and 1 pass, assert 2 (add(2, 2)) fails.
    v = verify_code(ADD, "def add(a, b):\n    return a + b if a != b else 0\n")
    assert (v.passed, v.total, v.all_passed, v.error_type) == (2, 3, False, "wrong_output")
    assert v.first_failure.startswith("test 2: assert add(2, 2) == 4")


def test_syntax_error():
    v = verify_code(ADD, "def add(a, b)\n    return a + b\n")
    assert (v.passed, v.total, v.error_type) == (0, 3, "syntax")
    assert "SyntaxError" in v.first_failure


def test_runtime_error_at_load_and_inside_a_test():
    v = verify_code(ADD, "raise RuntimeError('at import')\n")
    assert (v.passed, v.error_type) == (0, "runtime") and "at import" in v.first_failure
    # Raises only for negative input: test 1 raises, tests 0 and 2 pass.
    v = verify_code(ADD, "def add(a, b):\n    if a < 0:\n        raise ValueError('neg')\n    return a + b\n")
    assert (v.passed, v.error_type) == (2, "runtime")
    assert v.first_failure.startswith("test 1:") and "ValueError: neg" in v.first_failure


def test_timeout_keeps_the_passes_reported_before_it():
    code = "def add(a, b):\n    while a < 0:\n        pass\n    return a + b\n"
    v = verify_code(ADD, code, limits=QUICK)
    assert (v.passed, v.total, v.error_type) == (1, 3, "timeout")
    assert v.first_failure.startswith("test 1:")


def test_memory_and_exit_tricks_are_runtime_failures():
    v = verify_code(ADD, "x = bytearray(8 * 1024**3)\n")
    assert (v.passed, v.error_type) == (0, "runtime")
    v = verify_code(ADD, "import sys\nsys.exit(0)\n")
    assert (v.passed, v.error_type) == (0, "runtime")
    v = verify_code(ADD, "import os\nos._exit(0)\n")
    assert (v.passed, v.error_type) == (0, "runtime") and "before finishing" in v.first_failure


def test_forged_reports_do_not_count():
    forgeries = [
        # Guessing the line format without the nonce.
        "import json\nfor i in range(3):\n    print('@@deadbeef@@ ' + json.dumps({'kind': 'test', 'i': i, 'ok': True}))\n"
        "import os\nos._exit(0)\n",
        # Looking for the nonce where a naive harness would keep it.
        "import __main__, os, json\nn = [v for v in vars(__main__).values() if isinstance(v, str) and v.startswith('@@')]\n"
        "for i in range(3):\n    print((n[0] if n else '@@x@@') + ' ' + json.dumps({'kind': 'test', 'i': i, 'ok': True}))\nos._exit(0)\n",
        # Reading the spec file the harness got the nonce from.
        "import os\nprint(open('spec.json').read())\nos._exit(0)\n",
    ]
    for code in forgeries:
        v = verify_code(ADD, code)
        assert v.passed == 0 and not v.all_passed, code


def test_output_cap_is_a_runtime_failure():
    v = verify_code(ADD, "def add(a, b):\n    print('z' * 10**6)\n    return a + b\n",
                    limits=SandboxLimits(max_output_bytes=1000))
    assert (v.passed, v.error_type) == (0, "runtime") and "output limit" in v.first_failure


def test_setup_runs_after_solution_and_before_asserts():
    # MBPP task 367 style: the setup instantiates the solution's own class.
    p = _problem(["assert depth(root) == 2"], setup="root = Node(Node(None))")
    code = "class Node:\n    def __init__(self, child):\n        self.child = child\n" \
           "def depth(n):\n    return 0 if n is None else 1 + depth(n.child)\n"
    assert verify_code(p, code).all_passed
    v = verify_code(p, "def depth(n):\n    return 2\n")  # no Node: the setup itself fails
    assert (v.passed, v.error_type) == (0, "runtime") and "test_setup" in v.first_failure


def test_solution_main_block_is_not_run():
    code = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    input()\n"
    assert verify_code(ADD, code).all_passed


# ----------------------------------------------------------------------------- HumanEval form

HE_CHECK = textwrap.dedent("""
    def check(candidate):
        assert candidate([1, 2, 3]) == 6
        assert candidate([]) == 0
    """)


def test_humaneval_form():
    p = _problem([HE_CHECK], entry_point="total")
    assert detect_test_form(p) == "humaneval"
    assert verify_code(p, "def total(xs):\n    return sum(xs)\n") == CodeVerdict(1, 1, True, "none", None)
    v = verify_code(p, "def total(xs):\n    return sum(xs) + 1\n")
    assert (v.passed, v.total, v.error_type) == (0, 1, "wrong_output")
    v = verify_code(p, "def totl(xs):\n    return sum(xs)\n")  # wrong name
    assert (v.passed, v.error_type) == (0, "runtime") and "name 'total' is not defined" in v.first_failure
    with pytest.raises(DataError, match="entry_point"):
        verify_code(_problem([HE_CHECK]), "")


# ----------------------------------------------------------------------------- APPS forms

SUM_PAIRS = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4", "output": "6"},
             {"input": "0 0\n", "output": "0  \n\n"}]


def test_stdio_form():
    p = _problem(SUM_PAIRS)
    assert detect_test_form(p) == "stdio"
    good = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert verify_code(p, good) == CodeVerdict(3, 3, True, "none", None)
    v = verify_code(p, "a, b = map(int, input().split())\nprint(abs(a + b) if a else 1)\n")
    assert (v.passed, v.error_type) == (2, "wrong_output") and v.first_failure.startswith("case 2:")
    v = verify_code(p, "a, b = map(int, input().split())\nprint(a + b + 0 // b)\n")  # b == 0 in case 2
    assert (v.passed, v.error_type) == (2, "runtime") and "ZeroDivisionError" in v.first_failure
    v = verify_code(p, "print(1 +)\n")
    assert (v.passed, v.total, v.error_type) == (0, 3, "syntax")
    v = verify_code(p, "while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0))
    assert (v.passed, v.error_type) == (0, "timeout")


def test_stdio_inputs_outputs_lists():
    p = _problem([{"inputs": ["2\n", "5\n"], "outputs": ["4\n", "25\n"]}])
    assert detect_test_form(p) == "stdio"
    v = verify_code(p, "n = int(input())\nprint(n * n)\n")
    assert (v.passed, v.total, v.all_passed) == (2, 2, True)


def test_call_form():
    p = _problem([{"fn_name": "pair", "inputs": [[1, 2], [3, 4]], "outputs": [[[1, 2]], [3, 4]]}])
    assert detect_test_form(p) == "call"
    # Returns tuples; JSON has lists; the first output is APPS-wrapped in a one-element list.
    v = verify_code(p, "def pair(a, b):\n    return (a, b)\n")
    assert (v.passed, v.total, v.all_passed) == (2, 2, True)
    v = verify_code(p, "class Solution:\n    def pair(self, a, b):\n        return [a, b]\n")
    assert v.all_passed
    v = verify_code(p, "def pair(a, b):\n    return (b, a)\n")
    assert (v.passed, v.error_type) == (0, "wrong_output")
    v = verify_code(p, "def other(a, b):\n    return 0\n")
    assert (v.passed, v.error_type) == (0, "runtime") and "no function" in v.first_failure


def test_normalize_lines():
    assert normalize_lines("  a \r\nb\t\n\n\n") == ["a", "b"]
    assert normalize_lines("\n x\n") == ["x"]


# ----------------------------------------------------------------------------- bad input

def test_bad_problems_raise_dataerror():
    with pytest.raises(DataError, match="kind='code'"):
        verify_code(_problem(None, kind="math"), "")
    with pytest.raises(DataError, match="p-1"):
        verify_code(_problem([{"foo": 1}]), "")
    with pytest.raises(DataError, match="p-1"):
        verify_code(_problem(["assert True", {"input": "", "output": ""}]), "")
    with pytest.raises(DataError, match="equal length"):
        verify_code(_problem([{"inputs": ["1"], "outputs": []}]), "")


def test_verify_many_preserves_order():
    codes = ["def add(a, b):\n    return a + b\n", "def add(a, b)\n", "def add(a, b):\n    return 0\n"] * 2
    vs = verify_many([(ADD, c) for c in codes], workers=2)
    assert [(v.passed, v.error_type) for v in vs] == [(3, "none"), (0, "syntax"), (1, "wrong_output")] * 2


# ----------------------------------------------------------------------------- MBPP references

def _mbpp_items(every: int = 1) -> list[tuple[Problem, str]]:
    rows = [json.loads(line) for line in MBPP.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(Problem(id=f"mbpp-{r['task_id']}", task="mbpp", kind="code", prompt=r["text"],
                     reference=r["code"], tests=r["test_list"], test_setup=r["test_setup_code"],
                     source="mbpp"), r["code"])
            for r in rows[::every]]


@pytest.mark.slow
def test_mbpp_reference_sample_passes():
    items = _mbpp_items(every=32)  # rows 0, 32, 64, ...: a deterministic sample of 31
    vs = verify_many(items, workers=2)
    failed = {p.id: v for (p, _), v in zip(items, vs) if not v.all_passed}
    assert len(items) >= 30 and failed == {}


@pytest.mark.heavy
def test_mbpp_reference_all_pass():
    # One reference (task 123, amicable numbers to 9999: quadratic) needs ~5-10 s of CPU on a
    # loaded 2-core machine, hence the generous limits.
    items = _mbpp_items()
    vs = verify_many(items, workers=2, limits=SandboxLimits(timeout_s=60.0, cpu_s=60))
    failed = {p.id: (v.error_type, v.first_failure) for (p, _), v in zip(items, vs) if not v.all_passed}
    print(f"MBPP references: {len(items) - len(failed)}/{len(items)} pass; failures: {failed}")
    assert failed == {}


# ----------------------------------------------------------------------------- forging (issue 13)
# Each program below tries to forge passes on a problem it cannot solve (the expected values are
# arbitrary). The verdict is decided by the trusted parent from plain data, so each must score 0,
# at every isolation level that works here.

SECRET = _problem(["assert secret(1) == 7391", "assert secret(2) == 1187",
                   "assert secret(3) == (4420, 'q')"], pid="secret")
SECRET_CALL = _problem([{"fn_name": "secret", "inputs": [[1], [2], [3]],
                         "outputs": [7391, 1187, [4420, "q"]]}], pid="secret-call")
SECRET_HE = _problem([textwrap.dedent("""
    def check(candidate):
        assert candidate(1) == 7391
        assert candidate(2) == 1187
    """)], entry_point="secret", pid="secret-he")

# Walk every frame above the candidate: call anything that looks like a report function, mark
# anything that looks like a result true, and copy any expected value it can find into a table.
_FRAME_WALKER = r'''
import sys, json, ast, re
TABLE = {}
def _scan(obj, depth=0):
    if depth > 4:
        return
    if isinstance(obj, str):
        for m in re.finditer(r"secret\((\d+)\)\s*==\s*(.+)$", obj, re.M):
            try:
                TABLE[int(m.group(1))] = ast.literal_eval(m.group(2).strip())
            except Exception:
                pass
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            if isinstance(v, bool) or k in ("ok", "passed"):
                try:
                    obj[k] = True
                except Exception:
                    pass
            _scan(v, depth + 1)
        if "inputs" in obj and "outputs" in obj:
            for a, w in zip(obj["inputs"], obj["outputs"]):
                TABLE[a[0] if isinstance(a, list) else a] = w
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _scan(v, depth + 1)
f = sys._getframe(0)
while f is not None:
    for name, value in list(f.f_locals.items()):
        _scan(value)
        if callable(value) and any(s in name.lower() for s in ("report", "emit", "send", "write")):
            for i in range(3):
                for kw in ({"kind": "test", "i": i, "ok": True}, {"kind": "result", "t": i, "ok": True}):
                    try:
                        value(**kw)
                    except Exception:
                        pass
    f = f.f_back
def secret(x):
    return TABLE.get(x, -1)
'''

_ALWAYS_EQUAL = '''
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
def secret(x):
    return Anything()
'''

_SUBCLASSES = {
    "int": "class I(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\n"
           "def secret(x):\n    return I(0)\n",
    "str": "class S(str):\n    def __eq__(s, o): return True\n    __hash__ = str.__hash__\n"
           "def secret(x):\n    return S('')\n",
    "list": "class L(list):\n    def __eq__(s, o): return True\n"
            "def secret(x):\n    return L()\n",
    "tuple": "class T(tuple):\n    def __eq__(s, o): return True\n    __hash__ = tuple.__hash__\n"
             "def secret(x):\n    return T()\n",
}

_PATCHERS = {
    # every assert "passes": the exception the harness would see is swallowed by a patched builtin
    "assert": "import builtins\nclass _Never(BaseException): pass\nbuiltins.AssertionError = _Never\n"
              "def secret(x):\n    return 0\n",
    # a print that turns every line into a pass
    "print": "import builtins, json\n_p = builtins.print\n"
             "def print(*a, **k):\n    _p('ok', json.dumps({'kind': 'test', 'i': 0, 'ok': True}), **k)\n"
             "builtins.print = print\ndef secret(x):\n    return 0\n",
    # json.dumps rewrites every record the harness writes as a pass
    "json": "import json\n_d = json.dumps\n"
            "def dumps(obj, *a, **k):\n    if isinstance(obj, dict):\n"
            "        obj = {**obj, 'ok': True, 'err': None, 'msg': None}\n    return _d(obj, *a, **k)\n"
            "json.dumps = dumps\ndef secret(x):\n    return 0\n",
    # sys.exit / os._exit rewired to a clean exit, then called
    "sys.exit": "import sys, os\nsys.exit = lambda *a: os._exit(0)\ndef secret(x):\n    sys.exit(1)\n",
    # os.write rewritten so any record reads as a pass
    "os.write": "import os\n_w = os.write\n"
                "def write(fd, data):\n    return _w(fd, data.replace(b'false', b'true'))\n"
                "os.write = write\ndef secret(x):\n    return 0\n",
}

_EARLY_EXIT = "import os\nos._exit(0)\n"

_FAKE_REPORT = r'''
import json, sys
for i in range(3):
    for rec in ({"kind": "test", "i": i, "ok": True}, {"kind": "hole", "t": i, "h": 0, "v": 7391}):
        print("@@" + "0" * 32 + "@@ " + json.dumps(rec))
        print(json.dumps(rec))
print("3/3 passed")
sys.stdout.flush()
def secret(x):
    return 0
'''

_WRITE_EXPECTED = r'''
import json, os
# write every file a naive harness might read its expected values or verdicts from
for name in ("spec.json", "expected.json", "expected_output.txt", "results.json", "report.json",
             "verdict.json", "/tmp/expected.json"):
    try:
        with open(name, "w") as f:
            json.dump({"passed": 3, "total": 3, "ok": True, "outputs": [0, 0, 0]}, f)
    except OSError:
        pass
def secret(x):
    return 0
'''

FORGERIES = {"frame_walk": _FRAME_WALKER, "always_equal": _ALWAYS_EQUAL,
             **{f"subclass_{k}": v for k, v in _SUBCLASSES.items()},
             **{f"patched_{k}": v for k, v in _PATCHERS.items()},
             "early_os_exit": _EARLY_EXIT, "fake_report": _FAKE_REPORT,
             "write_expected": _WRITE_EXPECTED}


# ns_level: the isolation levels (bwrap, unshare) this machine offers, tests/conftest.py


@pytest.mark.parametrize("name", sorted(FORGERIES))
@pytest.mark.parametrize("problem", [SECRET, SECRET_CALL, SECRET_HE], ids=lambda p: p.id)
def test_forgeries_score_zero(name, problem, ns_level):
    v = verify_code(problem, FORGERIES[name], limits=QUICK, isolation=ns_level)
    assert v.passed == 0 and not v.all_passed, (name, v)


def test_an_honest_solution_of_the_secret_problem_passes(ns_level):
    code = "def secret(x):\n    return {1: 7391, 2: 1187, 3: (4420, 'q')}[x]\n"
    for p in (SECRET, SECRET_HE):
        assert verify_code(p, code, isolation=ns_level).all_passed
    call = "def secret(x):\n    return {1: 7391, 2: 1187, 3: [4420, 'q']}[x]\n"
    assert verify_code(SECRET_CALL, call, isolation=ns_level).all_passed


def test_plain_values_compare_as_python_would():
    # tuple vs list and 1 vs True are distinct answers for an assert, as in Python itself
    p = _problem(["assert g() == (1, 2)", "assert g() != [1, 2]", "assert h() == 1.5",
                  "assert math.isclose(h(), 1.5000001, rel_tol=1e-3)", "assert set(k()) == {3, 4}",
                  "assert not z()", "assert sorted(k()) == [3, 4]", "assert abs(h() - 1.5) < 1e-9"])
    code = "import math\ndef g():\n    return (1, 2)\ndef h():\n    return 1.5\n" \
           "def k():\n    return [4, 3]\ndef z():\n    return []\n"
    assert verify_code(p, code).all_passed
    # an answer that is right only under a forgeable comparison fails
    v = verify_code(p, "import math\ndef g():\n    return [1, 2]\ndef h():\n    return 1.5\n"
                       "def k():\n    return [4, 3]\ndef z():\n    return []\n")
    assert (v.passed, v.error_type) == (6, "wrong_output")


def test_unrepresentable_return_value_is_a_wrong_answer():
    v = verify_code(ADD, "def add(a, b):\n    return object()\n")
    assert (v.passed, v.error_type) == (0, "wrong_output") and "plain data" in v.first_failure


def test_shadowing_trusted_names_does_not_move_the_expected_side():
    # A candidate that defines `set`, `math` or `sorted` itself would, if that made them its own,
    # compute both sides of `set(f(x)) == set([...])`. They stay trusted (the reference defines
    # none of them), so these forgeries still score 0.
    p = _problem(["assert set(secret(1)) == set([7, 3, 9])", "assert math.isclose(secret(2), 2.718)",
                  "assert sorted(secret(3)) == sorted([5, 1])"], pid="shadow")
    forger = "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n" \
             "def set(x):\n    return 0\ndef sorted(x):\n    return 0\ndef secret(x):\n    return 0\n"
    assert verify_code(p, forger).passed == 0
    # ...while a solution's own function that shadows a builtin is the solution's (MBPP 126: `sum`)
    q = Problem(id="own-sum", task="mbpp", kind="code", prompt="", tests=["assert sum(10, 15) == 6"],
                reference="def sum(a, b):\n    return 6\n")
    assert verify_code(q, "def sum(a, b):\n    return 6\n").all_passed


def test_humaneval_as_loaded_is_verified_and_unverifiable_ones_are_left_out_at_data_prepare(tmp_path):
    """The loader's two-string HumanEval form ([check source, "check(f)"]) is the check() form; the
    canonical solutions pass; problems whose check() loops over candidate calls are dropped by
    data_prepare with their ids in the log, never failing a training job."""
    from cts.io import read_jsonl
    from cts.stages.data import data_prepare
    from cts.tasks import load_task
    from cts.verifiers.code import check_verifiable

    problems = {p.id: p for p in load_task("humaneval", {"loader": "humaneval"})}
    p0 = problems["humaneval-000"]
    assert detect_test_form(p0) == "humaneval"
    v = verify_code(p0, p0.reference)
    assert v.total > 0 and v.passed == v.total
    wrong = verify_code(p0, p0.prompt + "    return True\n")
    assert wrong.passed < wrong.total
    with pytest.raises(DataError, match="humaneval-032"):
        check_verifiable(problems["humaneval-032"])
    lines = []
    data_prepare("humaneval", {"loader": "humaneval"}, str(tmp_path / "problems.jsonl"), log=lines.append)
    kept = {r["id"] for r in read_jsonl(str(tmp_path / "problems.jsonl"))}
    assert "humaneval-000" in kept and "humaneval-032" not in kept and 150 <= len(kept) < 164
    assert any("humaneval-032" in line and f"{164 - len(kept)} of 164" in line for line in lines)


def test_an_instruct_models_markdown_answer_is_cut_to_its_fenced_program():
    """Qwen2.5-Instruct style: prose, a ```python block, more prose (and a shell block) — the
    program is verified, not the Markdown; an unfenced completion is used as it is."""
    from cts.verifiers.code import code_of
    from cts.verifiers.outcome import verify_many

    p = Problem(id="fence", task="mbpp", kind="code", prompt="add", reference="def add(a, b):\n    return a + b\n",
                tests=["assert add(1, 2) == 3", "assert add(2, 2) == 4"], source="test")
    program = "def add(a, b):\n    return a + b\n"
    answer = ("Here is the function:\n\n```python\ndef add(a, b):\n    return a - b\n```\n\nFixed version:\n\n"
              f"```python\n{program}```\n\nRun it with:\n```bash\npython add.py\n```\n")
    assert code_of(answer) == program
    assert code_of(program) == program
    fenced, plain, wrong = verify_many([(p, answer), (p, program), (p, "Use `a + b`.")])
    assert fenced.correct and plain.correct and not wrong.correct
