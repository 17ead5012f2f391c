"""Hugging Face checkpoints as the base policy (`base_policy.pretrained: {format: hf, path, model}`).

Offline parity: tiny random checkpoints of each supported family are written here in the hub
layout (tests/oracles/hf_tiny.py: config.json, model.safetensors, tokenizer files), loaded through
the pipeline's own path (PolicyRuntime with `tokenizer: hf:<dir>` → pretrained_params → MaxText's
PARAM_MAPPING/HOOK_FNS) and compared with an independent NumPy forward written from the
transformers definitions (tests/oracles/hf_reference.py), logit for logit and greedy token for token
through the KV-cached sampler.

Tolerance. The known gap (Qwen3, 1.6e-3 relative) is MaxText's tied output head: in MaxText 0.2.5
`attend_on_embedding` multiplies by `jnp.asarray(table, bfloat16)`, so every logit of a tied
model carries the table's bfloat16 rounding (relative error up to 2^-9 ≈ 2e-3 per weight).
Rounding the reference's head to bfloat16 the same way removes it: what is left is float32
arithmetic (measured ≤ 2e-6 of the largest logit for 2-layer models), so RTOL = 2e-5 relative to
the largest |logit| holds with a 10× margin, while any conversion error (a missing bias or q/k
norm, the wrong rotary layout, an unscaled query) moves logits by ≥ 1e-2. An untied policy
(tied_embeddings: false, the head a float32 copy) matches the unrounded reference at RTOL.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from cts.config import ConfigError, check_consistency
from tests.oracles import hf_reference as R
from tests.oracles import hf_tiny

REPO = Path(__file__).resolve().parents[1]
RTOL = 2e-5
FAMILIES = sorted(hf_tiny.FAMILIES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{family: (dir, config.json dict, tensors)} of tiny random checkpoints (float32 storage)."""
    root = tmp_path_factory.mktemp("hf")
    return {f: (root / f, *hf_tiny.write_checkpoint(root / f, f, seed=i)) for i, f in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """family → (runtime, params, provenance) of the default model block, built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            path, hf, _ = checkpoints[family]
            cache[family] = _runtime_and_params(path, hf, family)
        return cache[family]

    return get


def _spec(path, family):
    return {"format": "hf", "path": str(path), "model": hf_tiny.FAMILIES[family][2]}


def _runtime_and_params(path, hf, family, **model_overrides):
    from cts.model.pretrained import pretrained_params
    from cts.train.runtime import PolicyRuntime

    model = {**hf_tiny.model_block(hf), **model_overrides}
    runtime = PolicyRuntime(model, f"hf:{path}", seed=0, batch_size=2)
    params, provenance = pretrained_params(_spec(path, family), runtime, log=lambda *_: None)
    return runtime, params, provenance


def _logits(runtime, params, ids):
    import jax

    ids = np.asarray(ids, np.int32)[None]
    return np.asarray(jax.jit(runtime.forward)(params, ids, np.ones_like(ids))[0][0], np.float64)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


PROMPTS = ["Natalia sold clips to 48 of her friends in April. How many clips?", "What is 2+3?"]


# ----------------------------------------------------------------------------------------------
# Parity with the NumPy reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_logits_equal_the_reference(checkpoints, loaded, family):
    path, hf, tensors = checkpoints[family]
    runtime, params, provenance = loaded(family)
    assert provenance["model"] == hf_tiny.FAMILIES[family][2] and len(provenance["config_sha256"]) == 64
    ids = runtime.tok.encode_prompt(PROMPTS[0])
    got = _logits(runtime, params, ids)
    tied = hf["tie_word_embeddings"]
    ref = R.forward(tensors, hf, ids, head_bf16=tied)
    assert _rel(got, ref) < RTOL, (family, _rel(got, ref))
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    if tied:  # the whole known gap is the bfloat16 head: against the exact head it reappears
        gap = _rel(got, R.forward(tensors, hf, ids))
        assert 2e-4 < gap < 2 ** -8, gap
    if hf.get("rope_scaling"):  # the Llama 3.1 scaling is applied (and visible at this length)
        assert _rel(got, R.forward(tensors, {**hf, "rope_scaling": None}, ids)) > 1e-3


@pytest.mark.parametrize("family", ["qwen3", "qwen2.5"])
def test_untied_policy_from_tied_checkpoint_is_float32_exact(checkpoints, family):
    path, hf, tensors = checkpoints[family]
    runtime, params, _ = _runtime_and_params(path, hf, family, tied_embeddings=False)
    ids = runtime.tok.encode_prompt(PROMPTS[1])
    assert _rel(_logits(runtime, params, ids), R.forward(tensors, hf, ids)) < RTOL


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_kv_cached_generation_equals_reference(checkpoints, loaded, family):
    import jax

    path, hf, tensors = checkpoints[family]
    runtime, params, _ = loaded(family)
    n = 12
    texts, ids, _ = runtime.generate(params, PROMPTS, jax.random.key(0), max_new_tokens=n, batch_size=2,
                                     greedy=True, return_ids=True)
    for prompt, got in zip(PROMPTS, ids):
        want = R.greedy(tensors, hf, runtime.tok.encode_prompt(prompt), n, stop=runtime.tok.eos_id,
                        head_bf16=hf["tie_word_embeddings"])
        if want and want[-1] == runtime.tok.eos_id:
            want = want[:-1]
        assert got == want, (family, got, want)
        assert len(set(want)) > 2  # a real continuation, not one repeated token


def test_bfloat16_checkpoint_and_bfloat16_weights(tmp_path):
    """A bf16-stored checkpoint: into float32 weights it is exact (the llama query's 1/sqrt(d) is
    applied in float32); with model.weight_dtype: bfloat16 the parameters are bf16 and the
    embedding is bit-identical to the file."""
    import ml_dtypes
    from flax import nnx

    hf, tensors = hf_tiny.write_checkpoint(tmp_path, "llama3", dtype="bfloat16")
    runtime, params, _ = _runtime_and_params(tmp_path, hf, "llama3")
    ids = runtime.tok.encode_prompt(PROMPTS[1])
    assert _rel(_logits(runtime, params, ids), R.forward(tensors, hf, ids)) < RTOL
    runtime16, params16, _ = _runtime_and_params(tmp_path, hf, "llama3", weight_dtype="bfloat16")
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(params16)}
    assert dtypes == {np.dtype(ml_dtypes.bfloat16)}
    emb = np.asarray(params16["token_embedder"]["embedding"].get_value())
    assert (emb.view(np.uint16) == tensors["model.embed_tokens.weight"].view(np.uint16)).all()
    got = _logits(runtime16, params16, ids)
    ref = R.forward(tensors, hf, ids)
    assert _rel(got, ref) < 5e-2 and (got.argmax(-1) == ref.argmax(-1)).mean() > 0.8


def test_tokenizer_reads_chat_template_and_special_ids(checkpoints):
    from cts.model.tokenizer import get_tokenizer

    path, hf, _ = checkpoints["qwen3"]
    tok = get_tokenizer(f"hf:{path}")
    assert tok.vocab_size == hf["vocab_size"] and tok.name == f"hf:{path}"
    assert tok.decode(tok.encode_prompt("What is 2+3?")) == (
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode([tok.pad_id, *tok.encode("#### 72"), tok.pad_id]) == "#### 72"
    assert tok.eos_id == tok.encode("<|im_end|>")[0] != tok.pad_id
    llama = get_tokenizer(f"hf:{checkpoints['llama3'][0]}")
    assert llama.decode(llama.encode_prompt("hi")).startswith("<|begin_of_text|><|start_header_id|>user")
    assert llama.decode([llama.pad_id]) == "" and llama.eos_id == llama.encode("<|eot_id|>")[0]


# ----------------------------------------------------------------------------------------------
# Checks: config.json against the MaxText model config and the workflow config
# ----------------------------------------------------------------------------------------------


def _workflow(path, hf, family) -> dict:
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    update_config(config, {
        "tasks": ["gsm8k"], "ablations": [], "methods": ["B3"], "base_method": "B3",
        "data": {"gsm8k": {"loader": "gsm8k", "source": "repo", "limit": 20}},
        "tokenizer": f"hf:{path}", "model": hf_tiny.model_block(hf),
        "base_policy": {"pretrained": _spec(path, family), "steps": 0, "error_rate": 0.0}})
    validate(config, schema=str(REPO / "schemas" / "workflow_config.schema.yaml"))
    return config


@pytest.mark.parametrize("family", FAMILIES)
def test_matching_workflow_config_is_consistent(checkpoints, family):
    path, hf, _ = checkpoints[family]
    check_consistency(_workflow(path, hf, family))


@pytest.mark.parametrize("mutate,match", [
    (lambda c, hf: c["model"].update(emb_dim=32), r"model\.emb_dim = 32, but .* has 64 \(config\.json hidden_size\)"),
    (lambda c, hf: c["model"].update(qk_norm=False), r"model\.qk_norm = False, but .* has True"),
    (lambda c, hf: c["model"].update(rope_max_timescale=10000), r"model\.rope_max_timescale .*rope_theta"),
    (lambda c, hf: c["model"].update(max_len=5000), r"model\.max_len = 5000 exceeds .* 4096"),
    (lambda c, hf: c.update(tokenizer="gpt2"), r"needs tokenizer: hf:"),
    (lambda c, hf: c["base_policy"]["pretrained"].update(model="qwen2.5-1.5b"),
     r"model_type = 'qwen3', but MaxText model qwen2\.5-1\.5b is decoder_block 'qwen2'"),
    (lambda c, hf: c["base_policy"]["pretrained"].update(model="gemma2-2b"), r"'gemma2-2b': MaxText is decoder_block"),
    (lambda c, hf: c["base_policy"].update(error_rate=0.35), r"base_policy\.error_rate = 0\.35 .*\['gsm8k'\]"),
])
def test_mismatches_name_the_key(checkpoints, mutate, match):
    path, hf, _ = checkpoints["qwen3"]
    config = _workflow(path, hf, "qwen3")
    mutate(config, hf)
    with pytest.raises(ConfigError, match=match):
        check_consistency(config)


def test_unsupported_rope_scaling_names_the_key(checkpoints):
    """Llama 3.2's rope scaling (factor 32) is not what MaxText hard-codes (8): rejected, key named."""
    from cts.model.hf_checkpoint import model_keys_from_hf_config

    hf = copy.deepcopy(checkpoints["llama3"][1])
    hf["rope_scaling"]["factor"] = 32.0
    with pytest.raises(ValueError, match=r"rope_scaling\.factor = 32\.0, but MaxText's llama3\.1 rope hard-codes 8"):
        model_keys_from_hf_config(hf, "llama3.1-8b")
    hf = copy.deepcopy(checkpoints["qwen2.5"][1])
    hf["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match=r"rope_scaling\.rope_type = 'yarn'"):
        model_keys_from_hf_config(hf, "qwen2.5-1.5b")


def test_runtime_mismatch_is_caught_at_load(checkpoints):
    from cts.model.pretrained import pretrained_params
    from cts.train.runtime import PolicyRuntime

    path, hf, _ = checkpoints["qwen2.5"]
    runtime = PolicyRuntime({**hf_tiny.model_block(hf), "attention_bias": False}, f"hf:{path}", seed=0, batch_size=1)
    with pytest.raises(ConfigError, match=r"model\.attention_bias = False, but .* has True"):
        pretrained_params(_spec(path, "qwen2.5"), runtime)


def test_sharded_safetensors_and_missing_tensor_is_named(checkpoints, tmp_path):
    """A sharded checkpoint (model.safetensors.index.json, as the hub writes for > 5 GB) is read
    through its index; a tensor the MaxText mapping needs but the checkpoint lacks is named."""
    import json

    from safetensors.numpy import save_file

    from cts.model.hf_checkpoint import SafetensorsReader, convert_hf_to_maxtext

    _, hf, tensors = checkpoints["qwen3"]
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        f = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / f))
        weight_map.update({n: f for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    reader = SafetensorsReader(tmp_path)
    assert reader.names() == set(names)
    np.testing.assert_array_equal(reader(names[-1]), tensors[names[-1]])
    key = "params-decoder-layers_1-self_attention-key_norm-scale"
    out = convert_hf_to_maxtext(reader, hf, "qwen3-0.6b", {key: ((16,), np.float32)})
    np.testing.assert_array_equal(out[key], tensors["model.layers.1.self_attn.k_norm.weight"])
    with pytest.raises(KeyError, match=r"no tensor 'model\.layers\.1\.self_attn\.kk_norm\.weight'"):
        convert_hf_to_maxtext(lambda n: reader(n.replace("k_norm", "kk_norm")), hf, "qwen3-0.6b",
                              {key: ((16,), np.float32)})
    with pytest.raises(KeyError, match=r"does not cover policy parameters \['params-decoder-extra'\]"):
        convert_hf_to_maxtext(reader, hf, "qwen3-0.6b", {"params-decoder-extra": ((1,), np.float32)})


# ----------------------------------------------------------------------------------------------
# gs:// checkpoints and the whole pipeline
# ----------------------------------------------------------------------------------------------


def test_gs_checkpoint_is_copied_once_into_the_cache(checkpoints, tmp_path, monkeypatch):
    """A gs:// path is copied (config, tokenizer files, safetensors) into $CTS_HF_CACHE through
    etils.epath, here pointed at a local 'bucket'; a second call reads the cache, and an unset
    environment variable in the path is an error naming the path."""
    import shutil

    from etils import epath

    from cts.model.hf_checkpoint import local_checkpoint_dir

    bucket = tmp_path / "bucket"
    shutil.copytree(checkpoints["qwen3"][0], bucket / "ckpt")
    monkeypatch.setattr(epath, "Path", lambda p: Path(str(p).replace("gs://", str(bucket) + "/", 1)))
    monkeypatch.setenv("CTS_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CKPT_DIR", "ckpt")
    local = local_checkpoint_dir("gs://$CKPT_DIR")
    assert local.parent == tmp_path / "cache"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (local / name).read_bytes() == (bucket / "ckpt" / name).read_bytes(), name
    shutil.rmtree(bucket / "ckpt")
    assert local_checkpoint_dir("gs://$CKPT_DIR") == local  # cached: the bucket is not read again
    monkeypatch.delenv("CKPT_DIR")
    with pytest.raises(FileNotFoundError, match=r"environment variable .* not set"):
        local_checkpoint_dir("gs://$CKPT_DIR")


def _pipeline_config(path, hf) -> dict:
    return {
        "run_name": "hf_tiny", "tasks": ["gsm8k"], "methods": ["B3"], "ablations": [], "base_method": "B3",
        "seeds": [0], "data": {"gsm8k": {"loader": "gsm8k", "source": "repo", "split": "test", "limit": 8}},
        "splits": {"fractions": {"train": 0.5, "dev": 0.0, "test": 0.5}, "seed": 0},
        "tokenizer": f"hf:{path}", "model": {**hf_tiny.model_block(hf), "max_len": 1024},  # the test BPE is coarse
        "base_policy": {"pretrained": _spec(path, "qwen3"), "steps": 1, "batch_size": 2, "learning_rate": 1e-5,
                        "warmup_steps": 0, "error_rate": 0.0, "seed": 0},
        "rollouts": {"splits": ["train", "test"], "max_new_tokens": 8, "batch_size": 4},
        "eval": {"split": "test", "n_samples": 1, "pass_k": [1], "temperature": 1.0, "max_new_tokens": 8,
                 "batch_size": 4},
        "resources": {"jax_threads": 1}}


def test_tiny_qwen3_base_policy_and_a_later_job_in_process(checkpoints, tmp_path):
    """The `make test` form of the pipeline test below (~1/4 of its CPU: no Snakemake, no process
    starts): the stage functions its jobs call, in order, on the same config. train_base takes 1 SFT
    step from the converted weights and records the checkpoint's digests; teacher_rollouts, as a later
    job does, rebuilds the runtime from final.json's config alone (the hf: tokenizer included) and
    samples every problem."""
    from cts.stages.data import data_prepare
    from cts.stages.data import data_split
    from cts.tasks.schema import load_problems
    from cts.stages.teacher import teacher_rollouts
    from cts.stages.train import train_base
    from cts.io import read_json, read_jsonl
    path, hf, _ = checkpoints["qwen3"]
    cfg = _pipeline_config(path, hf)
    data_prepare("gsm8k", cfg["data"]["gsm8k"], str(tmp_path / "problems.jsonl"), log=lambda *_: None)
    data_split(str(tmp_path / "problems.jsonl"), cfg["splits"], str(tmp_path / "splits"), log=lambda *_: None)
    train_base("gsm8k", str(tmp_path / "splits/train.jsonl"), cfg["model"], cfg["tokenizer"],
                      cfg["base_policy"], str(tmp_path / "ckpt"), str(tmp_path / "final.json"), log=lambda *_: None)
    final = read_json(tmp_path / "final.json")
    assert final["steps"] == 1 and final["pretrained"]["model"] == "qwen3-0.6b"
    assert set(final["pretrained"]["safetensors_sha256"]) == {"model.safetensors"}
    assert final["config"]["tokenizer"] == f"hf:{path}"
    teacher_rollouts(str(tmp_path / "final.json"), {"test": str(tmp_path / "splits/test.jsonl")},
                            cfg["rollouts"], str(tmp_path / "attempts.jsonl"), log=lambda *_: None)
    test = load_problems(tmp_path / "splits/test.jsonl")
    rows = read_jsonl(tmp_path / "attempts.jsonl")
    # (a runtime with any other tokenizer has another vocabulary: final's parameters would not load)
    assert [r["problem"]["id"] for r in rows] == [p.id for p in test] and test
    assert all(isinstance(r["attempt"], str) for r in rows)


@pytest.mark.heavy  # ~80 CPU-s (three JAX jobs); the in-process form above runs in `make test`
def test_tiny_qwen3_checkpoint_through_the_pipeline(checkpoints, tmp_path):
    """train_base (1 SFT step from the converted weights) → teacher rollouts → base eval with
    `tokenizer: hf:<dir>`: every job rebuilds the runtime from final.json's config and loads the
    checkpoint's tokenizer; final.json records the checkpoint's digests."""
    import os
    import subprocess
    import sys

    from cts.io import read_json, read_jsonl

    path, hf, _ = checkpoints["qwen3"]
    config = _pipeline_config(path, hf)
    (tmp_path / "hf.yaml").write_text(yaml.safe_dump(config))
    for name in ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report"):
        os.symlink(REPO / name, tmp_path / name)
    target = "results/eval/gsm8k/base/seed0/problems.jsonl"
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", target, "--configfile",
                          str(tmp_path / "hf.yaml")], cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    final = read_json(tmp_path / "results/base/gsm8k/final.json")
    assert final["steps"] == 1 and final["pretrained"]["model"] == "qwen3-0.6b"
    assert set(final["pretrained"]["safetensors_sha256"]) == {"model.safetensors"}
    from cts.tasks.schema import load_problems

    test = load_problems(tmp_path / "results/splits/gsm8k/test.jsonl")
    rows = read_jsonl(tmp_path / target)
    assert sorted(r["problem_id"] for r in rows) == sorted(p.id for p in test) and test
    assert all(r["method"] == "base" and r["n_samples"] == 1 for r in rows)
