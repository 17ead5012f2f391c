"""Tests for cts.verifiers.math: hand cases for every rule, then the whole GSM8K gold set."""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from cts.answer_format import math_steps
from cts.verifiers.math import (
    VERIFIER_VERSION,
    answers_match,
    check_steps,
    evaluate_expression,
    extract_answer,
    first_error_step,
    format_value,
    is_correct,
    normalize_answer,
)

GSM8K_DIR = Path(__file__).resolve().parents[1] / "data" / "gsm8k"  # the vendored copy

NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)

# Gold annotations that the checker rejects, with the reason the DATA is wrong. Measured on both
# files (8792 solutions, 27,998 annotations): none. `<<560//10=56>>` (Python floor division) and
# `<<3/4=3/4>>` (a fraction as the result) were checker gaps, fixed in the checker.
GOLD_ANNOTATION_EXCEPTIONS: dict[str, str] = {}
GSM8K_ANNOTATION_COUNT = 27998


def test_version_is_a_nonempty_string():
    assert isinstance(VERIFIER_VERSION, str) and VERIFIER_VERSION


# --- normalize_answer: one case (at least) per rule ------------------------------------------


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("72", "72"),
        ("1,234", "1234"),  # thousands separators
        ("1,234,567.50", "1234567.5"),
        ("$18", "18"),  # currency
        ("\\$18", "18"),
        ("18 dollars", "18"),  # words after the number
        ("18 dollars.", "18"),
        ("x = 5", "5"),  # words before
        ("5 cm^2", "5"),
        ("3.0", "3"),  # trailing .0 / .00
        ("3.00", "3"),
        ("2.50", "2.5"),
        (".5", "0.5"),
        ("5.", "5"),
        ("7/2", "7/2"),  # fractions, reduced
        ("14/4", "7/2"),
        ("8/4", "2"),
        ("-6/4", "-3/2"),
        ("\\frac{7}{2}", "7/2"),
        ("\\dfrac{14}{4}", "7/2"),
        ("-3", "-3"),  # negatives
        ("−3", "-3"),  # unicode minus
        ("-$5.50", "-5.5"),
        ("$-5", "-5"),
        ("-0", "0"),
        ("(-3)", "-3"),
        ("25%", "25"),  # percent dropped, not divided
        ("\\boxed{\\text{18}}", "18"),
        ("0.125", "0.125"),
        ("1/3", "1/3"),
        ("3,4", "3"),  # not a thousands pattern: the first number
        ("1,2345", "1"),
    ],
)
def test_normalize_answer(raw, canonical):
    assert normalize_answer(raw) == canonical


@pytest.mark.parametrize("raw", [None, "", "none", "n/a", "$", "1/0", "-"])
def test_normalize_answer_without_a_number(raw):
    assert normalize_answer(raw) is None


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(TypeError):
        normalize_answer(72)


def test_format_value():
    assert format_value(Fraction(7, 2)) == "3.5"
    assert format_value(Fraction(7, 2), as_fraction=True) == "7/2"
    assert format_value(Fraction(-1, 8)) == "-0.125"
    assert format_value(Fraction(1, 3)) == "1/3"  # repeating decimal stays exact
    assert format_value(Fraction(-1, 20)) == "-0.05"
    assert format_value(Fraction(10)) == "10"


# --- extract_answer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, raw",
    [
        (NATALIA, "72"),
        ("so #### 1,080\n", "1,080"),
        ("#### 5\nwait\n#### 6", "6"),  # the last marker wins
        ("#### 7 and \\boxed{8}", "7 and \\boxed{8}"),  # marker before boxed; the rest of its line, raw
        ("The answer is \\boxed{\\frac{1}{2}}. Then 9.", "\\frac{1}{2}"),  # boxed before last number
        ("first \\boxed{3} then \\boxed{{4}}", "{4}"),  # the last boxed, nested braces
        ("She has 3 apples and 4 pears.", "4"),  # last number
        ("I get -$5.50 in total", "-$5.50"),
        ("ages 3-5", "5"),  # a hyphen after a digit is not a sign
        ("10 - 5", "5"),
        ("it is 3/4", "3/4"),
        ("no numbers here", None),
        ("####   \n", None),
    ],
)
def test_extract_answer(text, raw):
    assert extract_answer(text) == raw


# --- answers_match / is_correct --------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("1,234.50", "2469/2", True),
        ("$1234.5", "1234.50", True),
        ("0.5", "1/2", True),
        ("-3", "−3.0", True),
        ("3.33", "10/3", False),  # no tolerance on final answers
        ("0.1", "1/10", True),  # exact, not float
        ("72", "73", False),
        (None, "72", False),
        ("72", None, False),
        ("many", "many", False),
    ],
)
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_is_correct():
    assert is_correct(NATALIA, "72")
    assert is_correct("... so she has \\boxed{72} clips", "72.00")
    assert not is_correct(NATALIA.replace("#### 72", "#### 73"), "72")
    assert not is_correct("I cannot solve this.", "72")
    with pytest.raises(ValueError, match="no number"):
        is_correct(NATALIA, "seventy-two")


# --- arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, value",
    [
        ("48/2", 24),
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("2-3-4", -5),  # left associative
        ("24/2/3", 4),
        ("-3*-2", 6),
        ("1,000*3", 3000),
        ("0.2*50", 10),
        (".5+1.", Fraction(3, 2)),
        ("50%*80", 40),  # percent
        ("7%3", 1),  # modulo (Python calculator)
        ("-7%3", 2),
        ("50%+10", Fraction(21, 2)),  # a sign after % does not start a modulo operand
        ("560//10", 56),  # floor division
        ("-3//2", -2),
        ("2^10", 1024),
        ("2**-1", Fraction(1, 2)),
        ("3 x 4", 12),
        ("6÷4", Fraction(3, 2)),
        ("1/3+1/3+1/3", 1),  # exact, never 0.9999
    ],
)
def test_evaluate_expression(expr, value):
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize("expr", ["", "1+", "(1", "1)", "2*/3", "10/0", "5//0", "2^100", "9^9^9", "a+1", "1e5"])
def test_evaluate_expression_rejects(expr):
    with pytest.raises(ValueError):
        evaluate_expression(expr)


def test_evaluate_expression_matches_python_on_random_expressions():
    """Independent reference: Python's own parser evaluating the same text over Fractions."""
    rng = random.Random(0)

    def gen(depth):
        if depth == 0 or rng.random() < 0.3:
            return str(rng.randint(0, 99)) if rng.random() < 0.8 else f"{rng.randint(0, 99)}.{rng.randint(0, 9)}"
        op = rng.choice(["+", "-", "*", "/"])
        left, right = gen(depth - 1), gen(depth - 1)
        return f"({left}{op}{right})" if rng.random() < 0.5 else f"{left}{op}{right}"

    checked = 0
    for _ in range(500):
        expr = gen(4)
        as_fractions = re.sub(r"\d+(?:\.\d+)?", lambda m: f"Fraction('{m.group(0)}')", expr)
        try:
            expected = eval(as_fractions, {"Fraction": Fraction})  # test-only reference
        except ZeroDivisionError:
            with pytest.raises(ValueError):
                evaluate_expression(expr)
            continue
        assert evaluate_expression(expr) == expected, expr
        checked += 1
    assert checked > 400


# --- steps -----------------------------------------------------------------------------------


def test_split_steps_spans_by_hand():
    # line 1 is chars [0, 47), "\n" at 47, line 2 (70 chars) is [48, 118); the answer line is not a step
    assert math_steps(NATALIA) == [(0, 47), (48, 118)]
    assert NATALIA[48:118].endswith("April and May.")


def test_split_steps_blank_lines_marker_and_no_marker():
    text = "  a = 1  \n\n\t\nb = 2 #### 2\n#### 3\nc\n #### 4\nafter"
    # whitespace excluded from spans; a mid-line marker and an earlier answer line are steps;
    # the last answer line and what follows are not
    assert math_steps(text) == [(2, 7), (13, 25), (26, 32), (33, 34)]
    assert [text[s:e] for s, e in math_steps(text)] == ["a = 1", "b = 2 #### 2", "#### 3", "c"]
    assert math_steps("x\ny\n") == [(0, 1), (2, 3)]
    assert math_steps("#### 5") == []
    assert math_steps("a\r\nb") == [(0, 1), (3, 4)]


def test_check_steps_on_the_first_gsm8k_example():
    checks = check_steps(NATALIA)
    assert [c.index for c in checks] == [0, 1]
    assert all(c.ok for c in checks)
    (a0,), (a1,) = checks[0].annotations, checks[1].annotations
    assert (a0.expression, a0.claimed, a0.actual, a0.ok) == ("48/2", "24", "24", True)
    assert NATALIA[a0.span[0]:a0.span[1]] == "<<48/2=24>>"
    assert NATALIA[a1.span[0]:a1.span[1]] == "<<48+24=72>>"
    assert checks[1].line == NATALIA[checks[1].span[0]:checks[1].span[1]]
    assert first_error_step(NATALIA) is None


@pytest.mark.parametrize(
    "annotation, ok",
    [
        ("<<10/3=3.33>>", True),  # rounded to the decimals shown
        ("<<10/3=3.3>>", True),
        ("<<10/3=3.34>>", False),
        ("<<2/3=0.67>>", True),
        ("<<2/3=0.66>>", False),  # truncation is not rounding
        ("<<7/2=3>>", True),  # an exact half may round either way
        ("<<7/2=4>>", True),
        ("<<7/2=5>>", False),
        ("<<3/4=3/4>>", True),  # fraction result (occurs in GSM8K gold)
        ("<<3/4=6/8>>", True),
        ("<<2/3=0.67/1>>", False),  # a fraction claim must be exact
        ("<<1000*2=2,000>>", True),
        ("<<50%*80=40>>", True),
        ("<<0.4*100=40%>>", False),  # 40% reads as 0.4
        ("<<40/100=40%>>", True),
        ("<<2-5=-3>>", True),
        ("<<48/2>>", False),  # no claimed result
        ("<<48/=24>>", False),  # does not parse
        ("<<1/0=0>>", False),
        ("<<2*3=six>>", False),
    ],
)
def test_annotation_verdicts(annotation, ok):
    (check,) = check_steps(f"We get {annotation} here.\n#### 1")
    (a,) = check.annotations
    assert a.ok is ok and check.ok is ok
    assert (a.actual is None) == (annotation in ("<<48/2>>", "<<48/=24>>", "<<1/0=0>>"))


def test_step_without_annotation_is_ok_and_first_error_is_the_first_bad_step():
    text = "Intro line.\nSo 2+2 = <<2+2=5>>5.\nThen 3*3=<<3*3=10>>10\nAnd <<1+1=2>>2\n#### 2"
    checks = check_steps(text)
    assert [c.ok for c in checks] == [True, False, False, True]
    assert checks[0].annotations == ()
    assert checks[1].annotations[0].actual == "4"
    assert first_error_step(text) == 1


# --- the whole GSM8K gold set ----------------------------------------------------------------


def _gold_rows():
    rows = []
    for split in ("train", "test"):
        with open(GSM8K_DIR / f"{split}.jsonl", encoding="utf-8") as f:
            rows += [(f"{split}-{i:05d}", json.loads(line)) for i, line in enumerate(f) if line.strip()]
    return rows


@pytest.fixture(scope="module")
def gold_rows():
    rows = _gold_rows()
    assert len(rows) == 8792
    return rows


def test_every_gold_answer_extracts_and_matches_itself(gold_rows):
    for rid, row in gold_rows:
        final = row["answer"].rsplit("####", 1)[1].strip()
        assert normalize_answer(final) is not None, rid
        assert is_correct(row["answer"], final), rid
        assert extract_answer(row["answer"]) == final, rid


@pytest.mark.slow  # 1.5 s alone, > 5 s on a loaded 2-core machine
def test_every_gold_annotation_is_accepted(gold_rows):
    n_annotations, rejected = 0, {}
    for rid, row in gold_rows:
        for check in check_steps(row["answer"]):
            n_annotations += len(check.annotations)
            for a in check.annotations:
                if not a.ok:
                    rejected[rid] = f"<<{a.expression}={a.claimed}>> evaluates to {a.actual}"
        # the final-answer line is never a step
        assert all("####" not in c.line for c in check_steps(row["answer"])), rid
    assert n_annotations == GSM8K_ANNOTATION_COUNT
    assert set(rejected) == set(GOLD_ANNOTATION_EXCEPTIONS), rejected


def _bump(claimed: str) -> str:
    """A claimed result that is wrong beyond any rounding: the claimed value plus 1."""
    value = Fraction(claimed.replace(",", ""))
    return format_value(value + 1)


@pytest.mark.slow  # 1.5 s alone, > 5 s on a loaded 2-core machine
def test_corrupting_one_annotation_flags_exactly_that_step(gold_rows):
    rng = random.Random(1)
    corrupted = 0
    for rid, row in gold_rows:
        text = row["answer"]
        matches = list(re.finditer(r"<<([^<>=]*)=([^<>]*)>>", text))
        if not matches:
            continue
        m = rng.choice(matches)
        bad = text[: m.start(2)] + _bump(m.group(2)) + text[m.end(2):]
        steps = math_steps(bad)
        target = next(i for i, (s, e) in enumerate(steps) if s <= m.start() < e)
        flags = [c.ok for c in check_steps(bad)]
        assert flags == [i != target for i in range(len(steps))], rid
        assert first_error_step(bad) == target, rid
        corrupted += 1
    assert corrupted == 8679  # the solutions that carry at least one annotation


def test_changing_the_final_answer_makes_it_incorrect(gold_rows):
    for rid, row in gold_rows:
        head, final = row["answer"].rsplit("####", 1)
        gold = final.strip()
        wrong = head + "#### " + format_value(Fraction(gold.replace(",", "")) + 1)
        assert not is_correct(wrong, gold), rid
        assert first_error_step(wrong) is None  # the arithmetic is still right
