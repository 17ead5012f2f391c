"""The offline, key-free default teacher: re-checks each step, names the first wrong one, revises.

Critique f: names the flagged step, says what is wrong with it and (when known) what it should be.
Revision y¹: the attempt up to the flagged step, then a correct continuation —
  synthetic tasks: recomputed from the known program (exact);
  GSM8K: the reference solution's steps from the flagged index on (its own numbers);
  code without a known program: the reference solution.
A correct attempt gets the critique "All steps are correct." and y¹ = y⁰.
"""

from __future__ import annotations

from cts.tasks.schema import Problem, Quadruple
from cts.tasks.synthetic import Op, apply_op, code_statement, math_step_line
from cts.taxonomy import Diagnosis, code_steps, diagnose, math_steps
from cts.verifiers import math as mv
from cts.verifiers.outcome import verify_many

__all__ = ["TEACHER_NAME", "critique", "critique_many", "revise"]

TEACHER_NAME = "programmatic"


def _synthetic_math_revision(problem: Problem, attempt: str, d: Diagnosis) -> str:
    start, ops = problem.meta["start"], [Op(s, k) for s, k in problem.meta["ops"]]
    spans = math_steps(attempt)
    keep = [attempt[s:e] for s, e in spans[: min(d.step, len(ops))]]
    value = start
    for op in ops[: len(keep)]:
        value = apply_op(value, op)
    lines = list(keep)
    for op in ops[len(keep):]:
        lines.append(math_step_line(value, op))
        value = apply_op(value, op)
    return "\n".join(lines + [f"#### {value}"])


def _free_math_revision(problem: Problem, attempt: str, d: Diagnosis) -> str:
    spans = math_steps(attempt)
    ref = problem.reference
    ref_spans = mv.split_steps(ref)
    keep = [attempt[s:e] for s, e in spans[: d.step]]
    rest = [ref[s:e] for s, e in ref_spans[len(keep):]]
    return "\n".join(keep + rest + [f"#### {problem.answer}"])


def _code_revision(problem: Problem, attempt: str, d: Diagnosis) -> str:
    if "ops" not in problem.meta:
        return problem.reference
    ops = [Op(s, k) for s, k in problem.meta["ops"]]
    spans = code_steps(attempt)
    keep = ["    " + attempt[s:e] for s, e in spans[: min(d.step, len(ops))]]
    return "\n".join(["def f(x):", *keep, *(code_statement(op) for op in ops[len(keep):]), "    return x"])


def revise(problem: Problem, attempt: str, d: Diagnosis) -> str:
    if d.correct:
        return attempt
    if problem.kind == "code":
        return _code_revision(problem, attempt, d)
    if "ops" in problem.meta:
        return _synthetic_math_revision(problem, attempt, d)
    return _free_math_revision(problem, attempt, d)


def _critique_text(d: Diagnosis) -> str:
    if d.correct:
        return "All steps are correct."
    where = "The final answer line" if d.step >= d.n_steps else f"Step {d.step + 1}"
    text = f"{where} is wrong ({d.label.replace('_', ' ')}): {d.reason}."
    if d.fix is not None:
        text += f" It should be: {d.fix.strip()}"
    return text


def critique(problem: Problem, attempt: str, code_verdict=None) -> Quadruple:
    d = diagnose(problem, attempt, code_verdict)
    return Quadruple(
        problem_id=problem.id, prompt=problem.prompt, attempt=attempt,
        critique=_critique_text(d), revision=revise(problem, attempt, d),
        attempt_correct=d.correct, first_error_step=d.step,
        error_span=list(d.span) if d.span is not None else None, n_steps=d.n_steps,
        error_type=d.label, teacher=TEACHER_NAME,
    )


def critique_many(items: list[tuple[Problem, str]], workers: int = 1) -> list[Quadruple]:
    """Critiques in order; code attempts are verified (sandbox or fast path) first."""
    verdicts = verify_many(items, workers=workers)
    return [critique(p, a, v.code_verdict) for (p, a), v in zip(items, verdicts)]
