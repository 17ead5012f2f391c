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


def test_gsm8k_and_mbpp_reach_the_taxonomy(tmp_path):
    for name in ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report"):
        os.symlink(REPO / name, tmp_path / name)
    targets = [f"results/taxonomy/{t}/tagged.jsonl" for t in ("gsm8k", "mbpp")]
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets, "--configfile", str(CONFIG)],
                         cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for task in ("gsm8k", "mbpp"):
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
