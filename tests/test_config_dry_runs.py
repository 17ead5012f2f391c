"""Every shipped configuration builds its DAG: `snakemake -n` on the embedded default, each file in
config/ and each test config (tests/config_*/config.yaml), in a scratch directory holding links to
the workflow. Data files a config names but the repository does not ship (`data.apps.path`: APPS
is the user's file) get empty stand-ins there, since they are declared inputs of data_prepare; the
sweep definitions in config/sweeps/ are not workflow configs. This runs the schema validation and check_consistency (cts.config) of each, and
resolves every rule's inputs and params, so a config that drifts from the schema or the checks
(e.g. `ablation_tasks` naming a task the config does not run) fails here, not on a TPU slice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_config.yaml", "schemas", "cts", "envs", "report", "scripts"]
CONFIGS = [None, *sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml")),
           *sorted(str(p.relative_to(REPO)) for p in REPO.glob("tests/config_*/config.yaml"))]


def test_every_config_is_listed():
    assert {"config/paper.yaml", "config/smollm2_gsm8k.yaml", "tests/config_tiny/config.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda c: c or "workflow_config.yaml")
def test_config_dry_runs(configfile, tmp_path):
    for name in WORKFLOW_FILES:
        if (REPO / name).exists():
            os.symlink(REPO / name, tmp_path / name)
    (tmp_path / "data").mkdir()
    for entry in (REPO / "data").iterdir():
        os.symlink(entry, tmp_path / "data" / entry.name)
    data_cfg = yaml.safe_load((REPO / configfile).read_text()).get("data", {}) if configfile else {}
    for task_cfg in data_cfg.values():
        user_file = task_cfg.get("path")
        # never write through a link into the repository: only a folder of the scratch directory
        if user_file and not (tmp_path / user_file).exists() and REPO not in (tmp_path / user_file).resolve().parents:
            (tmp_path / user_file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / user_file).touch()
    args = ["--configfile", str(REPO / configfile)] if configfile else []
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--dry-run", *args], cwd=tmp_path,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "total" in log or "Nothing to be done" in log, log[-3000:]
