"""The answer format, one home for every module that reads an attempt.

How an attempt y is split into steps, where its final `#### N` answer line is, which error labels
a critique may use, and the context under which CTS's L_decode scores a revision y¹. The verifiers,
the teachers (programmatic and LLM), the rule-based tagger (cts.taxonomy) and the CTS step all
import these, so "step 3" means the same characters everywhere. A leaf: it imports nothing above
cts.io.

Steps
  math: the non-blank lines before the final answer line — the LAST line that starts with `####`
        (nothing after it is a step either); without such a line every non-blank line is a step.
        An earlier `####` line (an answer the attempt later revised) stays a step, and so does a
        line with `####` in mid-line. An error in the answer line itself (or its absence) is step
        index n_steps, one past the last reasoning step.
  code: the non-blank, non-comment lines of the top-level function bodies (nested defs count as
        body lines); every such line when the attempt defines no function (a script).
A step's span is the [start, end) character range of its line without surrounding whitespace
(a `\\r` included), so `text[start:end]` is the step as written.

Changing any rule here changes what the teacher, the tagger and the verifier call a step: bump
`cts.verifiers.math.VERIFIER_VERSION` and `cts.teachers.prompts.PROMPT_VERSION` with it.
"""

from __future__ import annotations

import re

from cts.io import sha256_text

__all__ = [
    "ANSWER_MARKER", "CODE_LABELS", "DECODE_TEMPLATE", "LABELS", "MATH_LABELS", "NO_ERROR", "UNLOCALISED",
    "answer_line", "answer_line_span", "attempt_steps", "code_steps", "decode_template_hash", "error_labels",
    "format_decode_context", "math_steps", "max_error_step", "trajectory_steps",
]

ANSWER_MARKER = "####"  # GSM8K's final-answer marker: `#### 72`
_ANSWER_LINE = re.compile(r"^\s*####")
_DEF_LINE = re.compile(r"^(async\s+)?def\s")

# ----------------------------------------------------------------------------- error labels

NO_ERROR = "none"
MATH_LABELS = ("arithmetic_slip", "wrong_operation", "misread_quantity", "missing_step",
               "wrong_final_answer_extraction")
CODE_LABELS = ("syntax", "runtime_error", "timeout", "wrong_output", "wrong_algorithm")
LABELS = (NO_ERROR, *MATH_LABELS, *CODE_LABELS)  # the label space a teacher (LLM or rules) may use
# The rule-based tagger's tag for a wrong attempt with no evidence of where it goes wrong. Not a
# teacher label (not in LABELS): such quadruples have no step, and no step-level critique id.
UNLOCALISED = "unlocalised"


def error_labels(kind: str) -> tuple[str, ...]:
    """The labels a critique may give a wrong attempt of `kind` ("math" | "code"), "none" excluded."""
    if kind == "math":
        return MATH_LABELS
    if kind == "code":
        return CODE_LABELS
    raise ValueError(f"kind must be 'math' or 'code', got {kind!r}")


# ----------------------------------------------------------------------------- steps

def _line_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, line) of every line, end excluding the newline."""
    spans, pos = [], 0
    for line in text.split("\n"):
        spans.append((pos, pos + len(line), line))
        pos += len(line) + 1
    return spans


def _stripped_span(start: int, line: str) -> tuple[int, int]:
    lead = len(line) - len(line.lstrip())
    return start + lead, start + len(line.rstrip())


def answer_line(answer) -> str:
    """The final-answer line of a math solution: `#### 72`."""
    return f"{ANSWER_MARKER} {answer}"


def answer_line_span(text: str) -> tuple[int, int] | None:
    """Span of a math attempt's final `#### N` line (whitespace-stripped); None if it has none.
    This line is step index n_steps, one past the last reasoning step."""
    answer = None
    for start, _, line in _line_spans(text):
        if _ANSWER_LINE.match(line):
            answer = _stripped_span(start, line)
    return answer


def math_steps(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the reasoning steps of a math attempt (see the module docstring)."""
    lines = _line_spans(text)
    answer_lines = [i for i, (_, _, line) in enumerate(lines) if _ANSWER_LINE.match(line)]
    if answer_lines:
        lines = lines[: answer_lines[-1]]
    return [_stripped_span(start, line) for start, _, line in lines if line.strip()]


def code_steps(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the steps of a code attempt (see the module docstring)."""
    lines = [(s, line) for s, _, line in _line_spans(text)
             if line.strip() and not line.strip().startswith("#")]
    if not any(_DEF_LINE.match(line.lstrip()) for _, line in lines):
        return [_stripped_span(s, line) for s, line in lines]  # a script: every statement counts
    steps, in_body, in_header = [], False, False
    for s, line in lines:
        indented = line[:1] in (" ", "\t")
        code = line.split("#", 1)[0].rstrip()  # rough: a '#' inside a string only shortens the check
        if not indented:
            in_body = False
            in_header = bool(_DEF_LINE.match(line))
            if in_header and code.endswith(":"):
                in_header, in_body = False, True
            continue
        if in_header:  # continuation of a multi-line signature
            if code.endswith(":"):
                in_header, in_body = False, True
            continue
        if in_body:
            steps.append(_stripped_span(s, line))
    return steps


def attempt_steps(kind: str, text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the steps of an attempt of `kind` ("math" | "code"), in order."""
    if kind == "math":
        return math_steps(text)
    if kind == "code":
        return code_steps(text)
    raise ValueError(f"kind must be 'math' or 'code', got {kind!r}")


def trajectory_steps(kind: str, text: str) -> list[tuple[int, int]]:
    """The steps CTS maps tokens to: the reasoning steps, then (math) the `#### N` line, so that an
    error in the answer line (step index n_steps) is the error of a step."""
    if kind != "math":
        return attempt_steps(kind, text)
    answer = answer_line_span(text)
    return math_steps(text) + ([answer] if answer is not None else [])


def max_error_step(kind: str, n_steps: int) -> int:
    """Largest valid first-error step index: n_steps for math (the answer line), n_steps - 1 for code."""
    return n_steps if kind == "math" else max(n_steps - 1, 0)


# ----------------------------------------------------------------------------- decode context

DECODE_TEMPLATE = (
    "{prompt}\n\n"
    "### First attempt\n{attempt}\n\n"
    "### Critique\n{critique}\n\n"
    "### Revised solution\n"
)
"""The context under which the loop scores y¹: L_decode = −log π_θ(y¹ | DECODE_TEMPLATE(x, y⁰, f)),
summed over the revision's tokens only (the context tokens are not scored)."""


def format_decode_context(prompt: str, attempt: str, critique: str) -> str:
    """Fill DECODE_TEMPLATE; braces inside the texts are kept verbatim."""
    for name, value in (("prompt", prompt), ("attempt", attempt), ("critique", critique)):
        if not isinstance(value, str):
            raise TypeError(f"format_decode_context: {name} must be a str, got {type(value).__name__}")
    return DECODE_TEMPLATE.format(prompt=prompt, attempt=attempt, critique=critique)


def decode_template_hash() -> str:
    """sha256 of DECODE_TEMPLATE, to store next to every checkpoint that used it."""
    return sha256_text(DECODE_TEMPLATE)
