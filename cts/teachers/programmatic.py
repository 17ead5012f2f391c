"""The offline, key-free default teacher: flags the first wrong step it has evidence for, revises.

Critique f: names the flagged step, says what is wrong with it and (when known) what it should be.
A step is flagged only with evidence (cts.taxonomy.diagnose): a wrong calculation, an operand that
appears nowhere, a stated number nothing derives, an answer line that contradicts the attempt's
own result, a traceback line (code), or the known program (synthetic tasks). Without evidence the
quadruple is `unlocalised` (first_error_step and error_span None): kept and counted, and the
critique says the error could not be located.

Revision y¹:
  synthetic tasks: the attempt up to the flagged step, then the rest recomputed from the program;
  GSM8K: the attempt's own steps before the flagged one, then the reference's steps from the
    first one whose operands the kept prefix (with the prompt) derives — the whole revision must
    pass the derived-operand check (`mv.step_credits`) and end in the answer its last step
    computes; if no such continuation exists (or the attempt is unlocalised) the revision is the
    whole reference solution, and the critique says so. An answer is never pasted without its
    derivation;
  code without a known program: the reference solution.
A correct attempt gets the critique "All steps are correct." and y¹ = y⁰.
"""

from __future__ import annotations

from cts.answer_format import answer_line, code_steps, math_steps
from cts.tasks.schema import Problem, Quadruple
from cts.tasks.synthetic import Op, apply_op, code_statement, math_step_line
from cts.taxonomy import Diagnosis, diagnose
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
    return "\n".join(lines + [answer_line(value)])


def _derived(problem: Problem, text: str) -> bool:
    """Every step passes the derived-operand check and the final answer is right."""
    credits = mv.step_credits(problem.prompt, text)
    return bool(credits) and all(c.ok for c in credits) and mv.is_correct(text, problem.answer)


def _free_math_revision(problem: Problem, attempt: str, d: Diagnosis) -> tuple[str, bool]:
    """(revision, continues_the_attempt). See the module docstring."""
    ref = problem.reference
    ref_spans = math_steps(ref)
    answer = answer_line(problem.answer)
    if d.step is not None:
        keep = [attempt[s:e] for s, e in math_steps(attempt)[: d.step]]
        # the latest reference step whose continuation the kept prefix derives (largest j first)
        for j in range(min(len(keep), len(ref_spans)), -1, -1):
            if not keep and j == 0:
                break  # nothing of the attempt to keep: that is the whole reference
            rest = [ref[s:e] for s, e in ref_spans[j:]]
            candidate = "\n".join(keep + rest + [answer])
            if _derived(problem, candidate):
                return candidate, True
    return ref, False


def _code_revision(problem: Problem, attempt: str, d: Diagnosis) -> str:
    if "ops" not in problem.meta:
        return problem.reference
    ops = [Op(s, k) for s, k in problem.meta["ops"]]
    spans = code_steps(attempt)
    keep = ["    " + attempt[s:e] for s, e in spans[: min(d.step, len(ops))]]
    return "\n".join(["def f(x):", *keep, *(code_statement(op) for op in ops[len(keep):]), "    return x"])


def revise(problem: Problem, attempt: str, d: Diagnosis) -> str:
    return _revise(problem, attempt, d)[0]


def _revise(problem: Problem, attempt: str, d: Diagnosis) -> tuple[str, bool]:
    """(revision, whether it continues the attempt's own prefix)."""
    if d.correct:
        return attempt, True
    if problem.kind == "code":
        if d.step is None:  # nothing localised: nothing of the attempt is kept
            return problem.reference, False
        return _code_revision(problem, attempt, d), "ops" in problem.meta
    if "ops" in problem.meta:
        return _synthetic_math_revision(problem, attempt, d), True
    return _free_math_revision(problem, attempt, d)


def _critique_text(d: Diagnosis, continues: bool) -> str:
    if d.correct:
        return "All steps are correct."
    if d.step is None:
        text = f"The attempt is wrong, but the error could not be located: {d.reason}."
    else:
        where = "The final answer line" if d.step >= d.n_steps else f"Step {d.step + 1}"
        text = f"{where} is wrong ({d.label.replace('_', ' ')}): {d.reason}."
        if d.fix is not None:
            text += f" It should be: {d.fix.strip()}"
    if not continues:
        text += " The revision is the reference solution, not a continuation of this attempt."
    return text


def critique(problem: Problem, attempt: str, code_verdict=None) -> Quadruple:
    d = diagnose(problem, attempt, code_verdict)
    revision, continues = _revise(problem, attempt, d)
    return Quadruple(
        problem_id=problem.id, prompt=problem.prompt, attempt=attempt,
        critique=_critique_text(d, continues), revision=revision,
        attempt_correct=d.correct, first_error_step=d.step,
        error_span=list(d.span) if d.span is not None else None, n_steps=d.n_steps,
        error_type=d.label, teacher=TEACHER_NAME, teacher_error_type=d.label,
        unlocalised=d.unlocalised,
    )


def critique_many(items: list[tuple[Problem, str]], workers: int = 1) -> list[Quadruple]:
    """Critiques in order; code attempts are verified (sandbox or fast path) first."""
    verdicts = verify_many(items, workers=workers)
    return [critique(p, a, v.code_verdict) for (p, a), v in zip(items, verdicts)]
