"""A training job killed with SIGKILL resumes from its last Orbax checkpoint and ends with the same
metrics and parameters as an uninterrupted run (which also shows same seed → same run on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cts.stages.data import data_prepare, data_split
from cts.stages.taxonomy import taxonomy_tag
from cts.stages.teacher import teacher_critique, teacher_rollouts
from cts.stages.train import train_base
from cts.io import read_json

pytestmark = pytest.mark.slow

MODEL = {"emb_dim": 32, "num_heads": 2, "num_kv_heads": 2, "head_dim": 16, "mlp_dim": 64,
         "num_layers": 1, "max_len": 256}
CELL = {
    "task": "synth_math", "method": "B3", "seed": 0, "tokenizer": "char", "model": MODEL,
    "method_config": {"loss": "grpo", "reward": "verifier", "verifier_weight": 0.5},
    "grpo": {"beta": 0.04, "epsilon_low": 0.2, "epsilon_high": 0.28, "kl_estimator": "k3",
             "loss_agg": "sequence-mean-token-mean"},
    "train": {"steps": 6, "prompts_per_step": 2, "group_size": 2, "learning_rate": 3e-3,
              "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0, "max_new_tokens": 24,
              "temperature": 1.0, "top_p": 1.0, "checkpoint_every": 2},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    data_prepare("synth_math", {"loader": "synth_math", "n_problems": 30, "horizons": [2, 3],
                                       "max_operand": 5, "seed": 3}, str(d / "problems.jsonl"))
    data_split(str(d / "problems.jsonl"), {"fractions": {"train": 0.6, "dev": 0.1, "test": 0.3},
                                                  "seed": 0}, str(d / "splits"))
    train_base("synth_math", str(d / "splits/train.jsonl"), MODEL, "char",
                      {"steps": 2, "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 0,
                       "error_rate": 0.3, "seed": 0}, str(d / "ckpt/base"), str(d / "base.json"))
    teacher_rollouts(str(d / "base.json"), {"train": str(d / "splits/train.jsonl")},
                            {"max_new_tokens": 24, "batch_size": 32}, str(d / "attempts.jsonl"))
    teacher_critique(str(d / "attempts.jsonl"), {"kind": "programmatic"}, str(d / "quads.jsonl"))
    taxonomy_tag(str(d / "quads.jsonl"), str(d / "attempts.jsonl"), str(d / "tagged.jsonl"),
                        str(d / "taxonomy.json"))
    return d


def _job(d: Path, name: str) -> list[str]:
    code = ("import json, sys; from cts.stages.train import train_cell; "
            f"train_cell(json.loads(sys.argv[1]), '{d}/base.json', '{d}/splits/train.jsonl', "
            f"'{d}/tagged.jsonl', '{d}/ckpt/{name}', '{d}/{name}.json', '{d}/{name}.metrics.jsonl')")
    return [sys.executable, "-c", code, json.dumps(CELL)]


def _deterministic(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_sigkill_then_rerun_equals_uninterrupted_run(inputs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # the uninterrupted run alongside the one to kill: two processes, mostly single-threaded imports
    # and compiles, overlap on 2 cores (each job's numerics do not depend on the other's load)
    straight = subprocess.Popen(_job(inputs, "straight"), env=env)
    proc = subprocess.Popen(_job(inputs, "killed"), env=env)
    ckpt = inputs / "ckpt" / "killed"  # states live in <root>/<state digest>/ (config + inputs)
    deadline = time.time() + 600
    while not list(ckpt.glob("*/2")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (inputs / "killed.json").exists()  # no final output from a killed job

    subprocess.run(_job(inputs, "killed"), env=env, check=True, timeout=600)
    assert straight.wait(timeout=600) == 0
    (state,) = ckpt.glob("*/metrics.live.jsonl")  # the rerun resumed in the same state directory
    log = state.read_text()
    assert len(log.splitlines()) == CELL["train"]["steps"]
    straight, resumed = read_json(inputs / "straight.json"), read_json(inputs / "killed.json")
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert _deterministic(inputs / "killed.metrics.jsonl") == _deterministic(inputs / "straight.metrics.jsonl")
