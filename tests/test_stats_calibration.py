"""Calibration of the table's inference by simulation (cts.stats.simulate).

The primary run-level test must hold its level and its CI must cover the true Δ at the
nominal rate, with few seeds and seed-level variance; the former per-problem Wilcoxon does not.
Vectorised: each calibration below simulates 1000 data sets (×2: δ = 0 and δ ≠ 0) in about a second.
"""

import itertools

import numpy as np
import pytest
from scipy.special import expit

from cts.stats.inference import run_level_contrast
from cts.stats.simulate import calibrate, calibration_table, simulate_paired, true_delta

N_REPS = 1000  # Monte-Carlo sd of a 0.05 rate: 0.007, so [0.02, 0.08] is ±4 sd


@pytest.mark.parametrize("n_seeds,sd_seed", list(itertools.product((3, 5), (0.0, 0.1, 0.3))))
def test_run_level_test_holds_level_and_coverage(n_seeds, sd_seed):
    r = calibrate("run_level", n_reps=N_REPS, n_seeds=n_seeds, sd_seed=sd_seed, seed=7)
    assert 0.02 <= r["type1"] <= 0.08, r
    assert 0.92 <= r["coverage"] <= 0.98, r


@pytest.mark.parametrize("n_seeds,n_samples", [(3, 16), (5, 4)])
def test_run_level_test_with_persistent_problem_effects(n_seeds, n_samples):
    # strong method × problem effects and sampled outcomes: a per-seed t alone over-rejects here
    r = calibrate("run_level", n_reps=N_REPS, n_seeds=n_seeds, sd_seed=0.1, sd_interaction=0.5,
                  n_samples=n_samples, seed=3)
    assert 0.02 <= r["type1"] <= 0.08, r
    assert 0.92 <= r["coverage"] <= 0.98, r


def test_former_per_problem_wilcoxon_does_not_hold_its_level():
    # the scenario: 160 problems, 2 seeds, seed sd 0.1 logit, true Δ = 0
    r = calibrate("wilcoxon_problems", n_reps=200, n_seeds=2, sd_seed=0.1, n_boot=200, seed=1)
    assert r["type1"] > 0.08, r
    md = calibration_table([r, calibrate("run_level", n_reps=200, n_seeds=2, sd_seed=0.1, seed=1)])
    assert "| 2 | 0.1 | 0 | 1 |" in md and "wilcoxon_problems: type-I" in md


def test_generator_truth_and_structure():
    rng = np.random.default_rng(0)
    a, b, truth = simulate_paired(rng, n_reps=3000, n_seeds=2, n_problems=50, delta_logit=0.5,
                                  sd_seed=0.3, sd_interaction=0.2, n_samples=4)
    assert a.shape == b.shape == (3000, 2, 50)
    assert set(np.unique(a * 4)) <= set(range(5))  # k / n_samples
    assert (a - b).mean() == pytest.approx(truth, abs=0.004)  # MC sd ≈ 0.0015
    # quadrature against brute force
    z = np.random.default_rng(1).normal(size=2_000_000) * np.sqrt(1 + 0.09 + 0.04)
    assert truth == pytest.approx((expit(-0.5 + 0.5 + z) - expit(-0.5 + z)).mean(), abs=1e-3)
    assert true_delta(0.0, base_logit=-0.5, sd_total=1.2) == 0.0


def test_seed_effect_enters_the_variance():
    # one seed effect shifts every problem of a run: the run-level se grows with it, so a
    # large Δ̂ driven by 3 runs is not called significant on the strength of 160 problems
    rng = np.random.default_rng(5)
    w, g = np.full(160, 1 / 160), np.ones((160, 1))
    small = run_level_contrast(np.subtract(*simulate_paired(rng, n_reps=500, n_seeds=3, n_problems=160,
                                                            sd_seed=0.0)[:2]), w, g)
    large = run_level_contrast(np.subtract(*simulate_paired(rng, n_reps=500, n_seeds=3, n_problems=160,
                                                            sd_seed=0.5)[:2]), w, g)
    assert np.median(large["se"]) > 1.5 * np.median(small["se"])
    assert np.all(large["df"] >= 1) and np.all(large["df"] <= 159 + 1e-9)
    assert np.median(large["df"]) == pytest.approx(2, abs=0.1)  # the run-level term dominates: S − 1


def test_two_seeds_do_not_hold_the_level_where_seeds_and_problems_both_vary():
    # why the table prints no p-value with 2 seeds: seed sd 0.3 logit, persistent method ×
    # problem effects (sd 0.5) and sampled outcomes give a type-I error near 0.12
    r = calibrate("run_level", n_reps=2000, n_seeds=2, sd_seed=0.3, sd_interaction=0.5, n_samples=16, seed=0)
    assert r["type1"] > 0.09, r
