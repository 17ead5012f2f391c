"""cts.stats.inference against scipy / statsmodels and a direct bootstrap."""

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cts.stats.inference import (Interval, compare_methods, crossed_bootstrap,
                                 crossed_bootstrap_weights, holm_adjust, task_rng, wilcoxon_paired)


@pytest.mark.parametrize("p", [
    [0.01, 0.04, 0.03, 0.005],
    [0.5, 0.5, 0.01, 0.01, 0.2],  # ties
    [0.0, 1.0],
    [0.04],
    list(np.random.default_rng(3).uniform(size=25) ** 3),
])
def test_holm_equals_statsmodels(p):
    np.testing.assert_allclose(holm_adjust(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)


def test_holm_hand_values():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone 0.06
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    with pytest.raises(ValueError):
        holm_adjust([0.1, float("nan")])


def _binary(rng, shape, p):
    return (rng.uniform(size=shape) < p).astype(float)


@pytest.mark.parametrize("n_problems,n_seeds", [(8, 2), (12, 3), (30, 3), (80, 1)])
def test_wilcoxon_equals_scipy(n_problems, n_seeds):
    rng = np.random.default_rng(n_problems)
    x, y = _binary(rng, (n_seeds, n_problems), 0.6), _binary(rng, (n_seeds, n_problems), 0.4)
    res = wilcoxon_paired(x, y)
    d = (x - y).mean(0)
    ref = sps.wilcoxon(d, zero_method="wilcox")
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["mean_delta"] == pytest.approx(d.mean())
    assert res["n_nonzero"] == int((np.abs(d) > 1e-12).sum())
    assert res["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_effect_sizes_hand():
    # d = [1, 1, -1, 0.5] (one seed): ranks of |d| among nonzero: 0.5→1, 1,1,1→3 each
    x = np.array([[1.0, 1.0, 0.0, 0.5]])
    y = np.array([[0.0, 0.0, 1.0, 0.0]])
    res = wilcoxon_paired(x, y)
    r_plus, r_minus = 3 + 3 + 1, 3
    assert res["rank_biserial"] == pytest.approx((r_plus - r_minus) / (r_plus + r_minus))
    assert res["statistic"] == pytest.approx(3.0)
    d = np.array([1, 1, -1, 0.5])
    assert res["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_small_n_cannot_reach_alpha_warning():
    x = np.ones((2, 5))
    y = np.zeros((2, 5))
    res = wilcoxon_paired(x, y, alpha_threshold=0.05)
    assert res["p"] == pytest.approx(2 / 2**5) and res["min_attainable_p"] == pytest.approx(0.0625)
    assert res["rank_biserial"] == 1.0
    assert any("cannot reach significance" in n and "5 nonzero" in n for n in res["notes"])
    assert any("only 5 problems" in n for n in res["notes"])
    # six perfect pairs reach 0.05 but not the Holm threshold of 10 comparisons
    res6 = wilcoxon_paired(np.ones((2, 6)), np.zeros((2, 6)), alpha_threshold=0.005)
    assert res6["p"] == pytest.approx(2 / 2**6)
    assert any("cannot reach" in n for n in res6["notes"])


def test_degenerate_all_zero_and_single_seed():
    x = np.array([[1.0, 0.0, 1.0] * 5])
    res = wilcoxon_paired(x, x.copy())
    assert res["p"] == 1.0 and res["statistic"] is None and res["n_nonzero"] == 0
    assert any("all per-problem differences are zero" in n for n in res["notes"])
    assert any("1 seed" in n for n in res["notes"])


def test_bootstrap_weights_equal_explicit_resampling():
    x = np.random.default_rng(1).uniform(size=(4, 9))
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    (w_s, w_p), = list(crossed_bootstrap_weights(4, 9, 3, rng_a))
    # the same draws as the generator makes: the block's seed indices, then its problem indices
    s_idx = rng_b.integers(0, 4, size=(3, 4))
    p_idx = rng_b.integers(0, 9, size=(3, 9))
    for b in range(3):
        explicit = x[s_idx[b]][:, p_idx[b]].mean()
        assert w_s[b] @ x @ w_p[b] == pytest.approx(explicit)


def test_bootstrap_ci_close_to_direct_percentile_bootstrap():
    # with one seed the crossed bootstrap is the ordinary bootstrap of the problem mean
    rng = np.random.default_rng(2)
    v = _binary(rng, (1, 200), 0.3)
    means, _ = crossed_bootstrap({"m": v}, n_boot=4000, rng=task_rng(0, "t"))
    ref = sps.bootstrap((v[0],), np.mean, n_resamples=4000, method="percentile",
                        confidence_level=0.95, rng=np.random.default_rng(9)).confidence_interval
    assert means["m"].estimate == pytest.approx(v.mean())
    assert means["m"].low == pytest.approx(ref.low, abs=0.012)
    assert means["m"].high == pytest.approx(ref.high, abs=0.012)


def test_paired_delta_ci_uses_shared_draws():
    # y = x with a few extra solves: paired Δ is tight; an unpaired interval would be wide
    rng = np.random.default_rng(4)
    x = _binary(rng, (3, 100), 0.5)
    y = x.copy()
    y[:, :10] = 1.0
    _, deltas = crossed_bootstrap({"x": x, "y": y}, [("y", "x")], n_boot=500, rng=task_rng(0, "t"))
    dl = deltas[("y", "x")]
    assert dl.estimate == pytest.approx((y - x).mean())
    assert dl.low >= 0  # Δ ≥ 0 in every replicate because the draws are shared
    assert dl.high - dl.low < 0.12


def test_compare_methods_family_and_reproducible():
    rng = np.random.default_rng(6)
    tasks = {t: {"B3": _binary(rng, (3, 40), 0.4), "B5": _binary(rng, (3, 40), 0.7),
                 "B4": _binary(rng, (3, 40), 0.4)} for t in ("a", "b")}
    comps = [("a", "B4", "B3"), ("a", "B5", "B3"), ("b", "B4", "B3"), ("b", "B5", "B3")]
    r1, m1 = compare_methods(tasks, comps, n_boot=300, seed=11)
    r2, _ = compare_methods(tasks, comps, n_boot=300, seed=11)
    assert [c.to_dict() for c in r1] == [c.to_dict() for c in r2]
    np.testing.assert_allclose([c.p_holm for c in r1],
                               multipletests([c.test["p"] for c in r1], method="holm")[1])
    assert all(c.significant == (c.p_holm < 0.05) for c in r1)
    assert isinstance(m1["a"]["B5"], Interval)
    # a task's draws depend only on (seed, task): dropping task b leaves task a's intervals unchanged
    r3, _ = compare_methods({"a": tasks["a"]}, comps[:2], n_boot=300, seed=11)
    assert r3[0].delta == r1[0].delta
    r4, _ = compare_methods(tasks, comps, n_boot=300, seed=12)
    assert r4[0].delta != r1[0].delta
