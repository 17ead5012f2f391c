"""Known errors injected into correct GSM8K solutions: the yardstick of the step check and teacher.

`inject_error(prompt, solution, kind, rng)` changes ONE annotated step of a solution and returns
an `Injected` record with the step index, so a measurement knows where the first error is:

  "arithmetic": the annotation's claimed result c becomes a wrong value (c ± 1, ± 2, ± 10, × 10 or
                c / 10, never within rounding of c); the visible copy of c right after the
                annotation changes with it. The expression is unchanged.
  "operand":    one operand v of the annotation becomes v' = v ± d (d in 1..9, or v × 10), chosen
                so that v' is a quantity the problem and the earlier steps never state, nor a unit
                conversion of one (`cts.verifiers.math.is_known`: an operand that "appears nowhere"); the annotation's result is recomputed from it, so the
                step's arithmetic is right and only the operand is wrong. The prose copy of v in
                the step and the visible result change with it.

  "operation":  one operator of the annotation is swapped (+ and -, * and /) and the result is
                recomputed: right arithmetic on known operands, so nothing checkable shows the
                error — the teacher should flag it only if a later contradiction does, else say
                `unlocalised`.

Later steps are left as written (they keep using the original values, as a model that copied
numbers forward would). Only steps whose annotation has an operator and whose prefix passes the
step check are chosen.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from cts.answer_format import math_steps
from cts.verifiers import math as mv

__all__ = ["INJECTION_KINDS", "Injected", "inject_error"]

INJECTION_KINDS = ("arithmetic", "operand", "operation")
_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*"}
_ANN = re.compile(r"<<(?P<expr>[^<>=]*)=(?P<res>[^<>]*)>>")
_NUM_TOKEN = re.compile(r"(?<![\d.])(?:\d+(?:\.\d+)?|\.\d+)")


@dataclass(frozen=True)
class Injected:
    """A solution with one injected error: `text`, its `step` index (cts.answer_format.math_steps), `kind`, `note`."""

    text: str
    step: int
    kind: str
    note: str


def _fmt(v: Fraction) -> str:
    """A calculator-style print of v: exact when it terminates, else 2 decimals."""
    s = mv.format_value(v)
    if "/" in s:
        return f"{float(v):.2f}"
    return s


def _candidate_steps(prompt: str, solution: str) -> list[tuple[int, tuple[int, int], re.Match]]:
    spans = math_steps(solution)
    credits = mv.step_credits(prompt, solution)
    passing = {c.index for c in credits if c.ok}
    out = []
    for i, (s, e) in enumerate(spans):
        if i not in passing:
            break
        for m in _ANN.finditer(solution[s:e]):
            if re.search(r"\d\s*[-+*/x]\s*[\d(.]", m.group("expr")):
                out.append((i, (s, e), m))
                break
    return out


def _known_before(prompt: str, solution: str, step: int) -> set[Fraction]:
    known = mv.text_numbers(prompt)
    for s, e in math_steps(solution)[:step]:
        known |= mv.text_numbers(re.sub(r"<<[^<>]*>>", " ", solution[s:e]))
        for m in _ANN.finditer(solution[s:e]):
            try:
                known.add(mv.evaluate_expression(m.group("expr")))
            except ValueError:
                pass
    return known


def _replace_visible(after: str, old: str, new: str) -> str:
    """Replace the result printed right after an annotation (`>>24 clips` -> `>>23 clips`)."""
    m = re.match(r"\s*\$?\s*" + re.escape(old.strip()), after)
    if m is None:
        return after
    return after[:m.start()] + m.group(0).replace(old.strip(), new) + after[m.end():]


def _propagate(solution: str, step: int, old: Fraction, new: Fraction) -> str:
    """Carry a changed result forward: later annotations that use `old` use `new` (and so on)."""
    mapping = {old: new}
    spans = math_steps(solution)
    out, pos = [], 0
    for i, (s, e) in enumerate(spans):
        if i <= step:
            continue
        line = solution[s:e]
        new_line, cursor = [], 0
        for m in _ANN.finditer(line):
            expr, res = m.group("expr"), m.group("res")
            new_expr = _NUM_TOKEN.sub(lambda t: _fmt(mapping[Fraction(t.group(0))])
                                      if Fraction(t.group(0)) in mapping else t.group(0), expr)
            if new_expr == expr:
                continue
            try:
                before_v, after_v = mv.evaluate_expression(expr), mv.evaluate_expression(new_expr)
            except ValueError:
                continue
            mapping[before_v] = after_v
            new_res = _fmt(after_v)
            prose = line[cursor:m.start()]
            new_line.append(prose + f"<<{new_expr}={new_res}>>")
            tail_end = m.end()
            tail = _replace_visible(line[tail_end:], res, new_res)
            line = line[:tail_end] + tail
            cursor = tail_end
        new_line.append(line[cursor:])
        out.append((s, e, "".join(new_line)))
    for s, e, text in reversed(out):
        solution = solution[:s] + text + solution[e:]
    # the final answer follows the last changed value
    m = re.search(r"####\s*(.+)$", solution.rstrip())
    if m is not None:
        parsed = mv._parse_answer(m.group(1))
        if parsed is not None and parsed[0] in mapping:
            solution = solution[:m.start(1)] + _fmt(mapping[parsed[0]]) + solution[m.end(1):]
    return solution


def inject_error(prompt: str, solution: str, kind: str, rng: random.Random, *,
                 propagate: bool = False) -> Injected | None:
    """One error of `kind` at a random annotated step; None if the solution has no such step.

    propagate: later steps use the wrong value consistently (their own arithmetic stays right)
      and the final answer follows it, as a model that made one slip and carried on would write.
    """
    if kind not in INJECTION_KINDS:
        raise ValueError(f"kind must be one of {INJECTION_KINDS}, got {kind!r}")
    candidates = _candidate_steps(prompt, solution)
    rng.shuffle(candidates)
    for step, (s, e), m in candidates:
        line = solution[s:e]
        expr, res = m.group("expr"), m.group("res")
        try:
            actual = mv.evaluate_expression(expr)
        except ValueError:
            continue
        if kind == "arithmetic":
            options = [actual + 1, actual - 1, actual + 2, actual + 10, actual * 10, actual / 10]
            options = [v for v in options if not mv.claim_matches(actual, _fmt(v)) and v != 0]
            if not options:
                continue
            wrong_v = rng.choice(options)
            wrong = _fmt(wrong_v)
            new_line = (line[:m.start()] + f"<<{expr}={wrong}>>"
                        + _replace_visible(line[m.end():], res, wrong))
            note = f"{expr.strip()} claimed as {wrong} (is {mv.format_value(actual)})"
            changed = (actual, Fraction(wrong))
        elif kind == "operation":
            ops = [i for i, ch in enumerate(expr) if ch in _SWAP]
            if not ops:
                continue
            i = rng.choice(ops)
            new_expr = expr[:i] + _SWAP[expr[i]] + expr[i + 1:]
            try:
                new_v = mv.evaluate_expression(new_expr)
            except ValueError:
                continue
            if new_v == actual or new_v <= 0:
                continue
            new_res = _fmt(new_v)
            new_line = (line[:m.start()] + f"<<{new_expr}={new_res}>>"
                        + _replace_visible(line[m.end():], res, new_res))
            note = f"{expr.strip()} -> {new_expr.strip()}"
            changed = (actual, Fraction(new_res))
        else:
            tokens = list(_NUM_TOKEN.finditer(expr))
            rng.shuffle(tokens)
            known = _known_before(prompt, solution, step) | mv.UNIT_CONSTANTS
            new_line = None
            for tok in tokens:
                v = Fraction(tok.group(0))
                choices = [v + d for d in range(1, 10)] + [v - d for d in range(1, 10) if v - d > 0] + [v * 10]
                choices = [c for c in choices if not mv.is_known(c, known)]
                if not choices:
                    continue
                new_v = rng.choice(choices)
                new_tok = _fmt(new_v)
                new_expr = expr[:tok.start()] + new_tok + expr[tok.end():]
                try:
                    new_res = _fmt(mv.evaluate_expression(new_expr))
                except ValueError:
                    continue
                before = line[:m.start()]
                old = tok.group(0)
                k = before.rfind(old)
                if k >= 0 and not before[k - 1:k].isdigit() and not before[k + len(old):k + len(old) + 1].isdigit():
                    before = before[:k] + new_tok + before[k + len(old):]
                new_line = before + f"<<{new_expr}={new_res}>>" + _replace_visible(line[m.end():], res, new_res)
                note = f"operand {old} -> {new_tok} in {expr.strip()}"
                changed = (actual, Fraction(new_res))
                break
            if new_line is None:
                continue
        text = solution[:s] + new_line + solution[e:]
        if propagate:
            text = _propagate(text, step, *changed)
        return Injected(text, step, kind, note)
    return None
