"""cts.stats.table.build_table and cts.stats.plots on synthetic eval files."""

import json

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cts.io import DataError, atomic_write_jsonl
from cts.stats import plots
from cts.stats.inference import horizon_contrasts, run_level_test
from cts.stats.table import SECTIONS, build_table

TAXA = ("arithmetic", "misread", "skipped_step")
PLAN = {"tasks": ["gsm8k", "synth_math"], "methods": ["B3", "B4", "B5"], "base": "B3",
        "ablation_base": "B5", "ablations": ["B5-A1"], "seeds": [0, 1, 2, 3, 4],
        "n_test_problems": {"gsm8k": 60, "synth_math": 60}}


def make_eval_files(root, *, methods=None, tasks=("synth_math", "gsm8k"), seeds=(0, 1, 2),
                    n_problems=30, seed=0):
    """One JSONL per (method, task, seed). `methods` = {method: logit effect}; the base B3's
    correctness is `base_correct`; longer horizons are harder."""
    methods = methods or {"B3": 0.0, "B5": 1.5, "B5-A1": 0.3, "B4": 0.0}
    rng = np.random.default_rng(seed)
    paths = []
    for task in tasks:
        horizons = rng.integers(1, 6, n_problems)
        difficulty = rng.normal(0, 1, n_problems) + 0.4 * (horizons - 3)
        taxa = rng.choice(TAXA, n_problems)
        for s in seeds:
            base_ok = rng.uniform(size=n_problems) < 1 / (1 + np.exp(difficulty))
            base_fe = rng.integers(0, 3, n_problems)
            for method, eff in methods.items():
                p = 1 / (1 + np.exp(difficulty - eff))
                ok = base_ok.copy() if method == "B3" else rng.uniform(size=n_problems) < p
                rows = [{
                    "problem_id": f"{task}-{j:03d}", "task": task, "method": method, "seed": s,
                    "horizon": int(horizons[j]), "correct": bool(ok[j]), "n_samples": 10,
                    "n_correct": int(rng.binomial(10, p[j])), "base_correct": bool(base_ok[j]),
                    "critiqued": bool(not base_ok[j] and j % 4 != 0),
                    "base_first_error_step": None if base_ok[j] else int(base_fe[j]),
                    "first_error_step": None if ok[j] else int(base_fe[j] + rng.integers(0, 2)),
                    "taxonomy": None if base_ok[j] else str(taxa[j]),
                } for j in range(n_problems)]
                path = root / "eval" / method / task / f"seed{s}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_jsonl(path, rows)
                paths.append(str(path))
    return paths


def make_metrics_files(root, methods=("B3", "B5"), task="synth_math", seeds=(0, 1)):
    paths = []
    for m in methods:
        for s in seeds:
            rows = [{"step": int(t), "loss": float(2 * np.exp(-t / 20) + 0.1 * s),
                     "reward/mean": float(1 - np.exp(-t / 15))} for t in range(0, 50, 5)]
            path = root / "train" / m / task / f"seed{s}" / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(path, rows)
            paths.append(str(path))
    return paths


def read_rows(paths, task, method):
    rows = [json.loads(line) for p in paths for line in open(p)]
    rows = [r for r in rows if r["task"] == task and r["method"] == method]
    seeds = sorted({r["seed"] for r in rows})
    probs = sorted({r["problem_id"] for r in rows})
    cell = {(r["seed"], r["problem_id"]): r["correct"] for r in rows}
    return np.array([[float(cell[(s, p)]) for p in probs] for s in seeds])


def test_table_rows_numbers_and_determinism(tmp_path):
    ev = make_eval_files(tmp_path, seeds=(0, 1, 2, 3, 4), n_problems=60)
    mf = make_metrics_files(tmp_path)
    kw = dict(base="B3", ablation_base="B5", metrics_files=mf, power_plan=PLAN, seed=1, n_boot=300)
    doc = build_table(ev, **kw, out_md=str(tmp_path / "t1.md"), out_json=str(tmp_path / "t1.json"),
                      fig_dir=None)
    build_table(list(reversed(ev)), **kw, out_md=str(tmp_path / "t2.md"),
                out_json=str(tmp_path / "t2.json"), fig_dir=None)
    md = (tmp_path / "t1.md").read_text()
    assert (tmp_path / "t2.md").read_bytes() == (tmp_path / "t1.md").read_bytes()

    # one row per task × method; ablation against B5, others against B3
    for task in ("gsm8k", "synth_math"):
        assert f"| {task} | B3 | — |" in md
        for m, ref in (("B4", "B3"), ("B5", "B3"), ("B5-A1", "B5")):
            assert f"| {task} | {m} | {ref} |" in md
    assert "p (run-level t)" in md and "unit is the training run" in md
    assert "conditional on these trained seeds" in md
    assert "zero_method = 'wilcox'" in md and "n_boot = 300, seed = 1" in md
    assert "base **B3**" in md and "with **B5**" in md
    assert "## Δ by horizon H (greedy pass@1)" in md

    comps = doc["comparisons"]
    assert [(c["task"], c["method"], c["reference"]) for c in comps] == [
        ("gsm8k", "B4", "B3"), ("gsm8k", "B5", "B3"), ("gsm8k", "B5-A1", "B5"),
        ("synth_math", "B4", "B3"), ("synth_math", "B5", "B3"), ("synth_math", "B5-A1", "B5")]
    # the numbers equal independent computations on the raw files
    h = {t: np.array([json.loads(line)["horizon"] for line in open(ev[0 if t == "synth_math" else -1])])
         for t in ("synth_math",)}
    for c in comps:
        x, y = read_rows(ev, c["task"], c["method"]), read_rows(ev, c["task"], c["reference"])
        want = run_level_test(x, y)
        assert c["delta"]["estimate"] == pytest.approx((x - y).mean())
        assert c["delta"]["low"] == pytest.approx(want["low"]) and c["test"]["p"] == pytest.approx(want["p"])
        assert c["mean"]["estimate"] == pytest.approx(x.mean())
        assert c["secondary"]["mean_delta"] == pytest.approx((x - y).mean())
        assert c["test"]["n_seeds"] == 5 and c["test"]["n_problems"] == 60
        if c["task"] == "synth_math":
            hz = horizon_contrasts(x, y, h["synth_math"])
            assert c["horizon"]["slope"] == pytest.approx(hz["slope"])
            assert c["horizon"]["delta"] == pytest.approx(hz["delta"])
    np.testing.assert_allclose([c["p_holm"] for c in comps],
                               multipletests([c["test"]["p"] for c in comps], method="holm")[1])
    np.testing.assert_allclose([c["secondary"]["p_holm"] for c in comps],
                               multipletests([c["secondary"]["p"] for c in comps], method="holm")[1])
    # the strong effect (B5: +1.5 logits) is detected on both tasks by the run-level test
    assert all(c["significant"] for c in comps if c["method"] == "B5")
    assert doc["settings"]["mde_n_comparisons"] == 6
    assert all(0 < c["mde"] < 1 for c in comps)


def test_table_sections_are_extensible_and_warnings_unique(tmp_path):
    ev = make_eval_files(tmp_path, methods={"B3": 0.0, "B5": 0.0}, tasks=("gsm8k",), n_problems=6,
                         seeds=(0, 1, 2))

    def extra(ctx):
        ctx.warnings.append("extra section warning")
        ctx.extra_json["extra"] = {"n_tasks": len(ctx.tasks)}
        return ["", "## Extra section", "", f"{len(ctx.comparisons[ctx.primary])} comparisons"]

    n_sections = len(SECTIONS)
    doc = build_table(ev, base="B3", ablation_base=None, seed=0, n_boot=50, extra_sections=[extra],
                      out_md=str(tmp_path / "t.md"), out_json=str(tmp_path / "t.json"), fig_dir=None)
    assert len(SECTIONS) == n_sections
    md = (tmp_path / "t.md").read_text()
    assert md.index("## Extra section") < md.index("## Warnings") and "1 comparisons" in md
    assert doc["extra"] == {"extra": {"n_tasks": 1}}
    warn = md[md.index("## Warnings"):].splitlines()[2:]
    assert len(warn) == len(set(warn)) and "- extra section warning" in warn
    assert any("only 6 problems" in w for w in warn)  # raised for both metrics, listed once


def test_all_zero_outcomes_say_no_variance(tmp_path):
    ev = make_eval_files(tmp_path, methods={"B3": -50.0, "B5": -50.0}, tasks=("gsm8k",), n_problems=12,
                         seeds=(0, 1, 2))
    for p in ev:  # every outcome 0, greedy and sampled
        rows = [json.loads(line) for line in open(p)]
        atomic_write_jsonl(p, [{**r, "correct": False, "n_correct": 0} for r in rows])
    doc = build_table(ev, base="B3", ablation_base=None, seed=0, n_boot=50,
                      out_md=str(tmp_path / "t.md"), out_json=str(tmp_path / "t.json"), fig_dir=None)
    md = (tmp_path / "t.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| gsm8k | B5 | B3 |"))
    assert "no variance" in row and "0.000 |" not in row.rsplit("|", 2)[-2]
    assert doc["comparisons"][0]["mde"] is None and doc["comparisons"][0]["test"]["p"] is None


@pytest.mark.slow  # ≈ 8 s: 14 matplotlib files
def test_table_figures(tmp_path):
    ev = make_eval_files(tmp_path, n_problems=15)
    mf = make_metrics_files(tmp_path)
    doc = build_table(ev, base="B3", ablation_base="B5", metrics_files=mf, seed=0, n_boot=50,
                      out_md=str(tmp_path / "t.md"), out_json=str(tmp_path / "t.json"),
                      fig_dir=str(tmp_path / "fig"))
    # PNG + SVG for horizon (2 tasks), taxonomy (2 tasks), forest, 2 learning-curve keys
    names = sorted(f.split("/")[-1] for f in doc["figures"])
    assert names == sorted(f"{stem}.{ext}" for ext in ("png", "svg") for stem in (
        "horizon_gsm8k", "horizon_synth_math", "taxonomy_gsm8k", "taxonomy_synth_math",
        "delta_forest", "curve_synth_math_loss", "curve_synth_math_reward_mean"))
    for f in doc["figures"]:
        assert (tmp_path / f).stat().st_size > 1000


def test_table_warnings_and_errors(tmp_path):
    ev = make_eval_files(tmp_path, methods={"B3": 0.0, "B5": 0.0, "B5-A2": 0.0}, tasks=("gsm8k",),
                         n_problems=5, seeds=(0,))
    extra = make_eval_files(tmp_path / "x", methods={"B5": 0.0}, tasks=("gsm8k",), n_problems=5, seeds=(7,))
    doc = build_table(ev + extra, base="B3", ablation_base=None, seed=0, n_boot=50,
                      out_md=str(tmp_path / "t.md"), out_json=str(tmp_path / "t.json"), fig_dir=None)
    md = (tmp_path / "t.md").read_text()
    assert "seeds [7] dropped" in md
    assert "ablation B5-A2 not compared" in md
    assert "1 seed" in md and "only 5 problems" in md and "cannot reach significance" in md
    assert len(doc["comparisons"]) == 1
    # a cell missing a problem is an error naming the cell
    bad = tmp_path / "eval" / "B5" / "gsm8k" / "seed0.jsonl"
    bad.write_text("".join(bad.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match=r"method 'B5' seed 0: problem set differs"):
        build_table(ev, base="B3", ablation_base=None, seed=0, n_boot=50,
                    out_md=str(tmp_path / "u.md"), out_json=str(tmp_path / "u.json"), fig_dir=None)
    assert not (tmp_path / "u.md").exists()


def test_plots_return_written_paths_and_svg_is_deterministic(tmp_path):
    rows = [{"label": "a − b", "delta": 0.1, "low": -0.05, "high": 0.2, "significant": False},
            {"label": "c − b", "delta": 0.3, "low": 0.1, "high": 0.5, "significant": True}]
    p1 = plots.plot_delta_forest(rows, out_stem=tmp_path / "f1")
    p2 = plots.plot_delta_forest(rows, out_stem=tmp_path / "f2")
    assert p1 == [str(tmp_path / "f1.png"), str(tmp_path / "f1.svg")]
    assert (tmp_path / "f1.svg").read_bytes() == (tmp_path / "f2.svg").read_bytes()
    assert (tmp_path / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no run has metric"):
        plots.plot_learning_curves({"r": {"step": np.arange(3), "loss": np.ones(3)}}, key="kl",
                                   out_stem=tmp_path / "c")


def test_primary_sampled_metric_and_the_other_table(tmp_path):
    """primary="sampled" compares n_correct / n_samples; greedy gets its own Holm family."""
    ev = make_eval_files(tmp_path, n_problems=20, seeds=(0, 1))
    doc = build_table(ev, base="B3", ablation_base="B5", seed=0, n_boot=50, primary="sampled",
                      out_md=str(tmp_path / "t.md"), out_json=str(tmp_path / "t.json"), fig_dir=None)
    assert doc["primary_metric"] == "sampled" and "sampled pass@1" in doc["question"]
    rows = [json.loads(line) for p in ev for line in open(p)]

    def sampled(task, method):
        sel = [r for r in rows if r["task"] == task and r["method"] == method]
        grid = {(r["seed"], r["problem_id"]): r["n_correct"] / r["n_samples"] for r in sel}
        seeds, probs = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
        return np.array([[grid[(s, p)] for p in probs] for s in seeds])

    for c in doc["comparisons"]:
        x, y = sampled(c["task"], c["method"]), sampled(c["task"], c["reference"])
        assert c["delta"]["estimate"] == pytest.approx((x - y).mean())
        assert c["delta"]["high"] == pytest.approx(run_level_test(x, y)["high"])
        # 2 seeds: no p-value and no Holm; the conditional Wilcoxon still reported (exact)
        assert c["test"]["p"] is None and c["p_holm"] is None and not c["significant"]
        d = (x - y).mean(0)
        nz = d[d != 0]
        if 0 < len(nz) <= 25:  # no ties, few: scipy's exact test is the reference
            if len(np.unique(np.abs(nz))) == len(nz):
                assert c["secondary"]["p"] == pytest.approx(sps.wilcoxon(nz, method="exact").pvalue)
    other = doc["other_metric"]
    assert other["metric"] == "greedy"
    assert [(c["task"], c["method"]) for c in other["comparisons"]] == \
        [(c["task"], c["method"]) for c in doc["comparisons"]]
    for c in other["comparisons"]:  # the greedy family is the default table's comparisons
        x, y = read_rows(ev, c["task"], c["method"]), read_rows(ev, c["task"], c["reference"])
        assert c["delta"]["estimate"] == pytest.approx((x - y).mean())
    md = (tmp_path / "t.md").read_text()
    assert "## The same comparisons on greedy pass@1" in md
    assert "no test: 2 seeds" in md and "2 seeds: no p-value" in md
    assert "## Δ by horizon H (sampled pass@1)" in md
    with pytest.raises(ValueError, match="primary must be one of"):
        build_table(ev, base="B3", ablation_base="B5", seed=0, n_boot=50, primary="pass@5",
                    out_md=str(tmp_path / "u.md"), out_json=str(tmp_path / "u.json"), fig_dir=None)


def test_learning_curve_band_is_mean_and_t_interval_over_seeds(tmp_path):
    grid = np.array([[1.0, 2.0, np.nan], [3.0, 2.0, 5.0], [2.0, 5.0, np.nan]])  # [runs, steps]
    mean, lo, hi, n = plots._t_band(grid)
    np.testing.assert_allclose(mean, [2.0, 3.0, 5.0])
    assert list(n) == [3, 3, 1]
    half = sps.t.ppf(0.975, 2) * np.std([1.0, 3.0, 2.0], ddof=1) / np.sqrt(3)
    assert hi[0] - mean[0] == pytest.approx(half) and mean[0] - lo[0] == pytest.approx(half)
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # one run: no band
    curves = {f"B3/seed{s}": {"step": np.arange(3), "loss": grid[s]} for s in range(3)}
    paths = plots.plot_learning_curves(curves, key="loss", group_of={k: "B3" for k in curves},
                                       out_stem=tmp_path / "c")
    assert "mean of 3 seeds" in (tmp_path / "c.svg").read_text() and len(paths) == 2
