"""One verifier entry point for every task: is this completion right, and how right.

`verify(problem, completion)` returns a Verdict with
  correct     — math: the final answer matches; code: every test passes (the B2 outcome reward);
  step_score  — math: k/H, where k is the number of computational steps that pass the
                derived-operand check (`cts.verifiers.math.step_credits`: every annotation or
                written equation is right — exactly, to its shown decimals, or within a relative
                1e-9 — and its operands are quantities of the prompt, in digits or words, numbers
                stated earlier, or unit constants) before the first step that fails it, capped at
                H, the reference solution's number of computational steps. Prose lines neither
                earn nor break credit; short or unchained solutions cannot score well by writing one
                easy, correct annotation. code: fraction of tests passed.
                (The B3 verifier reward's extra term.)
  code_verdict — the sandbox verdict for code (None for math), which the taxonomy tagger reads.

Synthetic code of the exact straight-line form `def f(x): x = x op k ...; return x` is evaluated
without executing it (cts.taxonomy.parse_straight_line_code) — same semantics, thousands of times
faster than a sandboxed process; everything else runs in the sandbox.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cts.tasks.schema import Problem
from cts.tasks.synthetic import apply_op
from cts.verifiers import math as mv

__all__ = ["Verdict", "verified_prefix", "verify", "verify_many"]

_ASSERT = re.compile(r"^assert f\((-?\d+)\) == (-?\d+)$")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    step_score: float
    code_verdict: object | None = None


def verified_prefix(problem: Problem, completion: str) -> int:
    """Computational steps of `completion` that pass the derived-operand check before its first
    failing step (`cts.verifiers.math.step_credits`)."""
    return mv.derived_prefix(problem.prompt, completion)


@functools.lru_cache(maxsize=65536)
def _reference_steps(prompt: str, reference: str) -> int:
    return mv.computational_steps(prompt, reference)


def step_horizon(problem: Problem) -> int:
    """H for the step score: the reference's computational steps (prose lines do not count).

    0 for a reference that computes nothing in writing (14 of GSM8K's 7473 train solutions state
    every number in words); `_verify_math` then scores a completion 1 when it is correct and none
    of its steps fails the check.
    """
    return _reference_steps(problem.prompt, problem.reference)


def _verify_math(problem: Problem, completion: str) -> Verdict:
    h = step_horizon(problem)
    correct = mv.is_correct(completion, problem.answer)
    if h == 0:
        clean = all(c.ok for c in mv.step_credits(problem.prompt, completion))
        return Verdict(correct=correct, step_score=float(correct and clean))
    return Verdict(correct=correct, step_score=min(verified_prefix(problem, completion), h) / h)


def _fast_code_verdict(problem: Problem, completion: str):
    """Straight-line synthetic code: evaluate the ops on each test input, no process needed."""
    from cts.taxonomy import parse_straight_line_code
    from cts.verifiers.code import CodeVerdict

    if problem.task != "synth_code":
        return None
    ops = parse_straight_line_code(completion)
    cases = [_ASSERT.match(t) for t in problem.tests]
    if ops is None or not all(cases):
        return None
    passed, first_failure = 0, None
    for m in cases:
        value = int(m.group(1))
        for op in ops:
            value = apply_op(value, op)
        if value == int(m.group(2)):
            passed += 1
        elif first_failure is None:
            first_failure = f"{m.group(0)} failed: f({m.group(1)}) returned {value}"
    total = len(cases)
    return CodeVerdict(passed=passed, total=total, all_passed=passed == total,
                       error_type="none" if passed == total else "wrong_output",
                       first_failure=first_failure)


def verify(problem: Problem, completion: str) -> Verdict:
    return verify_many([(problem, completion)])[0]


def verify_many(items: Sequence[tuple[Problem, str]], workers: int = 1) -> list[Verdict]:
    """Verdicts in order; code that needs the sandbox is run `workers` at a time."""
    items = list(items)
    out: list[Verdict | None] = [None] * len(items)
    sandbox_idx = []
    for i, (problem, completion) in enumerate(items):
        if problem.kind == "math":
            out[i] = _verify_math(problem, completion)
            continue
        from cts.verifiers.code import code_of  # the sandbox's module: imported only for code tasks

        completion = code_of(completion)  # an instruct model's Markdown answer → its fenced program
        items[i] = (problem, completion)
        fast = _fast_code_verdict(problem, completion)
        if fast is None:
            sandbox_idx.append(i)
        else:
            out[i] = Verdict(fast.all_passed, fast.passed / max(fast.total, 1), fast)
    if sandbox_idx:
        from cts.verifiers.code import verify_many as sandbox_verify_many

        verdicts = sandbox_verify_many([items[i] for i in sandbox_idx], workers=workers)
        for i, v in zip(sandbox_idx, verdicts):
            out[i] = Verdict(v.all_passed, v.passed / max(v.total, 1), v)
    return out  # type: ignore[return-value]
