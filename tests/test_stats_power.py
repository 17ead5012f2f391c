"""cts.stats.power: the analytic MDE, its simulation check, the pilot variance, power.md."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from cts.io import DataError
from cts.stats.power import (WILCOXON_ARE, estimate_sd_components, minimum_detectable_effect,
                             plan_comparisons, plan_mde, simulate_power, write_power_report)

PLAN = {"tasks": ["synth_math", "gsm8k"], "methods": ["B3", "B4", "B5"], "base": "B3",
        "ablation_base": "B5", "ablations": ["B5-A1", "B5-A2"], "seeds": [0, 1, 2],
        "n_test_problems": {"synth_math": 200, "gsm8k": 100}}


def test_mde_hand_formula():
    # S=4, P=50, τ=0.3, σ_w=0.4, m=5: sd_d = sqrt(0.09 + 0.04) ; level 0.01 two-sided
    sd_d = math.sqrt(0.3**2 + 0.4**2 / 4)
    want = (sps.t.ppf(1 - 0.01 / 2, 49) + sps.t.ppf(0.8, 49)) * sd_d / math.sqrt(50 * 3 / math.pi)
    got = minimum_detectable_effect(4, 50, sd_between=0.3, sd_within=0.4, n_comparisons=5)
    assert got == pytest.approx(want)
    assert WILCOXON_ARE == pytest.approx(0.9549, abs=1e-4)


def test_mde_monotone():
    base = minimum_detectable_effect(3, 100)
    assert minimum_detectable_effect(3, 400) < base
    assert minimum_detectable_effect(10, 100) < base
    assert minimum_detectable_effect(3, 100, n_comparisons=10) > base
    assert minimum_detectable_effect(3, 100, power=0.9) > base
    # seeds only shrink the within part: with σ_w = 0 they do not help at all
    assert minimum_detectable_effect(1, 100, sd_within=0) == minimum_detectable_effect(50, 100, sd_within=0)
    with pytest.raises(ValueError):
        minimum_detectable_effect(0, 100)


@pytest.mark.parametrize("n_seeds,n_problems,m", [(3, 60, 4), (1, 30, 1)])
def test_simulated_power_at_mde_is_about_80_percent(n_seeds, n_problems, m):
    mde = minimum_detectable_effect(n_seeds, n_problems, n_comparisons=m)
    power = simulate_power(mde, n_seeds=n_seeds, n_problems=n_problems, n_comparisons=m,
                           n_sim=400, seed=n_problems)
    assert power == pytest.approx(0.8, abs=0.07)  # binomial sd of 400 sims ≈ 0.02
    assert simulate_power(0.0, n_seeds=n_seeds, n_problems=n_problems, n_comparisons=m,
                          n_sim=400, seed=1) < 0.05 / m + 0.03


def test_estimate_sd_components_recovers_truth():
    rng = np.random.default_rng(0)
    tau, sw, s, p = 0.3, 0.6, 4, 4000
    d = 0.1 + rng.normal(0, tau, p) + rng.normal(0, sw, (s, p))  # [S, P]
    sd_b, sd_w, note = estimate_sd_components(d, np.zeros_like(d))
    assert sd_b == pytest.approx(tau, abs=0.03) and sd_w == pytest.approx(sw, abs=0.02)
    assert "4 seeds" in note
    sd_b1, sd_w1, note1 = estimate_sd_components(d[:1], np.zeros((1, p)))
    assert sd_w1 == 0 and sd_b1 == pytest.approx(math.sqrt(tau**2 + sw**2), abs=0.03)


def test_plan_comparisons_and_validation():
    comps = plan_comparisons(PLAN)
    assert comps[:4] == [("synth_math", "B4", "B3"), ("synth_math", "B5", "B3"),
                         ("synth_math", "B5-A1", "B5"), ("synth_math", "B5-A2", "B5")]
    assert len(comps) == 8
    with pytest.raises(DataError, match="missing key"):
        plan_comparisons({k: v for k, v in PLAN.items() if k != "seeds"})
    with pytest.raises(DataError, match=r"n_test_problems\['gsm8k'\]"):
        plan_comparisons({**PLAN, "n_test_problems": {"synth_math": 10}})


def test_write_power_report_default(tmp_path):
    rows = write_power_report(PLAN, tmp_path / "power.md")
    text = (tmp_path / "power.md").read_text()
    assert text.count("\n| B") == 8
    r = rows[0]
    want = minimum_detectable_effect(3, 200, sd_between=0.5, sd_within=0.5, n_comparisons=8)
    assert r["mde"] == pytest.approx(want) and r["sd_source"] == "default assumption"
    assert f"| B4 vs B3 | synth_math | 3 | 200 | 0.500, 0.500 → {math.sqrt(0.25 + 0.25 / 3):.3f} |" in text
    assert f"{want:.3f}" in text


def test_plan_mde_uses_pilot(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for m, p_ok in (("B3", 0.4), ("B5", 0.6)):
        for s in (0, 1):
            for j in range(30):
                lines.append({"problem_id": f"q{j}", "task": "gsm8k", "method": m, "seed": s,
                              "horizon": 2, "correct": bool(rng.uniform() < p_ok), "n_samples": 1,
                              "n_correct": 0, "base_correct": False, "critiqued": False,
                              "base_first_error_step": None, "first_error_step": None, "taxonomy": None})
    pilot = tmp_path / "pilot.jsonl"
    pilot.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = {(r["task"], r["method"]): r for r in plan_mde(PLAN, [pilot])}
    assert rows[("gsm8k", "B5")]["sd_source"].startswith("pilot: 2 seeds")
    assert rows[("gsm8k", "B4")]["sd_source"].startswith("pilot, pooled")
    assert rows[("synth_math", "B5")]["sd_source"] == "default assumption"
