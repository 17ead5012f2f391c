"""A rerun after a config edit reflects the new config: the README's incrementality example, for real.

One real run of the pipeline config, then (1) B3's `verifier_weight` changes → only the B3 cell
retrains, from step 0 (new parameters, new metrics), and its eval; (2) a `base_policy` key changes →
the base policy and every cell after it retrain. Before issue 11 the loop "resumed" from the old
run's final checkpoint, trained 0 steps and wrote the old parameters under the new config.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pipeline import jobs_in_log

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "config_pipeline" / "config.yaml"
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report")

pytestmark = pytest.mark.heavy  # three pipeline runs: ~10 min on 2 cores (the small form: tests/test_faults.py)

# config_pipeline's 2-step base writes random characters, so every GRPO reward is 0, every gradient
# exactly 0 and a cell's parameters equal the base's whatever verifier_weight is: nothing to tell a
# retrained cell from a stale one. 300 base steps give attempts with verified steps (rewards vary).
LEARNS = ("base_policy: {steps: 300}\n"
          "train: {steps: 3, prompts_per_step: 4, group_size: 4, learning_rate: 0.001, warmup_steps: 0}\n")


def _run(workdir: Path, *configfiles: Path) -> list[tuple[str, str]]:
    """Run `all`; return the (rule, wildcards) of every job it executed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    learns = workdir / "learns.yaml"
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all", "--configfile",
                          str(configfiles[0]), str(learns), *map(str, configfiles[1:])], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=1800)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-5000:]
    return jobs_in_log(text)


def _state(workdir: Path) -> dict:
    """params digest, metrics bytes and log of the base and each cell."""
    out = {}
    for name, final in (("base", "results/base/synth_math/final.json"),
                        ("B2", "results/train/synth_math/B2/seed0/final.json"),
                        ("B3", "results/train/synth_math/B3/seed0/final.json")):
        f = json.loads((workdir / final).read_text())
        metrics = workdir / Path(final).parent / "metrics.jsonl"
        out[name] = {"sha": f["params_sha256"], "final": (workdir / final).read_bytes(),
                     "metrics": metrics.read_bytes() if name != "base" else b"",
                     "steps": [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
                     if name != "base" else None}
    return out


def _log(workdir: Path, method: str) -> str:
    return (workdir / f"logs/train/train_cell/synth_math/{method}/seed0.log").read_text()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("reruns")
    for name in WORKFLOW_FILES:
        os.symlink(REPO / name, wd / name)
    (wd / "learns.yaml").write_text(LEARNS)
    _run(wd, CONFIG)
    return wd


def test_a_method_edit_retrains_that_method_from_step_0_and_nothing_else(workdir, tmp_path):
    before = _state(workdir)
    override = tmp_path / "b3.yaml"
    override.write_text("methods_config:\n  B3: {loss: grpo, reward: verifier, verifier_weight: 0.25}\n")
    jobs = _run(workdir, CONFIG, override)
    after = _state(workdir)
    cells = {(r, w) for r, w in jobs if r in ("train_base", "train_cell", "eval_cell")}
    assert cells == {("train_cell", "task=synth_math, method=B3, seed=0"),
                     ("eval_cell", "task=synth_math, method=B3, seed=0")}, jobs
    assert after["B3"]["sha"] != before["B3"]["sha"]          # new parameters
    assert after["B3"]["metrics"] != before["B3"]["metrics"]  # new metrics (the reward changed)
    assert after["B3"]["steps"] == list(range(len(after["B3"]["steps"]))) and after["B3"]["steps"]
    new_log = _log(workdir, "B3")  # Snakemake starts a rerun job's log afresh
    assert "resumed from checkpoint" not in new_log and "step 1/3" in new_log, new_log
    assert after["B2"]["final"] == before["B2"]["final"] and after["base"]["final"] == before["base"]["final"]
    assert json.loads(after["B3"]["final"])["config"]["method_config"]["verifier_weight"] == 0.25


def test_a_base_policy_edit_retrains_the_base_and_everything_after_it(workdir, tmp_path):
    b3 = tmp_path / "b3.yaml"  # keep the previous test's edit, so only base_policy changes here
    b3.write_text("methods_config:\n  B3: {loss: grpo, reward: verifier, verifier_weight: 0.25}\n")
    before = _state(workdir)
    override = tmp_path / "base.yaml"
    override.write_text("base_policy: {learning_rate: 0.002}\n")
    jobs = _run(workdir, CONFIG, b3, override)
    after = _state(workdir)
    ran = {(r, w) for r, w in jobs}
    assert ("train_base", "task=synth_math") in ran, jobs
    for m in ("B2", "B3"):
        assert ("train_cell", f"task=synth_math, method={m}, seed=0") in ran, jobs
        assert ("eval_cell", f"task=synth_math, method={m}, seed=0") in ran, jobs
        assert after[m]["sha"] != before[m]["sha"], m
        assert after[m]["steps"] == list(range(len(after[m]["steps"]))), m
    assert after["base"]["sha"] != before["base"]["sha"]
    base = json.loads(after["base"]["final"])
    assert base["config"]["base_policy"]["learning_rate"] == 0.002
    assert not os.path.isabs(base["params_dir"])  # a moved project reads its own weights


def test_clean_checkpoints_keeps_only_the_states_of_the_current_config(workdir, tmp_path):
    """After the two edits above, each job has older state directories; `make clean-checkpoints`
    (the clean_checkpoints rule) removes them and keeps the ones the current finals point at."""
    b3, base = tmp_path / "b3.yaml", tmp_path / "base.yaml"
    b3.write_text("methods_config:\n  B3: {loss: grpo, reward: verifier, verifier_weight: 0.25}\n")
    base.write_text("base_policy: {learning_rate: 0.002}\n")
    root = workdir / "work" / "checkpoints" / "synth_math"
    states = {job: sorted(p.name for p in (root / job).iterdir()) for job in ("base", "B2/seed0", "B3/seed0")}
    assert len(states["base"]) == 2 and len(states["B3/seed0"]) == 3, states
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "clean_checkpoints", "--configfile",
                          str(CONFIG), str(workdir / "learns.yaml"), str(b3), str(base)], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for job, final in (("base", "results/base/synth_math/final.json"),
                       ("B2/seed0", "results/train/synth_math/B2/seed0/final.json"),
                       ("B3/seed0", "results/train/synth_math/B3/seed0/final.json")):
        kept = [p.name for p in (root / job).iterdir()]
        current = Path(json.loads((workdir / final).read_text())["params_dir"]).parent.name
        assert kept == [current], (job, kept, current)
    assert "removed 4" in (workdir / "logs/train/clean_checkpoints/all.log").read_text()
