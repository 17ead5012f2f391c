"""cts.stats.metrics and cts.stats.data: hand-computed values and independent references."""

import json
from math import comb

import numpy as np
import pytest
from scipy import stats as sps

from cts.io import DataError
from cts.stats.data import read_eval_files, read_metrics_file, task_matrices
from cts.stats.metrics import (accuracy, delta_critique, horizon_curve, mean_pass_at_k, pass_at_k,
                               taxonomy_breakdown)


def row(**kw):
    r = {"problem_id": "p0", "task": "t", "method": "B3", "seed": 0, "horizon": 2, "correct": False,
         "n_samples": 4, "n_correct": 1, "base_correct": False, "critiqued": True,
         "base_first_error_step": 1, "first_error_step": 2, "taxonomy": "arith"}
    r.update(kw)
    return r


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 − C(3,3)/C(5,3) = 1 − 1/10
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n − c < k
    assert pass_at_k(3, 3, 3) == 1.0


def test_pass_at_k_matches_binomial_form_and_is_stable():
    for n, c, k in [(20, 3, 1), (20, 3, 10), (50, 7, 20), (100, 1, 50)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)
    # C(2000, 1000) overflows float64; the product form does not
    p = pass_at_k(2000, 1, 1000)
    assert p == pytest.approx(0.5) and np.isfinite(p)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 1, 1)


def test_mean_pass_at_k_and_accuracy():
    rows = [row(n_samples=4, n_correct=1), row(n_samples=4, n_correct=4)]
    assert mean_pass_at_k(rows, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert mean_pass_at_k(rows, 5) is None
    assert accuracy(np.array([[1, 0, 1, 1], [0, 0, 1, 1]])) == pytest.approx(0.625)


def test_horizon_curve_matches_linregress():
    rng = np.random.default_rng(0)
    h = rng.integers(1, 6, 30)
    x = (rng.uniform(size=(3, 30)) < 1 / (1 + np.exp(h - 3))).astype(float)
    hc = horizon_curve(x, h)
    ref = sps.linregress(h, x.mean(0))
    assert hc.slope == pytest.approx(ref.slope)
    half = sps.t.ppf(0.975, 28) * ref.stderr
    assert hc.slope_low == pytest.approx(ref.slope - half)
    assert hc.slope_high == pytest.approx(ref.slope + half)
    for k, hv in enumerate(hc.horizons):
        assert hc.accuracy[k] == pytest.approx(x.mean(0)[h == hv].mean())
        assert hc.n_problems[k] == (h == hv).sum()
    assert np.all(hc.low >= 0) and np.all(hc.high <= 1)


def test_horizon_curve_undefined_slope():
    hc = horizon_curve(np.ones((2, 4)), np.array([3, 3, 3, 3]))
    assert hc.slope is None and "1 distinct" in hc.note
    json.dumps(hc.to_dict())  # NaN-free, JSON-able


def test_delta_critique_hand():
    rows = [
        row(problem_id="a", correct=True, first_error_step=None),          # solved
        row(problem_id="b", correct=False, base_first_error_step=1, first_error_step=3),  # +2
        row(problem_id="c", correct=False, base_first_error_step=2, first_error_step=1),  # −1
        row(problem_id="d", correct=False, base_first_error_step=None, first_error_step=4),  # no shift
        row(problem_id="e", critiqued=False, correct=True),                 # not critiqued
        row(problem_id="f", base_correct=True, correct=True),               # base solved it
    ]
    d = delta_critique(rows)
    assert d == {"n": 4, "solved_rate": 0.25, "n_shift": 2, "mean_first_error_shift": 0.5}
    assert delta_critique([row(base_correct=True)]) == {"n": 0, "solved_rate": None, "n_shift": 0,
                                                         "mean_first_error_shift": None}


def test_taxonomy_breakdown_hand():
    rows = [row(taxonomy="b", correct=True), row(taxonomy="b"), row(taxonomy="a", correct=True),
            row(taxonomy=None), row(taxonomy="c", base_correct=True)]
    assert taxonomy_breakdown(rows) == {"a": {"n": 1, "solved_rate": 1.0}, "b": {"n": 2, "solved_rate": 0.5}}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_read_eval_files_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"bad\.jsonl:2: key 'correct' must be bool"):
        read_eval_files([write(tmp_path / "bad.jsonl", [row(), row(problem_id="p1", correct=1)])])
    with pytest.raises(DataError, match=r"seed.*must be int"):
        read_eval_files([write(tmp_path / "b2.jsonl", [row(seed=True)])])
    with pytest.raises(DataError, match=r"n_correct <= n_samples"):
        read_eval_files([write(tmp_path / "b3.jsonl", [row(n_correct=9)])])
    with pytest.raises(DataError, match=r"b5\.jsonl:1: duplicate .* first seen at .*b4\.jsonl:1"):
        read_eval_files([write(tmp_path / "b4.jsonl", [row()]), write(tmp_path / "b5.jsonl", [row()])])
    r = row()
    del r["taxonomy"]
    with pytest.raises(DataError, match=r"b6\.jsonl:1: missing key"):
        read_eval_files([write(tmp_path / "b6.jsonl", [r])])


def test_task_matrices_align_and_check(tmp_path):
    rows = [row(method=m, seed=s, problem_id=p, correct=(m == "B5" and p == "x"))
            for m in ("B3", "B5") for s in (0, 1) for p in ("y", "x")]
    rows.append(row(method="B5", seed=7, problem_id="x"))
    rows.append(row(method="B5", seed=7, problem_id="y"))
    tm = task_matrices(rows, "t")
    assert tm.seeds == [0, 1] and tm.problem_ids == ["x", "y"]
    assert tm.correct["B5"].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert any("seeds [7] dropped" in w for w in tm.warnings)
    with pytest.raises(DataError, match=r"method 'B3' seed 0: problem set differs.*missing \['y'\]"):
        task_matrices([r for r in rows if not (r["method"] == "B3" and r["seed"] == 0 and r["problem_id"] == "y")], "t")


def test_read_metrics_file(tmp_path):
    p = write(tmp_path / "m.jsonl", [{"step": 10, "loss": 1.0, "reward/mean": 0.5},
                                     {"step": 0, "loss": 2.0, "note": "x", "flag": True}])
    m = read_metrics_file(p)
    assert sorted(m) == ["loss", "reward/mean", "step"]
    assert m["step"].tolist() == [0, 10] and m["loss"].tolist() == [2.0, 1.0]
    assert np.isnan(m["reward/mean"][0])
    bad = write(tmp_path / "b.jsonl", [{"step": 0, "loss": 1.0}, {"step": 1, "loss": "high"}])
    with pytest.raises(DataError, match=r"b\.jsonl: row 2: metric 'loss' must be a number"):
        read_metrics_file(bad)
