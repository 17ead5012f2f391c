"""The LLM teacher's prompt: versioned template, response schema, parsing (steps: cts.answer_format).

The teacher sees the problem and the first attempt y⁰ with its steps numbered from 0, and must answer
with one JSON object

    {"first_error_step": int | null, "error_type": <label>, "critique": str, "revision": str}

validated against `response_schema(kind, n_steps)`. Any edit to the wording, the labels or the schema
changes `prompt_template_hash()`; bump `PROMPT_VERSION` with it so cached responses of the old prompt
are never reused (the version is part of every cache key).

Steps and labels are the answer format's (`cts.answer_format`), the same rules as the verifier's
and the rule-based tagger's: math steps are the non-empty lines before the final `#### N` line (an
error in that line, or its absence, is step index n_steps); code steps are the non-empty,
non-comment lines of the function bodies.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from cts.answer_format import NO_ERROR, answer_line_span, attempt_steps, error_labels, max_error_step
from cts.io import sha256_text, stable_json
from cts.tasks.schema import Problem

__all__ = [
    "PROMPT_VERSION",
    "ResponseFormatError",
    "build_messages",
    "parse_response",
    "prompt_template_hash",
    "reask_message",
    "response_schema",
]

PROMPT_VERSION = "cts-teacher-v1"

_LABEL_HELP = {
    "arithmetic_slip": "right operation, wrong arithmetic result",
    "wrong_operation": "an operation that does not match the problem (e.g. adds instead of multiplies)",
    "misread_quantity": "uses a number or quantity that the problem does not state",
    "missing_step": "skips a necessary step, so a later quantity is wrong or missing",
    "wrong_final_answer_extraction": "the reasoning is right but the final `#### N` answer is not its result",
    "syntax": "the code does not parse",
    "runtime_error": "the code raises an exception on a test input",
    "wrong_output": "the code runs but returns a wrong value on some test",
    "timeout": "the code is too slow or does not terminate",
    "wrong_algorithm": "the approach cannot solve the problem in general",
}

SYSTEM_TEMPLATE = """\
You are a meticulous teacher grading a student's first attempt at a {kind_noun}.
Find the FIRST step of the attempt that is wrong, classify the error, explain it briefly, and
write a corrected solution.

Answer with ONE JSON object and nothing else, with exactly these keys:
  "first_error_step": the number in brackets of the first wrong step, or null if the attempt is correct
  "error_type": one of {labels}, or "none" if and only if the attempt is correct
  "critique": 1-4 sentences naming the wrong step and why it is wrong (say it is correct if so)
  "revision": {revision_rule}

Error types:
{label_help}"""

_KIND_TEXT = {
    "math": {
        "kind_noun": "math word problem",
        "revision_rule": ("the full corrected solution: copy the attempt's steps before the first "
                          "error unchanged, then continue correctly, one step per line, ending with "
                          "a line `#### <final answer>`; if the attempt is correct, repeat it"),
    },
    "code": {
        "kind_noun": "programming problem",
        "revision_rule": ("the full corrected Python source: keep the attempt's code before the first "
                          "error unchanged where possible, then fix it; no Markdown fences; if the "
                          "attempt is correct, repeat it"),
    },
}

USER_TEMPLATE = """\
Problem:
{prompt}

Student attempt, steps numbered from 0:
{numbered_steps}

Full attempt text:
<<<ATTEMPT
{attempt}
ATTEMPT>>>

Reply with the JSON object only."""

REASK_TEMPLATE = """\
Your previous reply could not be used: {error}
Reply again with ONE JSON object with keys first_error_step, error_type, critique, revision,
and nothing else."""

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class ResponseFormatError(ValueError):
    """The LLM's reply is not a valid response object; the message is fed back in the re-ask."""


# MESSAGES -----------------------------------------------------------------------------------------

def build_messages(problem: Problem, attempt: str) -> tuple[str, list[dict[str, str]]]:
    """The system prompt and the first user turn for one (problem, attempt).

    Returns:
      (system, [{"role": "user", "content": ...}]) — provider-neutral; the OpenAI transport
      prepends the system text as a "system" message.
    """
    labels = error_labels(problem.kind)
    system = SYSTEM_TEMPLATE.format(
        labels=", ".join(f'"{x}"' for x in labels),
        label_help="\n".join(f"  {x}: {_LABEL_HELP[x]}" for x in labels),
        **_KIND_TEXT[problem.kind],
    )
    steps = attempt_steps(problem.kind, attempt)
    numbered = [f"[{i}] {attempt[s:e]}" for i, (s, e) in enumerate(steps)]
    if problem.kind == "math":
        answer = answer_line_span(attempt)
        numbered.append(f"[{len(steps)}] " + (f"{attempt[answer[0]:answer[1]]}   (final answer line)"
                                              if answer else "(no final `#### N` answer line)"))
    user = USER_TEMPLATE.format(prompt=problem.prompt.strip(),
                                numbered_steps="\n".join(numbered) or "(no steps)", attempt=attempt)
    return system, [{"role": "user", "content": user}]


def reask_message(error: str) -> str:
    """The user turn sent after an unusable reply; `error` is the validation message."""
    return REASK_TEMPLATE.format(error=error)


# RESPONSE VALIDATION ------------------------------------------------------------------------------

def response_schema(kind: str, n_steps: int) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a valid reply for an attempt with `n_steps` steps.

    "none" must come with first_error_step null, any other label with an integer step in
    [0, max_error_step(kind, n_steps)] (math: n_steps = the final answer line; code: 0 for an
    attempt with no steps at all).
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["first_error_step", "error_type", "critique", "revision"],
        "properties": {
            "first_error_step": {"type": ["integer", "null"], "minimum": 0,
                                 "maximum": max_error_step(kind, n_steps)},
            "error_type": {"enum": [*error_labels(kind), NO_ERROR]},
            "critique": {"type": "string", "minLength": 1},
            "revision": {"type": "string"},
        },
        "if": {"properties": {"error_type": {"const": NO_ERROR}}},
        "then": {"properties": {"first_error_step": {"type": "null"}}},
        "else": {"properties": {"first_error_step": {"type": "integer"}}},
    }


def _strip_fences(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1) if m else text.strip()


def parse_response(text: str, kind: str, n_steps: int) -> dict[str, Any]:
    """Parse and validate one reply.

    Strips a surrounding ```json fence, parses JSON, validates against `response_schema`.
    Raises ResponseFormatError with a short message (fed back to the model in the re-ask).
    """
    body = _strip_fences(text)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise ResponseFormatError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    validator = jsonschema.Draft202012Validator(response_schema(kind, n_steps))
    errors = sorted(validator.iter_errors(obj), key=lambda err: list(err.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        msg = err.message if len(err.message) <= 300 else err.message[:300] + "..."
        raise ResponseFormatError(f"schema violation at {where}: {msg}")
    return obj


def prompt_template_hash() -> str:
    """sha256 over every piece of text and schema that shapes the prompt or its validation."""
    return sha256_text(stable_json({
        "version": PROMPT_VERSION,
        "system": SYSTEM_TEMPLATE, "user": USER_TEMPLATE, "reask": REASK_TEMPLATE,
        "kind_text": _KIND_TEXT, "label_help": _LABEL_HELP,
        "schemas": {k: response_schema(k, 10) for k in ("math", "code")},
    }))
