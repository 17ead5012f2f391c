"""cts.stats.inference against scipy / statsmodels and a direct bootstrap."""

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cts.stats.inference import (Interval, compare_methods, crossed_bootstrap,
                                 crossed_bootstrap_weights, holm_adjust, horizon_contrasts,
                                 run_level_mean, run_level_test, signed_rank_exact_p, task_rng,
                                 wilcoxon_paired)


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


def _brute_force_signed_rank_p(d):
    """Two-sided p over all 2ⁿ sign patterns of |d| (midranks), by enumeration."""
    import itertools
    r = sps.rankdata(np.abs(d))
    obs = r[d > 0].sum()
    sums = np.array([r[np.array(s, bool)].sum() for s in itertools.product((0, 1), repeat=len(d))])
    return min(1.0, 2 * min((sums <= obs + 1e-9).mean(), (sums >= obs - 1e-9).mean()))


@pytest.mark.parametrize("d", [
    [1.0, 1.0, -1.0, 0.5, 0.5, 1.0, 1.0],  # ties
    [0.5, -0.5, 1.0, 1.0, 1.0, 1.0, -1.0, 0.5, 1.0, 1.0, 0.5, 1.0],
    list(np.random.default_rng(3).normal(size=9)),  # no ties
])
def test_signed_rank_exact_equals_enumeration(d):
    p, _ = signed_rank_exact_p(np.array(d))
    assert p == pytest.approx(_brute_force_signed_rank_p(np.array(d)), abs=1e-12)


@pytest.mark.parametrize("n", [5, 20, 45])
def test_signed_rank_exact_equals_scipy_exact_without_ties(n):
    d = np.random.default_rng(n).normal(size=n)
    assert signed_rank_exact_p(d)[0] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, rel=1e-10)


def test_wilcoxon_few_differing_problems_is_exact():
    # the case: 4 or 5 of 160 problems differ; the normal approximation counted all 160
    # and gave 0.0455 / 0.0253, the exact test over the nonzero differences gives 0.125 / 0.0625
    for k, want in ((4, 0.125), (5, 0.0625)):
        x = np.zeros((2, 160))
        x[:, :k] = 1.0
        res = wilcoxon_paired(x, np.zeros((2, 160)), alpha_threshold=0.05)
        assert res["p"] == pytest.approx(want) and res["method"] == "exact"
        assert res["min_attainable_p"] == pytest.approx(want) and res["n_nonzero"] == k
        assert any("cannot reach significance" in n and f"{k} nonzero" in n for n in res["notes"])


@pytest.mark.parametrize("n_problems,n_seeds", [(8, 2), (12, 3), (30, 3), (80, 1)])
def test_wilcoxon_statistic_and_effect_sizes(n_problems, n_seeds):
    rng = np.random.default_rng(n_problems)
    x, y = _binary(rng, (n_seeds, n_problems), 0.6), _binary(rng, (n_seeds, n_problems), 0.4)
    res = wilcoxon_paired(x, y)
    d = (x - y).mean(0)
    nz = d[np.abs(d) > 1e-12]
    assert res["statistic"] == pytest.approx(sps.wilcoxon(d, zero_method="wilcox").statistic)
    assert res["mean_delta"] == pytest.approx(d.mean())
    assert res["n_nonzero"] == len(nz)
    assert res["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    # exact over the nonzero differences; close to the normal approximation when n is large
    assert res["p"] == pytest.approx(signed_rank_exact_p(nz)[0])
    if len(nz) > 25:
        assert res["p"] == pytest.approx(sps.wilcoxon(nz, method="asymptotic").pvalue, abs=0.02)


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


def test_run_level_hand_values():
    # D[s, p] = a_s + u_p + e_sp; every piece of V̂ by explicit loops
    rng = np.random.default_rng(8)
    s_, p_ = 4, 25
    d = rng.normal(size=(s_, 1)) * 0.1 + rng.normal(size=(1, p_)) * 0.3 + rng.normal(size=(s_, p_)) * 0.2
    res = run_level_test(d, np.zeros_like(d))
    per_seed = [d[s].mean() for s in range(s_)]
    var_seed = np.var(per_seed, ddof=1) / s_
    dbar = [d[:, p].mean() for p in range(p_)]
    ms_resid = np.var(dbar, ddof=1)
    inter = [[d[s, p] - np.mean(d[s]) - np.mean(d[:, p]) + d.mean() for p in range(p_)] for s in range(s_)]
    ms_e = np.sum(np.square(inter)) / ((s_ - 1) * (p_ - 1))
    tau2 = max(0.0, ms_resid - ms_e / s_)
    assert tau2 > 0
    var = var_seed + tau2 / p_
    df = var**2 / (var_seed**2 / (s_ - 1)
                   + (1 / p_) ** 2 * (ms_resid**2 / (p_ - 1) + (ms_e / s_) ** 2 / ((s_ - 1) * (p_ - 1))))
    assert res["var_seed"] == pytest.approx(var_seed) and res["var_problem"] == pytest.approx(tau2 / p_)
    assert res["df"] == pytest.approx(df)
    assert res["estimate"] == pytest.approx(d.mean())
    assert res["t"] == pytest.approx(d.mean() / np.sqrt(var))
    assert res["p"] == pytest.approx(2 * sps.t.sf(abs(d.mean() / np.sqrt(var)), df))
    assert res["high"] - res["estimate"] == pytest.approx(sps.t.ppf(0.975, df) * np.sqrt(var))
    # without persistent problem effects (τ̂ = 0) it is the paired t-test on per-seed means
    e = rng.normal(size=(3, 40))
    d0 = rng.normal(size=(3, 1)) + e - e.mean(0)  # every problem's seed-average equal: τ̂ = 0
    r0 = run_level_test(d0, np.zeros_like(d0))
    assert r0["var_problem"] == 0
    assert r0["p"] == pytest.approx(sps.ttest_1samp(d0.mean(1), 0).pvalue)


def test_run_level_seed_rules():
    rng = np.random.default_rng(0)
    x3, y3 = _binary(rng, (3, 50), 0.6), _binary(rng, (3, 50), 0.4)
    r3 = run_level_test(x3, y3)
    assert r3["p"] is not None and r3["low"] < r3["estimate"] < r3["high"] and not r3["notes"]
    r2 = run_level_test(x3[:2], y3[:2])
    assert r2["p"] is None and r2["low"] is not None
    assert any("2 seeds: no p-value" in n for n in r2["notes"])
    r1 = run_level_test(x3[:1], y3[:1])
    assert r1["p"] is None and r1["low"] is None and any("1 seed" in n for n in r1["notes"])
    zero = np.zeros((3, 50))
    rz = run_level_test(zero, zero)
    assert rz["no_variance"] and rz["p"] is None and any("no variance" in n for n in rz["notes"])
    assert run_level_mean(x3).low < x3.mean() < run_level_mean(x3).high
    assert run_level_mean(x3[:1]).low is None
    rare = np.zeros((2, 50))
    rare[0, 0] = 1.0  # mean 0.01: the t-interval with ~1 df would go far below 0
    assert run_level_mean(rare).low == 0.0 and 0.01 < run_level_mean(rare).high <= 1.0


def test_horizon_contrasts():
    rng = np.random.default_rng(2)
    h = np.repeat([2, 3, 4, 5], 60)
    # Δ grows by 0.15 per step of H
    x = (rng.uniform(size=(4, 240)) < 0.2 + 0.15 * (h - 2)).astype(float)
    y = (rng.uniform(size=(4, 240)) < 0.2).astype(float)
    hz = horizon_contrasts(x, y, h)
    assert hz["horizons"] == [2, 3, 4, 5] and hz["n_problems"] == [60] * 4
    for j, hv in enumerate(hz["horizons"]):
        assert hz["delta"][j] == pytest.approx((x - y)[:, h == hv].mean())
        assert hz["low"][j] < hz["delta"][j] < hz["high"][j]
    d = (x - y).mean(0)
    assert hz["slope"] == pytest.approx(np.polyfit(h, d, 1)[0])
    assert hz["slope_low"] < 0.15 < hz["slope_high"] and hz["slope_p"] < 0.05
    hz2 = horizon_contrasts(x[:2], y[:2], h)
    assert hz2["slope_p"] is None and "no p-value" in hz2["note"]
    assert horizon_contrasts(x, y, np.full(240, 3))["slope"] is None


def test_degenerate_all_zero_and_single_seed():
    x = np.array([[1.0, 0.0, 1.0] * 5])
    res = wilcoxon_paired(x, x.copy())
    assert res["p"] == 1.0 and res["statistic"] is None and res["n_nonzero"] == 0
    assert any("all per-problem differences are zero" in n for n in res["notes"])


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
    horizons = {t: np.tile([2, 3, 4, 5], 10) for t in tasks}
    comps = [("a", "B4", "B3"), ("a", "B5", "B3"), ("b", "B4", "B3"), ("b", "B5", "B3")]
    r1, m1 = compare_methods(tasks, comps, n_boot=300, seed=11, horizons=horizons)
    r2, _ = compare_methods(tasks, comps, n_boot=300, seed=11, horizons=horizons)
    assert [c.to_dict() for c in r1] == [c.to_dict() for c in r2]
    # primary: the run-level test, Holm over the family
    for c in r1:
        want = run_level_test(tasks[c.task][c.method], tasks[c.task][c.reference])
        assert c.test["p"] == pytest.approx(want["p"]) and c.delta.low == pytest.approx(want["low"])
    np.testing.assert_allclose([c.p_holm for c in r1],
                               multipletests([c.test["p"] for c in r1], method="holm")[1])
    assert all(c.significant == (c.p_holm < 0.05) for c in r1)
    # secondary: Wilcoxon, its own Holm family; slopes likewise
    np.testing.assert_allclose([c.secondary["p_holm"] for c in r1],
                               multipletests([c.secondary["p"] for c in r1], method="holm")[1])
    np.testing.assert_allclose([c.horizon["slope_p_holm"] for c in r1],
                               multipletests([c.horizon["slope_p"] for c in r1], method="holm")[1])
    assert isinstance(m1["a"]["B5"], Interval)
    # the conditional bootstrap's draws depend only on (seed, task)
    r3, _ = compare_methods({"a": tasks["a"]}, comps[:2], n_boot=300, seed=11)
    assert r3[0].secondary["delta_conditional"] == r1[0].secondary["delta_conditional"]
    r4, _ = compare_methods(tasks, comps, n_boot=300, seed=12)
    assert r4[0].secondary["delta_conditional"] != r1[0].secondary["delta_conditional"]
    assert r4[0].delta == r1[0].delta  # the primary interval has no randomness


def test_compare_methods_two_seeds_no_p_and_no_holm():
    rng = np.random.default_rng(1)
    tasks = {"a": {"B3": _binary(rng, (2, 40), 0.4), "B5": _binary(rng, (2, 40), 0.9)}}
    (c,), _ = compare_methods(tasks, [("a", "B5", "B3")], n_boot=100, seed=0)
    assert c.test["p"] is None and c.p_holm is None and not c.significant
    assert c.secondary["p"] < 0.05  # the conditional test still runs, labelled as such
    assert any("2 seeds: no p-value" in w for w in c.warnings)
