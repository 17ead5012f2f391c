"""cts.stats.power: the run-level test's variance model, MDE, seeds needed, pilot, power.md."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from cts.io import DataError
from cts.stats.power import (DEFAULT_SD_CELL, DEFAULT_SD_PROBLEM, DEFAULT_SD_RUN,
                             estimate_sd_components, minimum_detectable_effect, plan_comparisons,
                             plan_mde, power_of_test, seeds_needed, simulate_power, estimate_variance,
                             write_power_report)

PLAN = {"tasks": ["synth_math", "gsm8k"], "methods": ["B3", "B4", "B5"], "base": "B3",
        "ablation_base": "B5", "ablations": ["B5-A1", "B5-A2"], "seeds": [0, 1, 2],
        "n_test_problems": {"synth_math": 200, "gsm8k": 100}}


def test_variance_hand_formula():
    v, df = estimate_variance(4, 50, sd_run=0.03, sd_cell=0.4, sd_problem=0.1)
    v_run, v_prob = (2 * 0.03**2 + 0.16 / 50) / 4, 0.01 / 50
    assert v == pytest.approx(v_run + v_prob)
    assert df == pytest.approx((v_run + v_prob) ** 2 / (v_run**2 / 3 + v_prob**2 / 49))
    assert estimate_variance(4, 50, sd_run=0.03, sd_cell=0.4, sd_problem=0.0)[1] == pytest.approx(3)


def test_power_equals_noncentral_t():
    v, df = estimate_variance(10, 160)
    crit = sps.t.ppf(1 - 0.05 / 4, df)
    nc = 0.05 / math.sqrt(v)
    want = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    assert power_of_test(0.05, 10, 160, n_comparisons=2) == pytest.approx(want, abs=2e-4)
    assert power_of_test(0.05, 2, 160) == 0.0  # no test below 3 seeds


def test_mde_monotone_and_undefined_cases():
    base = minimum_detectable_effect(5, 100)
    assert minimum_detectable_effect(5, 400) < base
    assert minimum_detectable_effect(10, 100) < base
    assert minimum_detectable_effect(5, 100, n_comparisons=10) > base
    assert minimum_detectable_effect(5, 100, power=0.9) > base
    assert power_of_test(base, 5, 100) == pytest.approx(0.8, abs=1e-5)
    assert minimum_detectable_effect(2, 100) is None  # no test
    assert minimum_detectable_effect(5, 100, sd_run=0, sd_cell=0, sd_problem=0) is None  # no variance
    # the problem term is a floor seeds cannot lower
    floor = sps.norm.ppf(1 - 0.05 / 2) * 0.1 / math.sqrt(100)
    assert minimum_detectable_effect(200, 100, sd_problem=0.1) > floor
    assert seeds_needed(0.03, 100, sd_problem=0.2) is None
    with pytest.raises(ValueError):
        minimum_detectable_effect(0, 100)


@pytest.mark.parametrize("n_seeds,n_problems,m", [(5, 160, 16), (10, 60, 1), (3, 100, 1)])
def test_simulated_power_of_the_real_test_at_mde(n_seeds, n_problems, m):
    mde = minimum_detectable_effect(n_seeds, n_problems, n_comparisons=m)
    power = simulate_power(mde, n_seeds=n_seeds, n_problems=n_problems, n_comparisons=m,
                           n_sim=3000, seed=n_problems)
    assert power == pytest.approx(0.8, abs=0.04)  # binomial sd of 3000 sims ≈ 0.007
    assert simulate_power(0.0, n_seeds=n_seeds, n_problems=n_problems, n_comparisons=m,
                          n_sim=3000, seed=1) < 0.05 / m + 0.015


def test_seeds_needed_is_the_first_with_enough_power():
    s = seeds_needed(0.05, 160, n_comparisons=4)
    assert power_of_test(0.05, s, 160, n_comparisons=4) >= 0.8
    assert power_of_test(0.05, s - 1, 160, n_comparisons=4) < 0.8


def test_estimate_sd_components_recovers_truth():
    rng = np.random.default_rng(0)
    sd_run, sd_cell, tau, s, p = 0.05, 0.5, 0.1, 400, 400
    d = (0.1 + rng.normal(0, math.sqrt(2) * sd_run, (s, 1)) + rng.normal(0, tau, (1, p))
         + rng.normal(0, sd_cell, (s, p)))
    r, c, t, note = estimate_sd_components(d, np.zeros_like(d))
    assert r == pytest.approx(sd_run, abs=0.006) and c == pytest.approx(sd_cell, abs=0.005)
    assert t == pytest.approx(tau, abs=0.01) and "400 seeds" in note
    r1, c1, t1, note1 = estimate_sd_components(d[:1], np.zeros((1, p)))
    assert r1 is None and t1 == 0 and "1 pilot seed" in note1


def test_plan_comparisons_and_validation():
    comps = plan_comparisons(PLAN)
    assert comps[:4] == [("synth_math", "B4", "B3"), ("synth_math", "B5", "B3"),
                         ("synth_math", "B5-A1", "B5"), ("synth_math", "B5-A2", "B5")]
    assert len(comps) == 8
    with pytest.raises(DataError, match="missing key"):
        plan_comparisons({k: v for k, v in PLAN.items() if k != "seeds"})
    with pytest.raises(DataError, match=r"n_test_problems\['gsm8k'\]"):
        plan_comparisons({**PLAN, "n_test_problems": {"synth_math": 10}})


def test_write_power_report_prior(tmp_path):
    rows = write_power_report(PLAN, tmp_path / "power.md")
    text = (tmp_path / "power.md").read_text()
    assert text.count("\n| B") == 8
    r = rows[0]
    want = minimum_detectable_effect(3, 200, n_comparisons=8)
    assert r["mde"] == pytest.approx(want) and r["sd_source"] == "prior"
    assert r["seeds_needed"] == seeds_needed(0.03, 200, n_comparisons=8)
    assert (f"| B4 vs B3 | synth_math | 3 | 200 | {DEFAULT_SD_RUN:.3f}, {DEFAULT_SD_CELL:.3f}, "
            f"{DEFAULT_SD_PROBLEM:.3f} | prior | {want:.3f} | {r['seeds_needed']} |") in text
    assert "run-level paired t" in text and "## How the answer depends" in text
    write_power_report({**PLAN, "seeds": [0, 1]}, tmp_path / "p2.md")
    t2 = (tmp_path / "p2.md").read_text()
    assert "no test (< 3 seeds)" in t2 and "no p-value is reported" in t2


def test_plan_mde_uses_pilot(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for m, p_ok in (("B3", 0.4), ("B5", 0.6)):
        for s in (0, 1, 2):
            for j in range(30):
                lines.append({"problem_id": f"q{j}", "task": "gsm8k", "method": m, "seed": s,
                              "horizon": 2, "correct": bool(rng.uniform() < p_ok), "n_samples": 1,
                              "n_correct": 0, "base_correct": False, "critiqued": False,
                              "base_first_error_step": None, "first_error_step": None, "taxonomy": None})
    pilot = tmp_path / "pilot.jsonl"
    pilot.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = {(r["task"], r["method"]): r for r in plan_mde(PLAN, [pilot])}
    assert rows[("gsm8k", "B5")]["sd_source"].startswith("pilot: 3 seeds")
    assert rows[("gsm8k", "B4")]["sd_source"].startswith("pilot, pooled")
    assert rows[("synth_math", "B5")]["sd_source"] == "prior"
