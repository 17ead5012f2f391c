"""The B3 step check on real GSM8K text (issue 13): gold solutions earn full credit, injected errors lose it.

Default suite: a deterministic sample (every 7th train solution: 1068 of 7473; 300 injected errors
of each kind). `heavy`: all 7473 gold solutions and 1000 injected errors of each kind.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest

from cts.tasks.loaders import load_task
from cts.tasks.schema import Problem
from cts.verifiers import math as mv
from cts.verifiers.inject import inject_error
from cts.verifiers.outcome import step_horizon, verify

DATA = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture(scope="module")
def gsm8k_train():
    if not DATA.exists():
        pytest.skip(f"{DATA} not present")
    return load_task("gsm8k", split="train")


def _gold_scores(problems):
    return [verify(p, p.reference).step_score for p in problems]


def _check_gold(problems):
    scores = _gold_scores(problems)
    full = sum(s >= 1.0 for s in scores) / len(scores)
    mean = sum(scores) / len(scores)
    print(f"GSM8K gold step score on {len(scores)}: full credit {full:.2%}, mean {mean:.4f}, "
          f"zero {sum(s == 0 for s in scores) / len(scores):.2%}")
    assert full >= 0.98 and mean >= 0.98, (full, mean)


def test_gold_solutions_get_full_step_credit_sample(gsm8k_train):
    _check_gold(gsm8k_train[::7])


@pytest.mark.heavy
def test_gold_solutions_get_full_step_credit_all(gsm8k_train):
    _check_gold(gsm8k_train)


def _check_injected(problems, kind: str, n: int, min_rate: float):
    rng = random.Random(13)
    pool = [p for p in problems if all(c.ok for c in mv.step_credits(p.prompt, p.reference))]
    rng.shuffle(pool)
    tried = lost = 0
    misses = []
    for p in pool:
        if tried >= n:
            break
        inj = inject_error(p.prompt, p.reference, kind, random.Random(p.id))
        if inj is None:
            continue
        tried += 1
        credits = mv.step_credits(p.prompt, inj.text)
        before = sum(c.computational for c in credits if c.index < inj.step)
        h = max(step_horizon(p), 1)
        score = verify(p, inj.text).step_score
        # credit from the injected step on is lost: no more than the steps before it earn
        if score <= min(before, h) / h + 1e-12 and not credits[-1].ok and credits[-1].index == inj.step:
            lost += 1
        else:
            misses.append((p.id, inj.note))
    print(f"{kind}: {lost}/{tried} injected errors lose credit from their step on; misses {misses[:5]}")
    assert tried == n and lost / tried >= min_rate, (lost, tried, misses[:10])


@pytest.mark.parametrize("kind", ["arithmetic", "operand"])
def test_injected_errors_lose_credit_from_their_step_on(gsm8k_train, kind):
    _check_injected(gsm8k_train, kind, 300, 0.99)


@pytest.mark.heavy
@pytest.mark.parametrize("kind", ["arithmetic", "operand"])
def test_injected_errors_lose_credit_from_their_step_on_1000(gsm8k_train, kind):
    _check_injected(gsm8k_train, kind, 1000, 0.99)


# ----------------------------------------------------------------------------- the forms gold text uses

def _credit(prompt: str, solution: str) -> list[bool]:
    return [c.ok for c in mv.step_credits(prompt, solution)]


def test_numbers_in_words_fractions_multiples_percent_currency():
    assert {Fraction(3), Fraction(1, 2), Fraction(2), Fraction(12), Fraction(1, 4), Fraction(4)} \
        <= mv.text_numbers("three apples, half of them, twice, a dozen, a quarter")
    assert {Fraction(1, 2), Fraction(1, 100), Fraction(1200), Fraction(15), Fraction(15, 100)} \
        <= mv.text_numbers("costs $.5 or .01 each, $1,200 total, 15% off")
    assert Fraction(22) in mv.text_numbers("twenty-two people")
    assert Fraction(5, 2) in mv.text_numbers("2 and a half dozen")
    assert Fraction(5) in mv.text_numbers("from Monday to Friday")
    prompt = "Tom buys three dozen eggs at $.5 each and sells half of them at a 20% markup."
    sol = ("He buys 3*12 = <<3*12=36>>36 eggs.\nThey cost 36*.5 = $<<36*.5=18>>18.\n"
           "He sells 36/2 = <<36/2=18>>18 eggs at .5*1.2 = $<<.5*1.2=.6>>.6 each.\n#### 10.8")
    assert _credit(prompt, sol) == [True, True, True]


def test_leading_dot_decimal_is_not_read_as_an_integer():
    assert Fraction(5) not in mv.text_numbers("a .5 chance")
    assert _credit("He has 5 apples", "5*.3=<<5*.3=1.5>>1.5\n#### 1.5") == [False]  # 0.3 is nowhere


def test_python_float_printouts_match_with_relative_tolerance():
    assert mv.claim_matches(Fraction("29.4"), "29.400000000000002")
    assert mv.claim_matches(Fraction(10, 3), "3.33") and not mv.claim_matches(Fraction(10, 3), "3.4")
    assert _credit("It costs 4.2 a day for 7 days", "4.2*7=<<4.2*7=29.400000000000002>>29.400000000000002\n#### 29.4") == [True]


def test_unannotated_steps_are_checked():
    prompt = "Ann has 12 apples and gives 5 away."
    assert _credit(prompt, "She has 12 - 5 = 7 apples left.\n#### 7") == [True]
    assert _credit(prompt, "She has 12 - 5 = 8 apples left.\n#### 8") == [False]
    # a result stated without any computation must be one operation away from known quantities
    assert _credit(prompt, "She keeps 7 of them.\n#### 7") == [True]
    assert _credit(prompt, "She keeps 9000 of them.\n#### 9000") == [False]


def test_an_operand_written_only_in_its_own_step_does_not_vouch_for_itself():
    prompt = "Ann has 12 apples and gives 5 away."
    assert _credit(prompt, "She has 13 - 5 = <<13-5=8>>8 apples left.\n#### 8") == [False]


def test_prose_steps_neither_earn_nor_break_and_horizon_counts_computations():
    p = Problem(id="g1", task="gsm8k", kind="math", prompt="Tom has 3 bags of 4 apples. He eats 2.",
                reference="Let us count.\n3*4=<<3*4=12>>12 apples\n12-2=<<12-2=10>>10\n#### 10",
                answer="10", horizon=3)
    assert step_horizon(p) == 2
    assert verify(p, p.reference).step_score == 1.0
    # prose only earns nothing (no reward for writing lines)
    assert verify(p, "I think.\nYes.\nSo.\n#### 10").step_score == 0.0
    assert verify(p, "3*4=<<3*4=12>>12 apples\nThen.\n12-2=<<12-2=11>>11\n#### 11").step_score == 0.5
