"""Synthetic, horizon-controlled tasks the project generates itself (the key-free default).

synth_math — multi-step arithmetic word problems in GSM8K's format: one step per line with a
  `<<a op b=c>>` calculator annotation, last line `#### N`. The horizon H is the number of steps.
synth_code — the code analogue: a function of H statements `x = x op k`, verified by its tests.

Both draw the same hidden "program" (a start value and H operations), so the math and code tasks
differ only in surface form. The program is kept in `meta["ops"]` so the programmatic teacher can
check every step exactly. `corrupt_solution` injects one realistic error into a gold solution; the
base policy is trained on a mix of gold and corrupted solutions so that it is imperfect in ways
the teacher can localise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cts.answer_format import answer_line
from cts.tasks.schema import Problem

__all__ = [
    "ERROR_KINDS_MATH",
    "ERROR_KINDS_CODE",
    "Op",
    "apply_op",
    "base_sft_pairs",
    "code_statement",
    "corrupt_solution",
    "generate_synth_code",
    "generate_synth_math",
    "math_step_line",
    "solve_code",
    "solve_math",
]

NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal")
ITEMS = ("pens", "cups", "eggs", "cards", "coins", "books")
MAX_VALUE = 99  # default bound on every intermediate value: at most two-digit arithmetic

# op symbol -> (word form in the prompt, python operator)
_PHRASE = {"+": "gets {k}", "-": "loses {k}", "*": "times {k}"}


@dataclass(frozen=True)
class Op:
    symbol: str  # "+", "-" or "*"
    operand: int

    def to_row(self) -> list:
        return [self.symbol, self.operand]


def apply_op(value: int, op: Op) -> int:
    if op.symbol == "+":
        return value + op.operand
    if op.symbol == "-":
        return value - op.operand
    if op.symbol == "*":
        return value * op.operand
    raise ValueError(f"unknown op symbol {op.symbol!r}")


def _random_program(rng: random.Random, horizon: int, max_operand: int,
                    max_value: int = MAX_VALUE) -> tuple[int, list[Op]]:
    """A start value and `horizon` ops keeping every intermediate value in [0, max_value]."""
    value = rng.randint(1, max_operand)
    start, ops = value, []
    for _ in range(horizon):
        choices = []
        for k in range(1, max_operand + 1):
            if value + k <= max_value:
                choices.append(Op("+", k))
            if value - k >= 0:
                choices.append(Op("-", k))
        for k in (2, 3):
            if value * k <= max_value and value > 0:
                choices.append(Op("*", k))
        op = rng.choice(choices)
        ops.append(op)
        value = apply_op(value, op)
    return start, ops


def math_step_line(a: int, op: Op, c: int | None = None) -> str:
    """`a op b=<<a op b=c>>c`; c defaults to the true result (pass another c to write a slip)."""
    c = apply_op(a, op) if c is None else c
    return f"{a}{op.symbol}{op.operand}=<<{a}{op.symbol}{op.operand}={c}>>{c}"


def solve_math(start: int, ops: list[Op]) -> str:
    lines, value = [], start
    for op in ops:
        lines.append(math_step_line(value, op))
        value = apply_op(value, op)
    return "\n".join(lines + [answer_line(value)])


def code_statement(op: Op) -> str:
    return f"    x = x {op.symbol} {op.operand}"


def solve_code(ops: list[Op]) -> str:
    return "\n".join(["def f(x):", *(code_statement(op) for op in ops), "    return x"])


def _math_prompt(rng: random.Random, start: int, ops: list[Op]) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    steps = " ".join(f"{name} {_PHRASE[op.symbol].format(k=op.operand)}." for op in ops)
    return f"{name} has {start} {item}. {steps} How many {item}?"


def _code_prompt(ops: list[Op]) -> str:
    steps = ", ".join(_PHRASE[op.symbol].format(k=op.operand) for op in ops)
    return f"Write f(x): x {steps}. Return x."


def _dedupe_key(start: int, ops: list[Op]) -> tuple:
    return (start, tuple((o.symbol, o.operand) for o in ops))


def _programs(n: int, horizons: list[int], seed: int, max_operand: int, max_value: int = MAX_VALUE):
    """n distinct programs, horizons cycling through `horizons` so every H is equally common."""
    if n < 1:
        raise ValueError(f"n_problems must be >= 1, got {n}")
    if not horizons or min(horizons) < 1:
        raise ValueError(f"horizons must be a non-empty list of ints >= 1, got {horizons}")
    rng, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"cannot draw {n} distinct programs with horizons={horizons}, "
                             f"max_operand={max_operand}, max_value={max_value}; lower n_problems")
        h = horizons[len(out) % len(horizons)]
        start, ops = _random_program(rng, h, max_operand, max_value)
        key = _dedupe_key(start, ops)
        if key in seen:  # identical programs in two splits would leak the answer
            continue
        seen.add(key)
        out.append((rng.random(), start, ops))
    return out


def generate_synth_math(n: int, horizons: list[int], seed: int, max_operand: int = 9,
                        max_value: int = MAX_VALUE) -> list[Problem]:
    problems = []
    for i, (_, start, ops) in enumerate(_programs(n, horizons, seed, max_operand, max_value)):
        rng = random.Random(f"{seed}-{i}")
        reference = solve_math(start, ops)
        value = start
        for op in ops:
            value = apply_op(value, op)
        problems.append(Problem(
            id=f"synth_math-{i:05d}", task="synth_math", kind="math",
            prompt=_math_prompt(rng, start, ops), reference=reference, answer=str(value),
            horizon=len(ops), source="synthetic",
            meta={"start": start, "ops": [o.to_row() for o in ops], "generator_seed": seed},
        ))
    return problems


def generate_synth_code(n: int, horizons: list[int], seed: int, max_operand: int = 9,
                        max_value: int = MAX_VALUE) -> list[Problem]:
    problems = []
    for i, (_, start, ops) in enumerate(_programs(n, horizons, seed, max_operand, max_value)):
        inputs = sorted({start, (start + 3) % 10, (start * 7 + 1) % 10})
        tests = []
        for x in inputs:
            value = x
            for op in ops:
                value = apply_op(value, op)
            tests.append(f"assert f({x}) == {value}")
        problems.append(Problem(
            id=f"synth_code-{i:05d}", task="synth_code", kind="code",
            prompt=_code_prompt(ops), reference=solve_code(ops), tests=tests, entry_point="f",
            horizon=len(ops), source="synthetic",
            meta={"start": start, "ops": [o.to_row() for o in ops], "generator_seed": seed},
        ))
    return problems


# ----------------------------------------------------------------------------- error injection

ERROR_KINDS_MATH = ("arithmetic_slip", "wrong_operation", "misread_quantity", "missing_step",
                    "wrong_final_answer_extraction")
ERROR_KINDS_CODE = ("wrong_output", "wrong_algorithm", "syntax", "runtime_error")


def _ops_of(problem: Problem) -> tuple[int, list[Op]]:
    return problem.meta["start"], [Op(s, k) for s, k in problem.meta["ops"]]


def _other_symbol(rng: random.Random, symbol: str) -> str:
    return rng.choice([s for s in "+-*" if s != symbol])


def corrupt_solution(problem: Problem, rng: random.Random) -> tuple[str, str, int]:
    """One realistic error injected into the gold solution of a synthetic problem.

    Returns (solution_text, error_kind, error_step). Steps after the error are computed
    consistently from the wrong value — the way a model that made one mistake continues.
    """
    start, ops = _ops_of(problem)
    step = rng.randrange(len(ops))
    if problem.kind == "math":
        kind = rng.choice(ERROR_KINDS_MATH)
        lines, value = [], start
        for i, op in enumerate(ops):
            if i == step and kind == "missing_step" and len(ops) > 1:
                continue
            if i == step and kind == "wrong_operation":
                op = Op(_other_symbol(rng, op.symbol), op.operand if op.symbol != "*" else 2)
            if i == step and kind == "misread_quantity":
                op = Op(op.symbol, op.operand + rng.choice([-1, 1]) if op.operand > 1 else op.operand + 1)
            result = apply_op(value, op)
            if i == step and kind == "arithmetic_slip":
                slip = result + rng.choice([-2, -1, 1, 2])
                lines.append(math_step_line(value, op, slip))
                value = slip
            else:
                lines.append(math_step_line(value, op))
                value = result
        final = value
        if kind == "wrong_final_answer_extraction":
            final = value + rng.choice([-10, -1, 1, 10])
        if kind == "missing_step" and len(ops) == 1:
            kind, final = "wrong_final_answer_extraction", value + 1
        return "\n".join(lines + [answer_line(final)]), kind, step
    kind = rng.choice(ERROR_KINDS_CODE)
    body = [code_statement(op) for op in ops]
    if kind == "wrong_output":  # a wrong constant or operator in one statement
        op = ops[step]
        body[step] = code_statement(Op(op.symbol, op.operand + 1)) if rng.random() < 0.5 else \
            code_statement(Op(_other_symbol(rng, op.symbol), op.operand))
    elif kind == "wrong_algorithm":  # a statement dropped
        body.pop(step) if len(body) > 1 else body.insert(0, "    x = x + 1")
    elif kind == "syntax":
        body[step] = body[step].replace("= x", "= x x", 1)
    else:  # runtime_error: an undefined name
        body[step] = body[step].replace("= x", "= y", 1)
    return "\n".join(["def f(x):", *body, "    return x"]), kind, step


def base_sft_pairs(problems: list[Problem], error_rate: float, seed: int) -> list[tuple[str, str]]:
    """The base policy's SFT data: (prompt, gold solution) of every problem, plus error-injected
    solutions of the synthetic problems (`corrupt_solution`), `error_rate` of the mixture, so the
    base policy makes the mistakes that critiques then point at."""
    rng = random.Random(seed)
    pairs = [(p.prompt, p.reference) for p in problems]
    corruptible = [p for p in problems if "ops" in p.meta]
    if corruptible and error_rate > 0:
        n_bad = round(len(pairs) * error_rate / (1 - error_rate)) if error_rate < 1 else len(pairs)
        for i in range(n_bad):
            p = corruptible[i % len(corruptible)]
            pairs.append((p.prompt, corrupt_solution(p, rng)[0]))
    return pairs
