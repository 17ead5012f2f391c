"""cts.stats.kappa equals sklearn's cohen_kappa_score where κ is defined, None where not."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from cts.stats.kappa import cohen_kappa, pairwise_kappa


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_sklearn(weights, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 60)
    b = np.where(rng.uniform(size=60) < 0.5, a, rng.integers(0, 5, 60))
    got = cohen_kappa(a.tolist(), b.tolist(), weights=weights)
    assert got.kappa == pytest.approx(cohen_kappa_score(a, b, weights=weights), abs=1e-12)
    assert got.reason is None and got.n == 60


def test_string_labels_and_hand_value():
    a = ["ok", "ok", "bad", "bad", "ok"]
    b = ["ok", "bad", "bad", "bad", "ok"]
    # p_o = 4/5; p_e = (3/5)(2/5) + (2/5)(3/5) = 12/25; κ = (0.8 − 0.48)/(0.52)
    res = cohen_kappa(a, b)
    assert res.kappa == pytest.approx((0.8 - 0.48) / 0.52)
    assert res.kappa == pytest.approx(cohen_kappa_score(a, b))
    assert res.observed_agreement == pytest.approx(0.8) and res.expected_agreement == pytest.approx(0.48)


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn warns before returning NaN
def test_undefined_is_none_with_reason():
    res = cohen_kappa(["good"] * 6, ["good"] * 6)
    assert res.kappa is None and "'good'" in res.reason and res.n == 6
    assert np.isnan(cohen_kappa_score(["good"] * 6, ["good"] * 6))  # what sklearn does instead
    empty = cohen_kappa([], [])
    assert empty.kappa is None and empty.reason.startswith("no items")


def test_errors():
    with pytest.raises(ValueError, match="length"):
        cohen_kappa([1, 2], [1])
    with pytest.raises(ValueError, match="not in the label set"):
        cohen_kappa(["a", "z"], ["a", "a"], labels=["a", "b"])
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa([1], [1], weights="cubic")


def test_pairwise_over_common_items():
    ratings = {"teacherA": {"i1": "y", "i2": "n", "i3": "y", "i4": "n"},
               "teacherB": {"i1": "y", "i2": "y", "i3": "y"},
               "human": {"i9": "y"}}
    out = pairwise_kappa(ratings)
    assert [(o["rater_a"], o["rater_b"]) for o in out] == [("human", "teacherA"), ("human", "teacherB"),
                                                          ("teacherA", "teacherB")]
    assert out[0]["kappa"] is None and out[0]["n"] == 0
    ab = out[2]
    assert ab["n"] == 3
    assert ab["kappa"] == pytest.approx(cohen_kappa_score(["y", "n", "y"], ["y", "y", "y"]))
