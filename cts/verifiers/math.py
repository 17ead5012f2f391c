"""Math verifier: final-answer extraction and matching, and GSM8K calculator-annotation checks.

Two jobs, both pure functions of strings:

1. Final answers. `extract_answer` finds the answer a solution commits to (`#### N`, else the
   last `\\boxed{...}`, else the last number); `normalize_answer` maps it to a canonical string;
   `answers_match` compares two answers as exact rationals (`fractions.Fraction`), so
   `"1,234.50"`, `"$1234.5"` and `"2469/2"` are all the same answer and no float rounding
   ever decides a match.
2. Steps. A GSM8K solution is a list of lines, each optionally carrying calculator annotations
   `<<48/2=24>>`, and ends with `#### N`. Its steps are `cts.answer_format.math_steps` (the
   final-answer line is not a step); `check_steps` re-evaluates every annotation with a
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

from cts.answer_format import math_steps

__all__ = [
    "VERIFIER_VERSION",
    "Annotation",
    "StepCheck",
    "answers_match",
    "StepCredit",
    "UNIT_CONSTANTS",
    "is_known",
    "check_steps",
    "claim_matches",
    "computational_steps",
    "derived_prefix",
    "evaluate_expression",
    "extract_answer",
    "first_error_step",
    "format_value",
    "is_correct",
    "normalize_answer",
    "parse_annotation_number",
    "step_credits",
    "text_numbers",
]

# Bump whenever any function here could return a different result for the same input:
# it goes into the fairness fingerprints of every run that used this verifier.
VERIFIER_VERSION = "verifiers-3"  # 2: derived-operand step check, code verdicts in the parent; 3: fenced code

# A number as written in prose: thousands-grouped or plain digits, optional decimals, or `.5`.
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_IN_TEXT = re.compile(
    # a sign counts only when it cannot be a binary minus: not after a word, `)` or `.` and
    # attached to the number (`3-5` and `10 - 5` end in the number 5, `-5` is minus five)
    r"(?:(?<![\w).])(?P<sign>[-−+]))?(?:\$\s*(?P<sign2>[-−])?)?"
    rf"(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)
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

    Returns one StepCheck per step of `math_steps(solution)`. An annotation is wrong when its
    expression does not parse (or divides by zero), it has no `=`, or its claimed value differs
    from the exact value beyond the rounding allowed by the decimals it shows.
    """
    checks = []
    for index, (start, end) in enumerate(math_steps(solution)):
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


# ------------------------------------------------------------------------------------------
# Derived-operand step check (the B3 step score)
# ------------------------------------------------------------------------------------------
#
# A step earns credit when every computation in it is right AND uses only known quantities:
# numbers of the prompt (digits with `$`, `%`, thousands separators, leading-dot decimals and
# fractions, and number words such as "three", "half", "twice", "a dozen"), numbers stated in
# earlier steps or earlier in the same step, and a short list of unit constants. Computations are
# calculator annotations `<<a*b=c>>` and, outside them, written equations `a * b = c`. A
# step with no computation but a new number ("Half of them, 24, are red") earns credit when that
# number is one operation (+ - * /) away from two known quantities (or a known one and a unit
# constant); a step with no computation and no new number is prose: it neither earns nor breaks.
# A claimed result matches when it is exact, rounded to the decimals it shows, or within a
# relative 1e-9 (Python-float print-outs such as `<<4.2*7=29.400000000000002>>`).

_WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000,
    "dozen": 12, "dozens": 12, "score": 20, "pair": 2, "pairs": 2, "couple": 2,
    "half": Fraction(1, 2), "halves": Fraction(1, 2), "twice": 2, "double": 2, "doubled": 2,
    "doubles": 2, "triple": 3, "tripled": 3, "triples": 3, "thrice": 3, "quadruple": 4,
    "quadrupled": 4, "third": Fraction(1, 3), "thirds": Fraction(1, 3),
    "quarter": Fraction(1, 4), "quarters": Fraction(1, 4), "fourth": Fraction(1, 4),
    "fourths": Fraction(1, 4), "fifth": Fraction(1, 5), "fifths": Fraction(1, 5),
    "sixth": Fraction(1, 6), "sixths": Fraction(1, 6), "seventh": Fraction(1, 7),
    "eighth": Fraction(1, 8), "eighths": Fraction(1, 8), "ninth": Fraction(1, 9),
    "tenth": Fraction(1, 10), "tenths": Fraction(1, 10), "percent": Fraction(1, 100),
    "once": 1, "single": 1, "both": 2, "hour": 60, "hours": 60, "minute": 60, "minutes": 60,
    "week": 7, "weeks": 7, "day": 24, "days": 24, "year": 12, "years": 12, "month": 30,
    "months": 30, "cents": 100, "cent": 100, "feet": 12, "foot": 12, "yard": 3, "yards": 3,
    "dime": 10, "dimes": 10, "nickel": 5, "nickels": 5, "quarter-hour": 15,
    "weekday": 5, "weekdays": 5, "weekend": 2, "weekends": 2, "gallon": 128, "gallons": 4,
    "quart": 32, "quarts": 32, "pound": 16, "pounds": 16, "inch": 12, "inches": 12,
}
# Quantities a solution may use without the prompt stating them: the unit conversions GSM8K's
# solutions use (time, money, length, weight, volume), halves and percents, and the small counts
# gold solutions derive in their head (`4 friends + him = 5`, `Monday to Saturday = 6`, 8 pints).
UNIT_CONSTANTS = frozenset(Fraction(v) for v in (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 24, 30, 31, 52, 60, 100, 365, 1000, 16, 5280, 36)) | {
    Fraction(1, 100), Fraction(1, 2)}
_TEXT_NUMBER = re.compile(
    r"(?<![\w.])(?P<num>\d{1,3}(?:,\d{3})+(?!\d|,\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.]))?(?P<pct>\s*%)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")
# A run of arithmetic text containing `=`: `48/2 = 24`, `2 * 225 + 2 * 125 = 450 + 250 = 700`.
_INLINE_CHAIN = re.compile(r"[-−(]?\s*\$?\s*(?:\d|\.\d)[\d.,\s$%()xX×*/÷+\-−^=]*(?:\d|\)|%)")
_WRITTEN_COPY = re.compile(r"[\d\s.,$%()xX×*/÷+\-−^]*=?[\s$]*$")
_HAS_OP = re.compile(r"[\d).%]\s*(?:\*\*|[-−+*/xX×÷^])\s*[-−(\d.$]")


_AND_A_HALF = re.compile(r"\b(\d+|[a-z]+)\s+and\s+a\s+half\b", re.IGNORECASE)
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY_RANGE = re.compile(r"\b(mon|tue|wed|thu|fri|sat|sun)[a-z]*\s*(?:to|through|thru|-|–|until)\s*"
                        r"(mon|tue|wed|thu|fri|sat|sun)[a-z]*", re.IGNORECASE)


def text_numbers(text: str) -> set[Fraction]:
    """The quantities a text states: digits (with `$ , % .5 a/b`) and number words.

    A percentage gives both n and n/100; a fraction a/b gives a, b and a/b; a fraction word gives
    both the fraction and its denominator ("half": 1/2 and 2), a multiple word its factor.
    """
    out: set[Fraction] = set()
    for m in _TEXT_NUMBER.finditer(text):
        value = Fraction(m.group("num").replace(",", ""))
        out.add(value)
        if m.group("den") is not None and int(m.group("den")) != 0:
            out.add(Fraction(int(m.group("den"))))
            out.add(value / int(m.group("den")))
        if m.group("pct"):
            out.add(value / 100)
    for m in _DAY_RANGE.finditer(text):  # "Monday to Friday": 5 days
        a, b = _DAYS.index(m.group(1).lower()[:3]), _DAYS.index(m.group(2).lower()[:3])
        out.add(Fraction((b - a) % 7 + 1))
    for m in _AND_A_HALF.finditer(text):  # "2 and a half dozen": 2.5
        n = m.group(1).lower()
        base = Fraction(n) if n.isdigit() else Fraction(_WORD_NUMBERS.get(n, 0))
        out.add(base + Fraction(1, 2))
    for w in _WORD.findall(text.lower()):
        parts = w.split("-")
        if len(parts) == 2 and all(p in _WORD_NUMBERS for p in parts):  # twenty-two
            a, b = Fraction(_WORD_NUMBERS[parts[0]]), Fraction(_WORD_NUMBERS[parts[1]])
            if a >= 20 and a % 10 == 0 and 0 < b < 10:
                out.add(a + b)
        for part in parts:
            v = _WORD_NUMBERS.get(part)
            if v is not None:
                v = Fraction(v)
                out.add(v)
                if v.numerator == 1 and v.denominator > 1:
                    out.add(Fraction(v.denominator))
    return out


def _operands(expr: str) -> list[Fraction]:
    """The literal numbers of an expression (signs are operators, `%` a postfix)."""
    try:
        return [_decimal_to_fraction(t) for kind, t in _tokenize(expr) if kind == "num"]
    except _ParseError:
        return []


def claim_matches(actual: Fraction, claimed: str) -> bool:
    """`claimed` equals `actual`: exactly, rounded to its shown decimals, or within rel. 1e-9."""
    parsed = parse_annotation_number(claimed.strip())
    if parsed is None:
        return False
    value, decimals = parsed
    if _claim_accepted(actual, value, decimals):
        return True
    return abs(actual - value) <= Fraction(1, 10**9) * max(abs(actual), 1)


@dataclass(frozen=True)
class StepCredit:
    """The derived-operand check of one step.

    Attributes:
      index, span: as in StepCheck.
      computational: the step computes something (an annotation, a written equation or a new
        number derived in prose); prose without new numbers is not computational.
      ok: every computation is right and uses known quantities (True for prose).
      reason: why not ok ("" when ok).
      bad_operand: the first operand that is not a known quantity, if that is the failure.
    """

    index: int
    span: tuple[int, int]
    computational: bool
    ok: bool
    reason: str = ""
    bad_operand: Fraction | None = None


def _pair_derived(target: Fraction, known: set[Fraction]) -> bool:
    """target is a rate derived in the head from a stated fraction p < 1: 1 + p (`20% more`:
    1.2), 1 - p (`20% off`: 0.8), or n·p (`three quarters`: 0.75), n a stated quantity."""
    fractions = [p for p in known if 0 < p < 1]
    for p in fractions:
        if target in (1 + p, 1 - p, 100 + 100 * p, 100 - 100 * p):  # 1.2 or 120 for `20% more`
            return True
        if target < 1 and (target / p) in known and (target / p).denominator == 1:
            return True
    return False


def _one_op_away(target: Fraction, known: set[Fraction]) -> bool:
    """target = a op b for a, b in known ∪ UNIT_CONSTANTS (linear: look the partner up)."""
    pool = known | UNIT_CONSTANTS
    for a in pool:
        if target - a in pool or a - target in pool:
            return True
        if a != 0 and target / a in pool:
            return True
        if target != 0 and a / target in pool and a / target != 0:
            return True
    return False


def _computations(line: str) -> list[tuple[str, list[str], tuple[int, int]]]:
    """(expression, [claimed, ...], span) of each annotation, then of each written equation.

    A written chain `a = b = c` gives (a, [b, c]): every later part must equal the first. Written
    text that does not parse as arithmetic (`16 1/2 + 24 1/2`, `10, 75 - 10`) is not checked.
    """
    comps = []
    for m in _ANNOTATION.finditer(line):
        body = m.group("body")
        if "=" in body:
            expression, claimed = body.rsplit("=", 1)
        else:
            expression, claimed = body, body  # `<<40000>>`: a stated value
        comps.append((expression, [claimed], m.span()))
    if comps:  # annotated: the annotations are the step's computations (the prose repeats them)
        return comps
    for m in _INLINE_CHAIN.finditer(line):
        text = m.group(0)
        before = line[:m.start() + len(text) - len(text.lstrip())]
        if before and (before[-1].isalnum() or before.rstrip()[-1:] in tuple("*/+-−×÷^")
                       or (text.lstrip()[0] in "-−" and before.strip())):
            continue  # `X*11/4 + 10 = 340`, `120 books - 20 = 100`: not a self-contained equation
        parts = [p.replace("$", "").strip() for p in m.group(0).split("=")]
        if len(parts) < 2 or not _HAS_OP.search(parts[0]) or not all(parts):
            continue
        if re.search(r"[xX](?!\s*[\d.($])", m.group(0)):
            continue  # `3x-3=63`: an x that is a variable, not a times sign
        try:
            evaluate_expression(parts[0])
        except ValueError:
            continue
        if all(parse_annotation_number(p) is not None or _evaluates(p) for p in parts[1:]):
            comps.append((parts[0], parts[1:], m.span()))
    comps.sort(key=lambda c: c[2][0])
    return comps


def _evaluates(expr: str) -> bool:
    try:
        evaluate_expression(expr)
        return True
    except ValueError:
        return False


def _part_matches(actual: Fraction, part: str) -> bool:
    if parse_annotation_number(part.strip()) is not None:
        return claim_matches(actual, part)
    try:
        return evaluate_expression(part) == actual
    except ValueError:
        return False


_CONVERSIONS = (7, 12, 60, 100)  # days/week, dozen/months/inches, minutes/hours, percent/cents


def is_known(v: Fraction, known: set[Fraction]) -> bool:
    """v is a stated quantity, a unit constant, or a unit conversion of a stated quantity."""
    if v in known or v in UNIT_CONSTANTS:
        return True
    return any(v * c in known or v / c in known for c in _CONVERSIONS)


_is_known = is_known


def step_credits(prompt: str, solution: str, *, stop_at_failure: bool = True) -> list[StepCredit]:
    """The derived-operand check of every step of `solution` (see the section comment).

    Stops after the first failing step unless `stop_at_failure=False` (then later steps are
    checked too, with the failing step's numbers taken as known).
    """
    known = text_numbers(prompt)
    out = []
    for index, (start, end) in enumerate(math_steps(solution)):
        line = solution[start:end]
        comps = _computations(line)
        failure: tuple[str, Fraction | None] | None = None
        cursor = 0
        for expression, claims, (s, e) in comps:
            # The step's own prose counts only BEFORE its written copy of this computation
            # (`Two weeks are 14 days, so 280 / 14 = <<280/14=20>>`): the copy repeats the
            # operands, so an operand that appears nowhere else would vouch for itself.
            known |= text_numbers(_before_written_copy(_ANNOTATION.sub(" ", line[cursor:s]),
                                                       _operands(expression)))
            cursor = max(cursor, e)
            cursor = max(cursor, e)
            try:
                actual = evaluate_expression(expression)
            except ValueError as exc:
                failure = (f"`{expression.strip()}` does not evaluate ({exc})", None)
                break
            wrong = next((c for c in claims if not _part_matches(actual, c)), None)
            if wrong is not None:
                failure = (f"`{expression.strip()}` is {format_value(actual)}, not {wrong.strip()}", None)
                break
            operands = _operands(expression)
            if len(operands) == 1 and not _HAS_OP.search(expression):  # a stated value
                if not _is_known(actual, known) and not _one_op_away(actual, known):
                    failure = (f"states {format_value(actual)} without deriving it", actual)
                    break
            else:
                unknown = [v for v in operands if not _is_known(v, known) and not _pair_derived(v, known)]
                if unknown:
                    failure = (f"`{expression.strip()}` uses {format_value(unknown[0])}, which is "
                               "neither in the problem nor derived earlier", unknown[0])
                    break
            known.add(actual)
            for c in claims:
                parsed = parse_annotation_number(c.strip())
                if parsed is not None:
                    known.add(parsed[0])
        if failure is not None:
            out.append(StepCredit(index, (start, end), True, False, failure[0], failure[1]))
            if stop_at_failure:
                break
            known |= text_numbers(_ANNOTATION.sub(" ", line)) | {
                v for expression, _, _ in comps for v in _safe_value(expression)}
            continue
        rest = text_numbers(_ANNOTATION.sub(" ", line[cursor:]))
        computational = bool(comps)
        if not comps:
            new = sorted(v for v in rest if not _is_known(v, known))
            if new:
                computational = True
                underived = [v for v in new if not _one_op_away(v, known)]
                if underived:
                    out.append(StepCredit(index, (start, end), True, False,
                                          f"states {format_value(underived[0])} without deriving it",
                                          underived[0]))
                    if stop_at_failure:
                        break
                    known |= rest
                    continue
        known |= rest
        out.append(StepCredit(index, (start, end), computational, True))
    return out


def _before_written_copy(prose: str, operands: list[Fraction]) -> str:
    """`prose` up to where its trailing numbers spell the expression's operands, in order
    (other numbers may sit between them); "" when they do not (nothing of the prose counts)."""
    tokens = [(Fraction(m.group("num").replace(",", "")), m.start()) for m in _TEXT_NUMBER.finditer(prose)]
    j = len(operands) - 1
    start = None
    for value, pos in reversed(tokens):
        if j < 0:
            break
        if value == operands[j] or value / 100 == operands[j]:
            j -= 1
            start = pos
    if j >= 0 or start is None:
        return ""
    return prose[:start]


def _safe_value(expression: str) -> set[Fraction]:
    try:
        return {evaluate_expression(expression)}
    except ValueError:
        return set()


def computational_steps(prompt: str, solution: str) -> int:
    """How many steps of `solution` compute something (the step score's denominator for a reference)."""
    return sum(c.computational for c in step_credits(prompt, solution, stop_at_failure=False))


def derived_prefix(prompt: str, solution: str) -> int:
    """Computational steps of `solution` that pass `step_credits` before its first failing step."""
    k = 0
    for c in step_credits(prompt, solution):
        if not c.ok:
            break
        k += c.computational
    return k
