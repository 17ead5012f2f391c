"""Every bad config stops while Snakemake builds the DAG: before any job, in seconds, naming the key
and the value (issue 11). Each case is a real `snakemake all` in an empty working directory; the
message must name the key, no job may start (no results/, no logs/), and it must take < 10 CPU-s.
Also: `1e-4` in YAML is a number, and `--directory` elsewhere gives the same cell configs."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cts.config import ConfigError, check_consistency, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "config_pipeline" / "config.yaml"
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report")
WITH_B5 = "methods: [B2, B3, B5]\n"

BAD = {  # name: (override yaml, what the message must contain)
    "unfair budget": ("methods_config:\n  B2: {loss: grpo, reward: outcome, train_overrides: {steps: 3}}\n",
                      "train.steps differs on synth_math: B2 3, B3 2"),
    "flip to an unknown kind": (WITH_B5 + "ablations: [A2]\nablation_flips:\n  A2: {cts.alignment.kind: l3}\n",
                                "ablation_flips.A2: cts.alignment.kind = \"l3\" is not valid "
                                "(allowed: sinkhorn, soft_dtw, l2)"),
    "negative λ flip": (WITH_B5 + "ablations: [A1]\nablation_flips:\n  A1: {cts.lam_align: -0.5}\n",
                        "ablation_flips.A1: cts.lam_align = -0.5 is not valid (allowed: >= 0)"),
    # merged onto workflow_config.yaml's A1 flip, this becomes a two-key flip
    "second flip key": (WITH_B5 + "ablations: [A1]\nablation_flips:\n  A1: {cts.lam_algn: 0.0}\n",
                        "ablation_flips.A1: value {\"cts.lam_algn\": 0.0, \"cts.lam_align\": 0.0} is not valid "
                        "(at most 1 key(s))"),
    "empty train split": ("splits:\n  fractions: {train: 0.0, dev: 0.1, test: 0.9}\n",
                          "data.synth_math: split 'train' would be empty"),
    "empty test split": ("splits:\n  fractions: {train: 0.95, dev: 0.05, test: 0.0}\n",
                         "data.synth_math: split 'test' would be empty"),
    "teacher.limit below eval": ("teacher: {kind: anthropic, model: claude-haiku-4-5, limit: 5}\n",
                                 "teacher.limit 5 would leave test attempts of synth_math without a critique"),
    "unknown key": ("train: {stepz: 3}\n", "train: unknown key(s) 'stepz' (allowed keys: "),
    "enum value": ("cts:\n  alignment: {kind: l3}\n",
                   "cts.alignment.kind: value \"l3\" is not valid (allowed: sinkhorn, soft_dtw, l2)"),
    "string where a number goes": ("train: {learning_rate: fast}\n",
                                   "train.learning_rate: value \"fast\" is not valid (expected type: number)"),
}


def _workdir(tmp_path: Path) -> Path:
    wd = tmp_path / "wd"
    wd.mkdir()
    for name in WORKFLOW_FILES:
        os.symlink(REPO / name, wd / name)
    return wd


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _snakemake(wd: Path, *args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    """The run and its CPU-seconds (Snakemake and its jobs: on an idle machine about its wall time,
    and unlike wall time the same on a machine other jobs load)."""
    c0 = _cpu_children()
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=wd,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=timeout)
    return out, _cpu_children() - c0


# Every case reaches Snakemake through the same two calls (rules/common.smk: validate_config, then
# check_consistency), and test_each_bad_config_fails_validation_naming_the_key checks every message
# through them; `make test` runs one Snakemake case per call (plus the fairness check), `make
# test-heavy` all of them (~2 CPU-s each).
IN_MAKE_TEST = {"unknown key", "flip to an unknown kind", "unfair budget"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in IN_MAKE_TEST else pytest.mark.heavy)
                                  for n in sorted(BAD)])
def test_a_bad_config_stops_before_any_job_naming_the_key(name, tmp_path):
    override, expected = BAD[name]
    wd = _workdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(override)
    out, seconds = _snakemake(wd, "all", "--configfile", str(CONFIG), str(tmp_path / "bad.yaml"))
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert expected in text, text[-3000:]
    assert "$schema" not in text and "properties:" not in text  # no schema dump
    assert not (wd / "results").exists() and not (wd / "logs").exists()  # no job started
    assert seconds < 10, f"{name}: {seconds:.1f} CPU-s to the error"
    print(f"\n[{name}] {seconds:.1f} s: {[ln for ln in text.splitlines() if expected[:20] in ln][0].strip()}")


def _config(*overrides: str) -> dict:
    from snakemake.utils import update_config

    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for text in (CONFIG.read_text(), *overrides):
        update_config(cfg, yaml.safe_load(text))
    return cfg


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_config_fails_validation_naming_the_key(name):
    """The same cases without Snakemake (fast)."""
    override, expected = BAD[name]
    cfg = _config(override)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
        check_consistency(cfg)
    assert expected in str(info.value)


def test_a_flip_of_no_key_names_the_ablation():
    cfg = _config(WITH_B5 + "ablations: [A1]\n")
    cfg["ablation_flips"]["A1"] = {"cts.lam_algn": 0.0}
    with pytest.raises(ConfigError, match=r"ablation_flips.A1: 'cts.lam_algn' is not a config key"):
        check_consistency(cfg)


def test_exponent_without_a_dot_is_a_number():
    """PyYAML reads `1e-4` as the string '1e-4'; the schema says number, so it becomes 1e-4."""
    cfg = _config("train: {learning_rate: 1e-4}\nablations: [A1]\nmethods: [B2, B3, B5]\n"
                  "ablation_flips:\n  A1: {cts.lam_align: 1e-2}\n")
    assert cfg["train"]["learning_rate"] == "1e-4"
    validate_config(cfg)
    check_consistency(cfg)
    assert cfg["train"]["learning_rate"] == 1e-4 and isinstance(cfg["train"]["learning_rate"], float)
    assert cfg["ablation_flips"]["A1"]["cts.lam_align"] == 0.01


@pytest.mark.slow
def test_directory_elsewhere_gives_the_same_cell_configs(tmp_path):
    """`snakemake -s <repo>/Snakefile --directory X` loads the workflow's own workflow_config.yaml
    (before issue 11 it silently fell back to the schema defaults: another experiment)."""
    wd = _workdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = "results/fingerprint/fingerprints.json"
    a, _ = _snakemake(wd, target, "--configfile", str(CONFIG))
    b, _ = _snakemake(REPO, "-s", str(REPO / "Snakefile"), "--directory", str(elsewhere), target,
                      "--configfile", str(CONFIG))
    assert a.returncode == 0 and b.returncode == 0, (a.stderr + b.stderr)[-3000:]
    fa = json.loads((wd / target).read_text())
    fb = json.loads((elsewhere / target).read_text())
    assert fa == fb
    assert fa["synth_math/B3/seed0"]["fields"]["budget"]["learning_rate"] == 1e-4  # workflow_config.yaml's


@pytest.mark.slow
def test_editing_a_data_file_reruns_what_depends_on_it(tmp_path):
    """Dataset files are declared inputs of data_prepare: `data.<task>.path` and the vendored data/."""
    wd = _workdir(tmp_path)
    mbpp = tmp_path / "mbpp_small.jsonl"
    mbpp.write_text("".join((REPO / "data/mbpp/mbpp.jsonl").read_text().splitlines(keepends=True)[:30]))
    override = tmp_path / "mbpp.yaml"
    override.write_text(f"tasks: [mbpp]\ndata:\n  mbpp: {{loader: mbpp, path: {mbpp}, limit: 24}}\nbase_policy: {{error_rate: 0.0}}\n")
    target = "results/splits/mbpp/manifest.json"
    args = (target, "--configfile", str(CONFIG), str(override))
    out, _ = _snakemake(wd, *args)
    assert out.returncode == 0, out.stderr[-3000:]

    def planned() -> str:
        out, _ = _snakemake(wd, "--dry-run", *args)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout + out.stderr

    assert "Nothing to be done" in planned()
    rows = mbpp.read_text().splitlines(keepends=True)
    row = json.loads(rows[0])
    row["text"] += " Return an int."
    mbpp.write_text(json.dumps(row) + "\n" + "".join(rows[1:]))
    plan = planned()
    assert "rule data_prepare:" in plan and "rule data_split:" in plan and str(mbpp) in plan, plan[-3000:]

    gsm = tmp_path / "gsm.yaml"  # the vendored GSM8K files are inputs too
    gsm.write_text("tasks: [gsm8k]\ndata:\n  gsm8k: {loader: gsm8k, source: repo, limit: 24}\nbase_policy: {error_rate: 0.0}\n")
    out, _ = _snakemake(wd, "--dry-run", "results/data/gsm8k/problems.jsonl", "--configfile", str(CONFIG), str(gsm))
    text = out.stdout + out.stderr
    assert out.returncode == 0 and str(REPO / "data/gsm8k/train.jsonl") in text and \
        str(REPO / "data/gsm8k/test.jsonl") in text, text[-3000:]


def test_a_method_block_must_write_out_what_it_uses():
    """No default steps in for a method's hyperparameter: a verifier reward without its weight fails."""
    cfg = _config()
    cfg["methods_config"]["B3"] = {"loss": "grpo", "reward": "verifier"}
    with pytest.raises(ConfigError, match=r"methods_config.B3: 'verifier_weight' is a required property"):
        validate_config(cfg)
