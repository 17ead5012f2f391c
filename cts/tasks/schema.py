"""The normalized records that flow through the pipeline.

Problem  — one task instance (every loader returns these).
Quadruple — (x, y⁰, f, y¹): prompt, first attempt, critique, revision, plus the flagged step.

Records travel as JSON lines; `from_row` validates a row and names the file/line on error.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from cts.io import DataError, read_jsonl

__all__ = ["Problem", "Quadruple", "SAFE_ID", "SPLITS", "load_problems"]

SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # ids end up in file names and shell commands
SPLITS = ("train", "dev", "test")


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise DataError(f"{where}: {msg}")


@dataclass(kw_only=True)
class Problem:
    """One problem, whatever its source.

    Attributes:
      id: unique, path-safe id (`gsm8k-train-00017`).
      task: task name (`synth_math`, `gsm8k`, `mbpp`, ...).
      kind: "math" (answer checked) or "code" (tests run).
      prompt: x, the text the policy sees.
      reference: a gold solution (math: GSM8K-style steps ending in `#### N`; code: source).
      answer: the final answer for math (normalized string), None for code.
      tests: code only: test source lines (asserts) or APPS-style {"inputs","outputs"} pairs.
      test_setup: code only: source run before the tests.
      entry_point: code only: the function the tests call (may be None for stdin programs).
      horizon: H, the number of reasoning steps of the reference solution.
      source: provenance (`synthetic`, `openai/gsm8k`, ...).
      split: "train" | "dev" | "test" once the split stage assigned it, else None.
      meta: free-form, JSON-serializable extras (difficulty, original index, ...).
    """

    id: str
    task: str
    kind: str
    prompt: str
    reference: str
    answer: str | None = None
    tests: list[Any] = field(default_factory=list)
    test_setup: str = ""
    entry_point: str | None = None
    horizon: int = 1
    source: str = ""
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        where = f"problem {self.id!r}"
        _check(isinstance(self.id, str) and bool(SAFE_ID.match(self.id)), where,
               "id must match [A-Za-z0-9_.-]+")
        _check(self.kind in ("math", "code"), where, f"kind must be math|code, got {self.kind!r}")
        _check(isinstance(self.horizon, int) and self.horizon >= 1, where,
               f"horizon must be an int >= 1, got {self.horizon!r}")
        _check(self.split in (None, *SPLITS), where, f"split must be one of {SPLITS}, got {self.split!r}")
        if self.kind == "math":
            _check(self.answer is not None, where, "math problems need an answer")
        else:
            _check(bool(self.tests), where, "code problems need tests")

    def to_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict, where: str = "row") -> "Problem":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}")
        try:
            return cls(**row)
        except TypeError as e:
            raise DataError(f"{where}: {e}") from e


@dataclass(kw_only=True)
class Quadruple:
    """(x, y⁰, f, y¹) for one problem, with the critique's localisation.

    Attributes:
      problem_id: the Problem this came from.
      prompt: x.
      attempt: y⁰, the base policy's first attempt.
      critique: f, the teacher's critique text.
      revision: y¹, the teacher's revision (attempt up to the error, then a correct continuation).
      attempt_correct: whether y⁰ already passed the verifier (then f says so and y¹ = y⁰).
      first_error_step: 0-based index of the first wrong step of y⁰ (None if correct).
      error_span: [start, end) character span of that step inside `attempt` (None if correct).
      n_steps: number of steps in y⁰ (lines for math, statements for code).
      error_type: the teacher's tag (the programmatic teacher's is the rule-based one; an LLM
        teacher's is its own or its error_classifier's), "none" when correct.
      teacher: which teacher produced it ("programmatic", "anthropic:<model>", ...).
      teacher_error_type: the teacher's own tag, kept beside the rule-based one.
      unlocalised: the attempt is wrong but the teacher found no evidence of WHERE (no wrong
        computation, no operand that appears nowhere, no contradiction): first_error_step and
        error_span are None, error_type is "unlocalised", and the revision is the reference
        solution. Such quadruples are kept and counted; terms that need a location must skip
        them (the step is None), terms that need only (x, y⁰, f, y¹) may use them.
      rule_error_type, rule_first_error_step: the rule-based tagger's tag and step, written by the
        taxonomy stage BESIDE the teacher's (None before that stage); nothing the teacher wrote
        is overwritten.
    """

    problem_id: str
    prompt: str
    attempt: str
    critique: str
    revision: str
    attempt_correct: bool
    first_error_step: int | None
    error_span: list[int] | None
    n_steps: int
    error_type: str = "none"
    teacher: str = "programmatic"
    teacher_error_type: str | None = None
    unlocalised: bool = False
    rule_error_type: str | None = None
    rule_first_error_step: int | None = None

    def __post_init__(self):
        where = f"quadruple for {self.problem_id!r}"
        if self.error_span is not None:
            s, e = self.error_span
            _check(0 <= s <= e <= len(self.attempt), where,
                   f"error_span {self.error_span} outside attempt of length {len(self.attempt)}")
        _check(not (self.unlocalised and self.attempt_correct), where,
               "a correct attempt cannot be unlocalised")
        _check((self.attempt_correct or self.unlocalised) == (self.first_error_step is None), where,
               "first_error_step must be None exactly when the attempt is correct or unlocalised")
        _check(not self.unlocalised or self.error_span is None, where,
               "an unlocalised quadruple has no error_span")

    @property
    def localised(self) -> bool:
        """A wrong attempt whose first error has a step (what location-needing terms may use)."""
        return not self.attempt_correct and not self.unlocalised

    def to_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict, where: str = "row") -> "Quadruple":
        try:
            return cls(**row)
        except TypeError as e:
            raise DataError(f"{where}: {e}") from e


def load_problems(path: str) -> list[Problem]:
    """The Problem records of a JSONL file (one per line); a bad row raises DataError naming path:line."""
    return [Problem.from_row(r, where=f"{path}:{i + 1}") for i, r in enumerate(read_jsonl(path))]
