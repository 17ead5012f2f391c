"""envs/cts.yaml, the conda environment of `snakemake --use-conda`, is the pinned pip set."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_list() -> list:
    env = yaml.safe_load((ROOT / "envs/cts.yaml").read_text(encoding="utf-8"))
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, "envs/cts.yaml: expected one `pip:` list under dependencies"
    return pips[0]


def test_every_conda_dependency_is_a_string():
    """A `- # comment` line parses as a None entry, which breaks `--use-conda`."""
    env = yaml.safe_load((ROOT / "envs/cts.yaml").read_text(encoding="utf-8"))
    top = [d for d in env["dependencies"] if not isinstance(d, dict)]
    bad = [(i, d) for i, d in enumerate(top + _pip_list()) if not isinstance(d, str) or not d.strip()]
    assert not bad, f"envs/cts.yaml: entries that are not package strings: {bad}"


def test_conda_pip_list_is_the_lock():
    lock = [line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    pip = [str(d) for d in _pip_list()]
    assert sorted(pip) == sorted(lock), (f"only in envs/cts.yaml: {sorted(set(pip) - set(lock))}; "
                                         f"only in requirements.lock: {sorted(set(lock) - set(pip))}")
