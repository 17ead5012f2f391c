"""Faults a long run meets (issue 11): a torn checkpoint, a dead run, an LLM reply that stays invalid,
a teacher budget that would starve eval, an empty split."""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Reply  # noqa: E402

from cts.stages.data import data_prepare, data_split  # noqa: E402
from cts.stages.teacher import teacher_critique  # noqa: E402
from cts.io import DataError, read_json, read_jsonl  # noqa: E402
from cts.tasks.schema import Problem  # noqa: E402
from cts.train.checkpoint import CheckpointStore, load_params, save_params, state_dir  # noqa: E402
from cts.train.loop import DeadRunError, _DeadRunMonitor  # noqa: E402


def _truncate_largest_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    return victim


# ----------------------------------------------------------------------------- checkpoints

def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    state = {"w": np.arange(4096, dtype=np.float32), "b": np.ones(3, np.float32)}
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1, state)
    store.save(2, {"w": state["w"] * 2, "b": state["b"] * 2})
    store.close()
    _truncate_largest_file(tmp_path / "ckpt" / "2")
    logged = []
    store = CheckpointStore(tmp_path / "ckpt")
    step, restored = store.restore_latest(state, log=logged.append)
    assert step == 1 and np.array_equal(np.asarray(restored["w"]), state["w"])
    assert len(logged) == 1 and "checkpoint step 2" in logged[0] and "unreadable" in logged[0], logged
    assert store.all_steps() == [1]  # the torn step is gone; the next save writes it afresh
    store.close()


def test_a_truncated_final_checkpoint_says_what_to_delete(tmp_path):
    params = {"w": np.arange(4096, dtype=np.float32)}
    save_params(tmp_path / "final", params)
    _truncate_largest_file(tmp_path / "final")
    with pytest.raises(OSError, match=r"final are unreadable .*delete that directory and the final.json"):
        load_params(tmp_path / "final", params)


def test_state_dir_is_keyed_by_config_and_inputs(tmp_path):
    a, da = state_dir(tmp_path, {"lr": 1e-4}, {"train": "aa"})
    assert state_dir(tmp_path, {"lr": 1e-4}, {"train": "aa"}) == (a, da)
    assert state_dir(tmp_path, {"lr": 2e-4}, {"train": "aa"})[0] != a   # another config
    assert state_dir(tmp_path, {"lr": 1e-4}, {"train": "bb"})[0] != a   # other inputs
    assert os.path.dirname(a) == str(tmp_path) and len(os.path.basename(a)) == 16


# ----------------------------------------------------------------------------- dead runs

def test_the_dead_run_monitor_needs_n_steps_in_a_row():
    mon = _DeadRunMonitor(3, math.log(128), nll=True)
    for step in range(2):
        mon.update(step, {"loss": 1.0, "grad_norm": 0.0}, 1e-3)
    mon.update(2, {"loss": 1.0, "grad_norm": 0.5}, 1e-3)  # the count restarts
    mon.update(3, {"loss": math.log(128), "grad_norm": 0.1}, 1e-3)
    mon.update(4, {"loss": math.log(128) + 1e-4, "grad_norm": 0.1}, 1e-3)
    with pytest.raises(DeadRunError, match=r"loss pinned at ln\(vocab\) = 4.8520 for 3 steps .* at step 5: "
                                           r"loss 4.852.*, lr 0.001, grad norm 0.1"):
        mon.update(5, {"loss": math.log(128), "grad_norm": 0.1}, 1e-3)
    grpo = _DeadRunMonitor(2, math.log(128), nll=False)  # a GRPO loss near ln(V) means nothing
    for step in range(5):
        grpo.update(step, {"loss": math.log(128), "grad_norm": 0.3}, 1e-3)
    off = _DeadRunMonitor(0, math.log(128), nll=True)  # 0 disables the check
    for step in range(5):
        off.update(step, {"loss": 1.0, "grad_norm": 0.0}, 1e-3)


@pytest.mark.slow
def test_a_zero_gradient_run_aborts_with_a_diagnostic(tmp_path):
    """A learning rate of 1e4 collapses the model (issue 11: loss at ln 128, gradient exactly 0);
    the loop stops after dead_run_steps such steps instead of exiting 0."""
    from cts.tasks.synthetic import generate_synth_math
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.loop import LoopConfig, TrainData, train
    from cts.train.runtime import PolicyRuntime

    runtime = PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                                 max_len=256), "char", seed=0, batch_size=4)
    pairs = [(p.prompt, p.reference) for p in generate_synth_math(8, [2], 0)]
    loop = LoopConfig(steps=12, prompts_per_step=4, learning_rate=1e4, checkpoint_every=100, dead_run_steps=3)
    lines = []
    with pytest.raises(DeadRunError, match=r"dead run: .* for 3 steps in a row .* at step \d+: loss .*, lr .*, grad norm"):
        train(runtime=runtime, init_params=runtime.init_params, ref_params=None, method=SFTMethod(SFTConfig(), runtime),
              data=TrainData(sft_pairs=pairs), loop=loop, ckpt_dir=str(tmp_path / "ckpt"), log=lines.append)
    progress = [ln for ln in lines if ln.startswith("step ")]
    assert progress and all(k in progress[0] for k in ("step 1/12", "loss", "s/step", "lr", "ETA")), lines


# ----------------------------------------------------------------------------- LLM teacher faults

MATH_REPLY = {"first_error_step": 1, "error_type": "arithmetic_slip",
              "critique": "Step 1 adds 3 + 8 but writes 12; it is 11.",
              "revision": "Ann buys 4 * 2 = 8 apples.\nTotal: 3 + 8 = 11\n#### 11"}
ATTEMPT = "Ann buys 4 * 2 = 8 apples.\n  Total: 3 + 8 = 12\n\n#### 12\n"


def _attempts(path: Path, splits: list[str]) -> None:
    rows = []
    for i, split in enumerate(splits):
        p = Problem(id=f"gsm8k-{split}-{i:05d}", task="gsm8k", kind="math", split=split,
                    prompt=f"Ann has 3 apples and buys 4 bags of 2. How many apples? (variant {i})",
                    reference="4 * 2 = 8\n3 + 8 = 11\n#### 11", answer="11", horizon=2)
        rows.append(json.dumps({"problem": p.to_row(), "attempt": ATTEMPT}))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def llm_env(monkeypatch):
    for var in ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "CTS_ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-XXXX-dummy-7f3a91")
    return monkeypatch


TEACHER = {"kind": "anthropic", "model": "claude-haiku-4-5", "max_reasks": 1, "on_invalid": "skip",
           "retries": 0, "timeout_s": 5}


def test_an_invalid_reply_is_skipped_not_cached_and_a_fixed_server_is_asked_again(tmp_path, llm_env):
    _attempts(tmp_path / "attempts.jsonl", ["test", "train", "train"])
    out, skipped, cache = tmp_path / "q.jsonl", tmp_path / "skipped.json", tmp_path / "cache"
    logged = []
    bad = json.dumps({**MATH_REPLY, "error_type": "wrong_algorithm"})  # a code label on math: invalid
    with FakeLLMServer(default=Reply(bad)) as srv:
        llm_env.setenv("CTS_ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        teacher_critique(str(tmp_path / "attempts.jsonl"), TEACHER, str(out), cache_dir=str(cache),
                                log=logged.append, out_skipped=str(skipped))
        assert srv.n_requests == 3 * 2  # each attempt: the ask and one re-ask
    assert read_json(skipped)["n_skipped"] == 3 and read_jsonl(out) == []
    assert any("3 attempt(s) skipped" in m for m in logged), logged
    assert not list(cache.glob("*/*.json"))  # nothing cached as an answer
    failed = [r for r in read_jsonl(cache / "cost.jsonl") if r.get("failed")]
    assert len(failed) == 3 and failed[0]["failed"] == "invalid reply"

    with FakeLLMServer(default=Reply(json.dumps(MATH_REPLY))) as srv:  # the server is fixed
        llm_env.setenv("CTS_ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        teacher_critique(str(tmp_path / "attempts.jsonl"), TEACHER, str(out), cache_dir=str(cache),
                                log=logged.append, out_skipped=str(skipped))
        assert srv.n_requests == 3  # asked again, not replayed from the cache
    assert read_json(skipped)["n_skipped"] == 0 and len(read_jsonl(out)) == 3


def test_on_invalid_fail_stops_the_job(tmp_path, llm_env):
    from cts.teachers.llm import InvalidReplyError

    _attempts(tmp_path / "attempts.jsonl", ["train"])
    bad = json.dumps({**MATH_REPLY, "error_type": "wrong_algorithm"})
    with FakeLLMServer(default=Reply(bad)) as srv:
        llm_env.setenv("CTS_ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        with pytest.raises(InvalidReplyError, match="gsm8k-train-00000.*no valid reply after 1 re-ask"):
            teacher_critique(str(tmp_path / "attempts.jsonl"), {**TEACHER, "on_invalid": "fail"},
                                    str(tmp_path / "q.jsonl"), cache_dir=str(tmp_path / "cache"))


def test_teacher_limit_spends_on_train_first_and_refuses_to_starve_eval(tmp_path, llm_env):
    _attempts(tmp_path / "attempts.jsonl", ["test", "test", "train", "train", "train"])
    with FakeLLMServer(default=Reply(json.dumps(MATH_REPLY))) as srv:
        llm_env.setenv("CTS_ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        with pytest.raises(DataError, match=r"teacher.limit 4 leaves 1 of the 2 test attempts without a critique"):
            teacher_critique(str(tmp_path / "attempts.jsonl"), {**TEACHER, "limit": 4},
                                    str(tmp_path / "q.jsonl"), cache_dir=str(tmp_path / "cache"))
        assert srv.n_requests == 0  # refused before any request
        teacher_critique(str(tmp_path / "attempts.jsonl"), {**TEACHER, "limit": 5},
                                str(tmp_path / "q.jsonl"), cache_dir=str(tmp_path / "cache"))
    rows = read_jsonl(tmp_path / "q.jsonl")
    assert [r["split"] for r in rows] == ["train", "train", "train", "test", "test"]


# ----------------------------------------------------------------------------- data

def test_an_empty_split_fails_in_data_split_naming_task_and_split(tmp_path):
    data_prepare("synth_math", {"loader": "synth_math", "n_problems": 12, "horizons": [2], "max_operand": 5,
                                       "max_value": 20, "seed": 0}, str(tmp_path / "p.jsonl"))
    with pytest.raises(DataError, match=r"synth_math: the test split is empty \(12 problems"):
        data_split(str(tmp_path / "p.jsonl"), {"fractions": {"train": 1.0, "dev": 0.0, "test": 0.0},
                                                      "seed": 0}, str(tmp_path / "splits"),
                          required_splits=("train", "test"))


def test_teacher_skips_are_noted_in_the_table(tmp_path):
    from tests.test_stats_table import make_eval_files

    from cts.io import atomic_write_json
    from cts.stats.teacher_quality import teacher_skips_section
    from cts.stats.table import build_table

    manifest = tmp_path / "results/splits/gsm8k/manifest.json"
    atomic_write_json(tmp_path / "results/teacher/gsm8k/skipped.json", {"n_skipped": 3, "skipped": ["a", "b", "c"]})
    ev = make_eval_files(tmp_path / "evals", methods={"B3": 0.0, "B5": 1.0}, tasks=("gsm8k",), seeds=(0, 1))
    doc = build_table(ev, base="B3", ablation_base=None, seed=0, n_boot=50,
                      out_md=str(tmp_path / "table.md"), out_json=str(tmp_path / "table.json"),
                      extra_sections=[teacher_skips_section({"gsm8k": str(manifest)}, log=lambda m: None)])
    text = (tmp_path / "table.md").read_text()
    assert text.startswith("# Results") and "3 attempt(s) of gsm8k" in text and "on_invalid: skip" in text
    assert doc["extra"]["teacher_skips"] == {"gsm8k": 3}
    assert read_json(tmp_path / "table.json")["extra"]["teacher_skips"] == {"gsm8k": 3}


def test_a_cells_state_changes_with_its_config_and_with_each_input(tmp_path):
    """The small form of tests/test_reruns.py: the directory a cell resumes from is named by its
    resolved config and the content of its inputs, so an edited method block or a retrained base
    never finds the old state."""
    from cts.io import atomic_write_json
    from cts.train.artifacts import base_state, cell_state

    (tmp_path / "train.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "tagged.jsonl").write_text('{"q": 1}\n')
    atomic_write_json(tmp_path / "base.json", {"params_sha256": "a" * 64})
    cell = {"task": "t", "method": "B3", "seed": 0, "method_config": {"verifier_weight": 0.5}}
    args = (str(tmp_path / "base.json"), str(tmp_path / "train.jsonl"), str(tmp_path / "tagged.jsonl"), "ck")
    d0, digest, inputs = cell_state(cell, *args)
    assert d0 == f"ck/{digest[:16]}" and inputs["base_params"] == "a" * 64
    assert cell_state(cell, *args)[0] == d0
    edited = {**cell, "method_config": {"verifier_weight": 0.25}}
    assert cell_state(edited, *args)[0] != d0
    atomic_write_json(tmp_path / "base.json", {"params_sha256": "b" * 64})  # the base retrained
    assert cell_state(cell, *args)[0] != d0
    b0 = base_state("t", str(tmp_path / "train.jsonl"), {"emb_dim": 8}, "char", {"learning_rate": 3e-3}, "ck")[0]
    assert base_state("t", str(tmp_path / "train.jsonl"), {"emb_dim": 8}, "char", {"learning_rate": 2e-3}, "ck")[0] != b0
    (tmp_path / "train.jsonl").write_text('{"id": 2}\n')  # the data changed
    assert base_state("t", str(tmp_path / "train.jsonl"), {"emb_dim": 8}, "char", {"learning_rate": 3e-3}, "ck")[0] != b0
