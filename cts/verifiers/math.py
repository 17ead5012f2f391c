"""Math verifier: final-answer extraction and matching, and GSM8K calculator-annotation checks.

Two jobs, both pure functions of strings:

1. Final answers. `extract_answer` finds the answer a solution commits to (`#### N`, else the
   last `\\boxed{...}`, else the last number); `normalize_answer` maps it to a canonical string;
   `answers_match` compares two answers as exact rationals (`fractions.Fraction`), so
   `"1,234.50"`, `"$1234.5"` and `"2469/2"` are all the same answer and no float rounding
   ever decides a match.
2. Steps. A GSM8K solution is a list of lines, each optionally carrying calculator annotations
   `<<48/2=24>>`, and ends with `#### N`. `split_steps` gives the character span of every step
   (the final-answer line is not a step); `check_steps` re-evaluates every annotation with a
   small recursive-descent parser (never `eval`) and `first_error_step` returns the index of
   the first step whose arithmetic is wrong. This is what localizes the first error in an
   attempt for the programmatic teacher.

Normalization rules (`normalize_answer`), in order:
  - LaTeX wrappers are unwrapped: `\\boxed{..}`, `\\text{..}`, `\\frac{a}{b}` / `\\dfrac` /
    `\\tfrac` (-> `a/b`), `\\$`, `\\%`, `\\!`, `\\,`.
  - The FIRST number in the string is the answer; any words or units around it are ignored
    (`"18 dollars"` -> `18`, `"x = 5"` -> `5`). A string without a number gives None.
  - `$` and a unicode minus `−` are accepted; a sign may be separated from the digits by `$`
    (`-$5` and `$-5` are both `-5`).
  - Thousands separators are removed only in the well-formed pattern `d{1,3}(,ddd)+`
    (`1,234,567`); `3,4` is the number 3 followed by other text.
  - `%` is dropped, not divided: GSM8K states percentages as bare numbers (`#### 25` for 25%).
  - Canonical form: an integer value prints as an integer (`3.00` -> `3`, `8/4` -> `2`,
    `-0` -> `0`); a fraction written `a/b` prints reduced (`6/4` -> `3/2`); a decimal prints
    without trailing zeros (`2.50` -> `2.5`, `.5` -> `0.5`).

Calculator annotations (`check_steps`): the grammar is
    expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|'//'|'%') unary)* ;
    unary := ('-'|'+') unary | power ; power := postfix (('^'|'**') unary)? ;
    postfix := atom '%'* ; atom := number | '(' expr ')'
with `x`, `×`, `÷`, `−` accepted as `*`, `*`, `/`, `-`. GSM8K's annotations were produced by a
Python calculator, so `//` is floor division (`<<560//10=56>>` occurs in the gold data) and
`a % b` (a number or `(` right after `%`) is the modulo; any other `%` means percent (/100),
so `50%+10` is 10.5. Exponents are limited to integers of magnitude <= 64 (so a hostile `9^9^9` cannot hang
the checker). The claimed result may be a number (sign, `$`, thousands separators, trailing `%`
allowed) or a fraction `a/b` (`<<3/4=3/4>>` occurs in the gold data). A claimed decimal with d
decimals is accepted when it equals the exact value, or the value rounded to d decimals (an exact
half may round either way), as in `<<10/3=3.33>>`; a claimed fraction must be exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "VERIFIER_VERSION",
    "Annotation",
    "StepCheck",
    "answers_match",
    "check_steps",
    "evaluate_expression",
    "extract_answer",
    "first_error_step",
    "format_value",
    "is_correct",
    "normalize_answer",
    "parse_annotation_number",
    "split_steps",
]

# Bump whenever any function here could return a different result for the same input:
# it goes into the fairness fingerprints of every run that used this verifier.
VERIFIER_VERSION = "math-1"

# A number as written in prose: thousands-grouped or plain digits, optional decimals, or `.5`.
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_IN_TEXT = re.compile(
    # a sign counts only when it cannot be a binary minus: not after a word, `)` or `.` and
    # attached to the number (`3-5` and `10 - 5` end in the number 5, `-5` is minus five)
    r"(?:(?<![\w).])(?P<sign>[-−+]))?(?:\$\s*(?P<sign2>[-−])?)?"
    rf"(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)
_ANSWER_LINE = re.compile(r"^\s*####")
_FINAL_MARKER = re.compile(r"####[ \t]*(?P<ans>[^\n]*)")
_ANNOTATION = re.compile(r"<<(?P<body>[^<>]*)>>")
_MAX_EXPONENT = 64


# ------------------------------------------------------------------------------------------
# Final answers
# ------------------------------------------------------------------------------------------


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}`, matching nested braces."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
        # unbalanced: try the previous \boxed
    return None


def extract_answer(text: str) -> str | None:
    """The raw final-answer string a solution commits to, or None.

    Priority: the text after the LAST `####` marker (rest of that line); else the content of
    the last `\\boxed{...}`; else the last number in the text (with its sign, `$` and `/den`).
    The string is returned as written (stripped); use `normalize_answer` to canonicalize it.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    markers = list(_FINAL_MARKER.finditer(text))
    if markers:
        ans = markers[-1].group("ans").strip()
        return ans or None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    numbers = list(_NUMBER_IN_TEXT.finditer(text))
    if not numbers:
        return None
    return numbers[-1].group(0).strip()


def _unwrap_latex(s: str) -> str:
    for _ in range(4):  # nested wrappers such as \boxed{\text{5}}
        s2 = re.sub(r"\\(?:boxed|fbox|text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
        s2 = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", s2)
        if s2 == s:
            break
        s = s2
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    # `(3)/(4)` from \frac: drop the parentheses around plain numbers.
    return re.sub(r"\(\s*([-−]?[\d.,]+)\s*\)", r"\1", s)


def _decimal_to_fraction(num: str) -> Fraction:
    return Fraction(num.replace(",", "").rstrip(".") or "0")


def format_value(value: Fraction, as_fraction: bool = False) -> str:
    """Canonical text of an exact value.

    Integers print as integers. Otherwise `as_fraction=True` prints the reduced `p/q`;
    `as_fraction=False` prints the exact decimal when the denominator has only factors 2 and 5
    (`2.5`, `0.125`) and falls back to `p/q` for repeating decimals (`1/3`).
    """
    if value.denominator == 1:
        return str(value.numerator)
    if not as_fraction:
        den, twos, fives = value.denominator, 0, 0
        while den % 2 == 0:
            den //= 2
            twos += 1
        while den % 5 == 0:
            den //= 5
            fives += 1
        if den == 1:
            digits = max(twos, fives)
            scaled = abs(value.numerator) * (10**digits // value.denominator)
            whole, frac = divmod(scaled, 10**digits)
            sign = "-" if value < 0 else ""
            return f"{sign}{whole}.{str(frac).rjust(digits, '0')}"
    return f"{value.numerator}/{value.denominator}"


def _parse_answer(s: str | None) -> tuple[Fraction, bool] | None:
    """(exact value, written-as-fraction) of the first number in `s`, or None."""
    if s is None:
        return None
    if not isinstance(s, str):
        raise TypeError(f"answer must be a str or None, got {type(s).__name__}")
    m = _NUMBER_IN_TEXT.search(_unwrap_latex(s))
    if m is None:
        return None
    negative = any(m.group(g) and m.group(g).strip() in "-−" for g in ("sign", "sign2"))
    value = _decimal_to_fraction(m.group("num"))
    as_fraction = False
    if m.group("den") is not None:
        den = _decimal_to_fraction(m.group("den"))
        if den == 0:
            return None
        value /= den
        as_fraction = True
    return (-value if negative else value), as_fraction


def normalize_answer(s: str | None) -> str | None:
    """Canonical string of the number in `s` (see the module docstring for the rules), or None.

    Examples: `"$1,234.00"` -> `"1234"`, `"-3 apples"` -> `"-3"`, `"14/4"` -> `"7/2"`,
    `"2.50"` -> `"2.5"`, `"25%"` -> `"25"`, `"\\frac{7}{2}"` -> `"7/2"`, `"none"` -> None.
    """
    parsed = _parse_answer(s)
    if parsed is None:
        return None
    value, as_fraction = parsed
    return format_value(value, as_fraction=as_fraction)


def answers_match(pred: str | None, gold: str | None) -> bool:
    """True iff both answers normalize to numbers with the same exact (rational) value."""
    p, g = _parse_answer(pred), _parse_answer(gold)
    return p is not None and g is not None and p[0] == g[0]


def is_correct(completion: str, gold_answer: str) -> bool:
    """Whether `completion`'s extracted final answer equals `gold_answer`.

    Raises:
      ValueError: `gold_answer` contains no number (a data problem, never a wrong attempt).
    """
    if _parse_answer(gold_answer) is None:
        raise ValueError(f"gold answer {gold_answer!r} contains no number")
    return answers_match(extract_answer(completion), gold_answer)


# ------------------------------------------------------------------------------------------
# Steps and calculator annotations
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """One `<<expression=claimed>>` calculator annotation.

    Attributes:
      expression: the left-hand side as written.
      claimed: the right-hand side as written.
      actual: canonical exact value of `expression` (`format_value`), None if it does not parse
        or divides by zero.
      ok: the expression parsed and `claimed` equals its value (exactly, or rounded to the
        number of decimals `claimed` shows).
      span: [start, end) character span of the whole `<<...>>` in the solution text.
    """

    expression: str
    claimed: str
    actual: str | None
    ok: bool
    span: tuple[int, int]


@dataclass(frozen=True)
class StepCheck:
    """One reasoning step (a non-empty line before the final-answer line).

    Attributes:
      index: 0-based step index.
      line: the step's text (the solution sliced by `span`).
      span: [start, end) character span of the line in the solution (newline excluded).
      annotations: the step's calculator annotations, in order (empty: nothing to check).
      ok: all annotations are ok (True when there are none).
    """

    index: int
    line: str
    span: tuple[int, int]
    annotations: tuple[Annotation, ...]
    ok: bool


def split_steps(solution: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the reasoning steps of `solution`.

    A step is a non-blank line; its span excludes surrounding whitespace (and a `\r`). The final
    answer line -- the LAST line that starts with `####` -- is not a step, nor is anything after
    it; without such a line every non-blank line is a step. An earlier `####` line (an answer the
    attempt later revised) stays a step, and so does a line with `####` in mid-line. This is the
    same rule as `cts.teachers.prompts.attempt_steps("math", ...)`.
    """
    lines, pos = [], 0
    for line in solution.split("\n"):
        lines.append((pos, line))
        pos += len(line) + 1
    answer_lines = [i for i, (_, line) in enumerate(lines) if _ANSWER_LINE.match(line)]
    if answer_lines:
        lines = lines[: answer_lines[-1]]
    spans = []
    for start, line in lines:
        if line.strip():
            lead = len(line) - len(line.lstrip())
            spans.append((start + lead, start + len(line.rstrip())))
    return spans


class _ParseError(ValueError):
    pass


_TOKEN = re.compile(r"\s*(?:(?P<num>\d{1,3}(?:,\d{3})+(?!\d|,\d)(?:\.\d+)?|\d+\.?\d*|\.\d+)"
                    r"|(?P<op>\*\*|//|[-+*/^%()x×÷−]))")
_OP_ALIASES = {"x": "*", "×": "*", "÷": "/", "−": "-", "^": "**"}


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise _ParseError(f"unexpected character {expr[pos:].lstrip()[:1]!r}")
        if m.group("num") is not None:
            tokens.append(("num", m.group("num")))
        else:
            op = m.group("op")
            tokens.append(("op", _OP_ALIASES.get(op, op)))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive descent over exact Fractions (grammar in the module docstring)."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) and self.tokens[self.i][0] == "op" else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise _ParseError("unexpected end of expression")
        self.i += 1
        return self.tokens[self.i - 1]

    def parse(self) -> Fraction:
        if not self.tokens:
            raise _ParseError("empty expression")
        value = self.expr()
        if self.i != len(self.tokens):
            raise _ParseError(f"unexpected {self.tokens[self.i][1]!r}")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise _ParseError("division by zero")
            elif op == "/":
                value /= rhs
            elif op == "//":
                value = Fraction(value // rhs)
            else:  # Python's modulo: the result has the sign of the divisor
                value = value - rhs * (value // rhs)
        return value

    def unary(self) -> Fraction:
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take()[1] == "-" else self.unary()
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() == "**":
            self.take()
            exponent = self.unary()
            if exponent.denominator != 1 or abs(exponent) > _MAX_EXPONENT:
                raise _ParseError(f"exponent {exponent} is not an integer of magnitude <= {_MAX_EXPONENT}")
            if base == 0 and exponent < 0:
                raise _ParseError("division by zero")
            return base ** int(exponent)
        return base

    def postfix(self) -> Fraction:
        value = self.atom()
        while self.peek() == "%" and not self._operand_follows(self.i + 1):
            self.take()
            value /= 100
        return value

    def _operand_follows(self, j: int) -> bool:
        """Whether token j starts an operand (then a preceding `%` is the modulo operator).

        A sign does not count: `50%+10` is 0.5 + 10, as a person writing it means.
        """
        return j < len(self.tokens) and (self.tokens[j][0] == "num" or self.tokens[j][1] == "(")

    def atom(self) -> Fraction:
        kind, text = self.take()
        if kind == "num":
            return _decimal_to_fraction(text)
        if text == "(":
            value = self.expr()
            if self.peek() != ")":
                raise _ParseError("missing ')'")
            self.take()
            return value
        raise _ParseError(f"unexpected {text!r}")


def evaluate_expression(expr: str) -> Fraction:
    """Exact value of an arithmetic expression (grammar in the module docstring).

    Raises:
      ValueError: the expression does not parse, divides by zero or has a bad exponent.
    """
    return _Parser(_tokenize(expr)).parse()


_CLAIMED = re.compile(
    r"\s*(?P<sign>[-−]?)\s*\$?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.?\d*|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+))?\s*(?P<pct>%?)\s*"
)


def parse_annotation_number(claimed: str) -> tuple[Fraction, int | None] | None:
    """(exact value, number of decimals shown) of an annotation's right-hand side, or None.

    Accepts a sign, `$`, thousands separators, a fraction `a/b` (decimals None: only an exact
    match is accepted) and a trailing `%` (read as /100 to match the expression side, where a
    trailing `%` also divides by 100).
    """
    m = _CLAIMED.fullmatch(claimed)
    if m is None:
        return None
    num = m.group("num").replace(",", "")
    decimals: int | None = len(num.split(".")[1]) if "." in num else 0
    value = Fraction(num.rstrip(".") or "0")
    if m.group("den") is not None:
        if int(m.group("den")) == 0:
            return None
        value, decimals = value / int(m.group("den")), None
    if m.group("sign"):
        value = -value
    if m.group("pct"):
        value /= 100
    return value, decimals


def _claim_accepted(actual: Fraction, claimed: Fraction, decimals: int | None) -> bool:
    """Exact, or `actual` rounded to `decimals` places (an exact half may round either way)."""
    if actual == claimed:
        return True
    return decimals is not None and abs(actual - claimed) * 2 * 10**decimals <= 1


def _check_annotation(body: str, span: tuple[int, int]) -> Annotation:
    if "=" not in body:
        return Annotation(expression=body, claimed="", actual=None, ok=False, span=span)
    expression, claimed = body.rsplit("=", 1)
    try:
        actual = evaluate_expression(expression)
    except ValueError:
        return Annotation(expression=expression, claimed=claimed, actual=None, ok=False, span=span)
    parsed = parse_annotation_number(claimed)
    ok = parsed is not None and _claim_accepted(actual, *parsed)
    return Annotation(expression=expression, claimed=claimed, actual=format_value(actual), ok=ok, span=span)


def check_steps(solution: str) -> list[StepCheck]:
    """Re-evaluate every `<<expression=claimed>>` annotation of every step of `solution`.

    Returns one StepCheck per step of `split_steps(solution)`. An annotation is wrong when its
    expression does not parse (or divides by zero), it has no `=`, or its claimed value differs
    from the exact value beyond the rounding allowed by the decimals it shows.
    """
    checks = []
    for index, (start, end) in enumerate(split_steps(solution)):
        line = solution[start:end]
        annotations = tuple(
            _check_annotation(m.group("body"), (start + m.start(), start + m.end()))
            for m in _ANNOTATION.finditer(line)
        )
        checks.append(StepCheck(index=index, line=line, span=(start, end), annotations=annotations,
                                ok=all(a.ok for a in annotations)))
    return checks


def first_error_step(solution: str) -> int | None:
    """Index of the first step whose annotations fail `check_steps`, None if all are ok."""
    for check in check_steps(solution):
        if not check.ok:
            return check.index
    return None
