"""GSM8K and MBPP through the Snakemake rules with the programmatic teacher (issue 4's end-to-end)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cts.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "config_real" / "config.yaml"

pytestmark = pytest.mark.slow
TASKS = ("gsm8k", "mbpp")


def _config() -> dict:
    import yaml
    from snakemake.utils import update_config

    from cts.config import validate_config

    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    update_config(cfg, yaml.safe_load(CONFIG.read_text()))
    return validate_config(cfg)


def test_gsm8k_and_mbpp_reach_the_taxonomy_in_process(tmp_path):
    """The `make test` form of the Snakemake run below (about a quarter of its CPU: one process, no
    Snakemake): each rule's stage function, in the DAG's order, on the same config."""
    from cts.stages.data import data_prepare
    from cts.stages.data import data_split
    from cts.stages.taxonomy import taxonomy_tag
    from cts.stages.teacher import teacher_critique
    from cts.stages.teacher import teacher_rollouts
    from cts.stages.train import train_base

    cfg, quiet = _config(), (lambda *_: None)
    for task in TASKS:
        r = tmp_path / "results"
        data_prepare(task, cfg["data"][task], str(r / f"data/{task}/problems.jsonl"), log=quiet)
        data_split(str(r / f"data/{task}/problems.jsonl"), cfg["splits"], str(r / f"splits/{task}"), log=quiet)
        train_base(task, str(r / f"splits/{task}/train.jsonl"), cfg["model"], cfg["tokenizer"],
                          cfg["base_policy"], str(tmp_path / "ckpt" / task), str(r / f"base/{task}/final.json"),
                          log=quiet)
        teacher_rollouts(str(r / f"base/{task}/final.json"),
                                {s: str(r / f"splits/{task}/{s}.jsonl") for s in cfg["rollouts"]["splits"]},
                                cfg["rollouts"], str(r / f"rollouts/{task}/attempts.jsonl"), log=quiet)
        teacher_critique(str(r / f"rollouts/{task}/attempts.jsonl"), cfg["teacher"],
                                str(r / f"teacher/{task}/quadruples.jsonl"), eval_split=cfg["eval"]["split"],
                                out_skipped=str(r / f"teacher/{task}/skipped.json"), log=quiet)
        taxonomy_tag(str(r / f"teacher/{task}/quadruples.jsonl"), str(r / f"rollouts/{task}/attempts.jsonl"),
                            str(r / f"taxonomy/{task}/tagged.jsonl"), str(r / f"taxonomy/{task}/summary.json"),
                            log=quiet)
    _check_tagged(tmp_path)


@pytest.mark.heavy  # ~120 CPU-s: four JAX jobs; the in-process form above runs in `make test`
def test_gsm8k_and_mbpp_reach_the_taxonomy(tmp_path):
    for name in ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report"):
        os.symlink(REPO / name, tmp_path / name)
    targets = [f"results/taxonomy/{t}/tagged.jsonl" for t in ("gsm8k", "mbpp")]
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets, "--configfile", str(CONFIG)],
                         cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _check_tagged(tmp_path)


def _check_tagged(tmp_path: Path) -> None:
    for task in TASKS:
        rows = read_jsonl(tmp_path / f"results/taxonomy/{task}/tagged.jsonl")
        problems = read_jsonl(tmp_path / f"results/data/{task}/problems.jsonl")
        assert len(problems) == 24
        assert len(rows) == sum(read_json(tmp_path / f"results/splits/{task}/manifest.json")["splits"][s]["n"]
                                for s in ("train", "test"))
        wrong = [r for r in rows if not r["attempt_correct"]]
        assert wrong, task  # a 2-step base policy solves nothing: every attempt is critiqued
        for r in wrong:
            assert r["critique"] and r["revision"] and r["error_type"] != "none"
            assert r["rule_error_type"] is not None and r["teacher_error_type"] is not None
            if r["unlocalised"]:  # no evidence of where: no step, no span, said so, counted
                assert r["error_span"] is None and r["first_error_step"] is None
                assert "could not be located" in r["critique"]
                continue
            s, e = r["error_span"]
            assert 0 <= s <= e <= len(r["attempt"])
        print(f"{task}: {len(wrong)} wrong attempts, {sum(r['unlocalised'] for r in wrong)} unlocalised")
