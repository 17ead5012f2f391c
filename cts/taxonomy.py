"""Error taxonomy and the rule-based tagger.

`diagnose(problem, attempt)` finds the first wrong step of an attempt, its character span, an
error label and, where the problem's program is known (synthetic tasks), the correct step text.
The programmatic teacher writes its critique and revision from a Diagnosis; the taxonomy stage
re-tags every critique (LLM teachers' included) with the same rules, keeping the teacher's own
tag beside it.

Step indices refer to the attempt's reasoning steps (cts.answer_format: math, the lines before
`#### N`; code, the non-empty, non-comment lines of the function body); its labels are the answer
format's too (MATH_LABELS, CODE_LABELS, UNLOCALISED). An error in the final-answer line itself
(math) or in the return line (code) gets index n_steps — one past the last step.

Labels
  math: arithmetic_slip           an annotation `<<a op b=c>>` whose c is not a op b (or unparseable)
        wrong_operation           a correct computation with an operator the problem does not ask for
        misread_quantity          a correct computation on a number that is not the problem's
        missing_step              a step of the problem skipped
        wrong_final_answer_extraction  all steps right, the `#### N` line wrong or missing
  code: syntax | runtime_error | timeout | wrong_output | wrong_algorithm
For problems without a known program (GSM8K, MBPP) the math labels past arithmetic_slip and the
code label wrong_output are heuristics (compared with the reference solution); see each branch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from cts.answer_format import UNLOCALISED, answer_line_span, code_steps, math_steps
from cts.tasks.schema import Problem
from cts.tasks.synthetic import Op, apply_op, code_statement, math_step_line
from cts.verifiers import math as mv

__all__ = ["Diagnosis", "diagnose", "operand_numbers", "parse_straight_line_code"]

_ANNOT = re.compile(r"<<\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*>>")
_STATEMENT = re.compile(r"^ {4}x = x ([-+*]) (\d+)$")


@dataclass(frozen=True)
class Diagnosis:
    """Where and how an attempt goes wrong (step None: correct, or wrong and `unlocalised`)."""

    correct: bool
    step: int | None
    span: tuple[int, int] | None
    label: str
    n_steps: int
    reason: str = ""
    fix: str | None = None  # the correct text of the flagged step, when known

    @property
    def unlocalised(self) -> bool:
        return not self.correct and self.step is None


def _answer_line_span(attempt: str) -> tuple[int, int]:
    """The `#### N` line (step index n_steps); an empty span at the end when there is none."""
    return answer_line_span(attempt) or (len(attempt), len(attempt))


def _ops(problem: Problem) -> tuple[int, list[Op]] | None:
    if "ops" not in problem.meta:
        return None
    return problem.meta["start"], [Op(s, k) for s, k in problem.meta["ops"]]


# ----------------------------------------------------------------------------- math

def _diagnose_math(problem: Problem, attempt: str) -> Diagnosis:
    spans = math_steps(attempt)
    n = len(spans)
    if mv.is_correct(attempt, problem.answer):
        return Diagnosis(True, None, None, "none", n)
    program = _ops(problem)
    if program is None:
        return _diagnose_free_math(problem, attempt, spans)
    for c in mv.check_steps(attempt):
        if not c.ok:
            return Diagnosis(False, c.index, c.span, "arithmetic_slip", n,
                             reason=f"the calculation in `{c.line.strip()}` is wrong")
    return _diagnose_synthetic_math(problem, attempt, spans, program)


def _diagnose_synthetic_math(problem, attempt, spans, program) -> Diagnosis:
    """Walk the attempt against the known program; the first divergence is the error."""
    start, ops = program
    n, value = len(spans), start
    for i, (s, e) in enumerate(spans):
        line = attempt[s:e]
        if i >= len(ops):
            return Diagnosis(False, i, (s, e), "wrong_operation", n,
                             reason=f"step {i + 1} `{line}` is an extra operation the problem does not ask for")
        m = _ANNOT.search(line)
        if m is None:
            return Diagnosis(False, i, (s, e), "arithmetic_slip", n,
                             reason=f"step {i + 1} `{line}` has no readable calculation",
                             fix=math_step_line(value, ops[i]))
        a, sym, b = int(m.group(1)), m.group(2), int(m.group(3))
        want = ops[i]
        fix = math_step_line(value, want)
        if a == value and sym == want.symbol and b == want.operand:
            value = apply_op(value, want)
            continue
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if a == value and nxt is not None and (sym, b) == (nxt.symbol, nxt.operand):
            label, why = "missing_step", f"it skips the step `{want.symbol}{want.operand}`"
        elif sym != want.symbol and a == value:
            label, why = "wrong_operation", f"it uses `{sym}` where the problem says `{want.symbol}`"
        else:
            label, why = "misread_quantity", (f"it computes with {a}{sym}{b} but the problem gives "
                                              f"{value}{want.symbol}{want.operand}")
        return Diagnosis(False, i, (s, e), label, n, reason=f"step {i + 1} `{line}`: {why}", fix=fix)
    if n < len(ops):
        return Diagnosis(False, n, _answer_line_span(attempt), "missing_step", n,
                         reason=f"the solution stops after {n} of {len(ops)} steps",
                         fix=math_step_line(value, ops[n]))
    return Diagnosis(False, n, _answer_line_span(attempt), "wrong_final_answer_extraction", n,
                     reason=f"every step is right but the final answer should be {value}",
                     fix=f"#### {value}")


def operand_numbers(text: str) -> set[str]:
    """Numbers in text; a '-' right after a digit or ')' is subtraction, not a sign (`12-2` → 12, 2)."""
    out = set()
    for m in re.finditer(r"-?\d[\d,]*(?:\.\d+)?", text):
        tok = m.group(0)
        if tok.startswith("-") and m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == ")"):
            tok = tok[1:]
        out.add(mv.normalize_answer(tok))
    return out - {None}


def _last_computed(attempt: str) -> Fraction | None:
    """The value of the attempt's last computation (annotation or written equation), if any."""
    value = None
    for s, e in math_steps(attempt):
        for m in re.finditer(r"<<([^<>=]*)=([^<>]*)>>", attempt[s:e]):
            try:
                value = mv.evaluate_expression(m.group(1))
            except ValueError:
                pass
    return value


def _diagnose_free_math(problem, attempt, spans) -> Diagnosis:
    """Problems without a known program (GSM8K): flag a step only with evidence.

    Evidence is the first step that fails the derived-operand check (`mv.step_credits`: a wrong
    annotation or written equation, an operand that appears nowhere, a stated number nothing
    derives), or an answer line that contradicts the attempt's own last computed value when that
    value is the right answer. Anything else is `unlocalised`: the answer is wrong, every
    checkable thing is right, and nothing says where.
    """
    n = len(spans)
    for c in mv.step_credits(problem.prompt, attempt):
        if not c.ok:
            if c.bad_operand is not None and "uses" in c.reason:
                label = "misread_quantity"
            else:
                label = "arithmetic_slip"
            return Diagnosis(False, c.index, c.span, label, n,
                             reason=f"in step {c.index + 1} `{attempt[c.span[0]:c.span[1]]}`: {c.reason}")
    last = _last_computed(attempt)
    final = mv.extract_answer(attempt) if "####" in attempt else None
    if last is not None and mv.answers_match(mv.format_value(last), problem.answer) \
            and not mv.answers_match(final, problem.answer):
        what = "is missing" if final is None else f"says {final.strip()}"
        return Diagnosis(False, n, _answer_line_span(attempt), "wrong_final_answer_extraction", n,
                         reason=f"the last computed value is {mv.format_value(last)} but the final "
                                f"answer line {what}", fix=f"#### {mv.format_value(last)}")
    return Diagnosis(False, None, None, UNLOCALISED, n,
                     reason="every computation is right and uses given or derived quantities, so "
                            "no step shows where the wrong answer comes from")


# ----------------------------------------------------------------------------- code

def parse_straight_line_code(code: str) -> list[Op] | None:
    """Ops of `def f(x): x = x op k ...; return x`, or None if the code is not of that form.

    Code of exactly this form can be evaluated without executing it, which is what lets the
    synthetic code task check thousands of rollouts per second; anything else goes to the sandbox.
    """
    lines = code.rstrip("\n").split("\n")
    if len(lines) < 2 or lines[0] != "def f(x):" or lines[-1] != "    return x":
        return None
    ops = []
    for line in lines[1:-1]:
        m = _STATEMENT.match(line)
        if m is None:
            return None
        ops.append(Op(m.group(1), int(m.group(2))))
    return ops


def _diagnose_code(problem: Problem, attempt: str, verdict) -> Diagnosis:
    spans = code_steps(attempt)
    n = len(spans)
    if verdict.all_passed:
        return Diagnosis(True, None, None, "none", n)
    label = {"syntax": "syntax", "runtime": "runtime_error", "timeout": "timeout"}.get(
        verdict.error_type, "wrong_output")
    line_no = _error_line(verdict.first_failure or "")
    lines = attempt.split("\n")
    program = _ops(problem)
    if program is not None and label == "wrong_output":
        _, ops = program
        body = [attempt[s:e] for s, e in spans]
        for i, want in enumerate(ops):
            if i >= len(body) - 1:  # last body line is `return x`
                return Diagnosis(False, min(i, n - 1), spans[min(i, n - 1)], "wrong_algorithm", n,
                                 reason=f"the function stops before the statement `{code_statement(want).strip()}`",
                                 fix=code_statement(want))
            if body[i] != code_statement(want).strip():
                dropped = i + 1 < len(ops) and body[i] == code_statement(ops[i + 1]).strip()
                return Diagnosis(False, i, spans[i], "wrong_algorithm" if dropped else "wrong_output", n,
                                 reason=(f"statement {i + 1} `{body[i].strip()}` " +
                                         ("skips a statement" if dropped else
                                          f"should be `{code_statement(want).strip()}`")),
                                 fix=code_statement(want))
        k = min(len(ops), n - 1)
        return Diagnosis(False, k, spans[k], "wrong_algorithm", n,
                         reason="the function has statements the specification does not ask for",
                         fix="    return x")
    if line_no is not None and 1 <= line_no <= len(lines):
        start = sum(len(x) + 1 for x in lines[: line_no - 1])
        end = start + len(lines[line_no - 1])
        step = next((i for i, (s, e) in enumerate(spans) if start <= s and e <= end), None)
        if step is not None:
            return Diagnosis(False, step, spans[step], label, n,
                             reason=f"line {line_no} `{lines[line_no - 1].strip()}` fails ({label})")
    # No line of the attempt is named by the failure (a wrong value, a timeout): a guess such as
    # "the first line that differs from the reference" is not evidence, so nothing is flagged.
    return Diagnosis(False, None, None, UNLOCALISED, n,
                     reason=f"the program fails its tests ({label}) and no line is named by the failure")


def _error_line(message: str) -> int | None:
    nums = re.findall(r"line (\d+)", message)
    return int(nums[-1]) if nums else None


# ----------------------------------------------------------------------------- entry point

def diagnose(problem: Problem, attempt: str, code_verdict=None) -> Diagnosis:
    """The rule-based tagger. For code problems pass the sandbox verdict of `attempt`."""
    if problem.kind == "math":
        return _diagnose_math(problem, attempt)
    if code_verdict is None:
        raise ValueError(f"problem {problem.id}: diagnosing code needs the sandbox verdict")
    return _diagnose_code(problem, attempt, code_verdict)
