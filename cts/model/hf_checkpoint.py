"""Hugging Face checkpoints (config.json + safetensors + tokenizer files) as the policy's weights.

`base_policy.pretrained: {format: hf, path: <dir | gs://...>, model: <MaxText model name>}`.
The weights are converted by MaxText 0.2.5's own machinery, not by a mapping written here:
`PARAM_MAPPING[model]` names the HF tensor behind every MaxText parameter and
`HOOK_FNS[model]` transforms it (transposes/reshapes, the llama query's 1/sqrt(d) and its
half→interleaved rotary layout, vocabulary padding), applied with MaxText's `apply_hook_fns`,
unscanned (`scan_layers=False`, the policy's layout). Tensors are read one at a time from the
safetensors files (`safe_open`, no torch), which is MaxText's lazy, torch-free path.

What this module adds around that machinery, because MaxText's converter does not do it:

* the architecture comes from the checkpoint's own config.json (MaxText's converter reads a
  hard-coded `HF_MODEL_CONFIGS` table), and `model_keys_from_hf_config` checks it against the
  MaxText model config (`maxtext/configs/models/<model>.yml`): a structural difference (model
  type, bias, qk-norm, activation, rope scaling MaxText cannot express) is an error naming the
  config.json key and the MaxText key;
* the dimensions (and rope θ, ε, tying) come from config.json — one MaxText family name
  (e.g. `qwen2.5-1.5b`) then serves every checkpoint of that family, e.g.
  Qwen2.5-Math-1.5B-Instruct (rope θ 10,000, not the yml's 1e6) or a tiny test checkpoint;
* `gs://` checkpoints are copied once into a local cache (atomically) so tokenizer and
  weights are read from a local directory.

Supported families (MaxText model names whose PARAM_MAPPING is the dense Qwen or Llama 3.1
mapping): Qwen2.5 (decoder_block qwen2, q/k/v bias), Qwen3 (qwen3, qk-norm), Llama 3.x and other
HF `llama` checkpoints (llama2 block, rope_type llama3.1 = adjacent-pair rotary, with Llama 3.1
frequency scaling only when config.json asks for exactly the scaling MaxText hard-codes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "MAXTEXT_ROPE_SCALING",
    "local_checkpoint_dir",
    "read_hf_config",
    "maxtext_model_yml",
    "model_keys_from_hf_config",
    "check_model_against_hf",
    "SafetensorsReader",
    "convert_hf_to_maxtext",
]

# MaxText decoder_block → the HF `model_type` its mapping reads, and the name of that mapping
# function in maxtext/checkpoint_conversion/utils/param_mapping.py.
FAMILIES = {
    "qwen2": {"model_type": "qwen2", "mapping": "QWEN_MAXTEXT_TO_HF_PARAM_MAPPING"},
    "qwen3": {"model_type": "qwen3", "mapping": "QWEN_MAXTEXT_TO_HF_PARAM_MAPPING"},
    "llama2": {"model_type": "llama", "mapping": "LLAMA31_MAXTEXT_TO_HF_PARAM_MAPPING"},
}
# The Llama 3.1 rope scaling MaxText 0.2.5 hard-codes (layers/embeddings.py,
# LLaMARotaryEmbedding._apply_scaling_factor); any other scaling cannot be expressed.
MAXTEXT_ROPE_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("CTS_HF_CACHE", Path.home() / ".cache" / "cts" / "hf"))


def local_checkpoint_dir(path: str, *, weights: bool = True) -> Path:
    """A local directory holding the checkpoint at `path` (a local dir, or gs://… copied once).

    A gs:// checkpoint is copied into $CTS_HF_CACHE (default ~/.cache/cts/hf) under a digest of
    its URL: config, tokenizer files and (with `weights`) the safetensors, into a temp dir renamed
    into place, so a killed copy never looks complete.

    Environment variables in `path` are expanded (`gs://$CTS_GCS_BUCKET/…`, as gcp_tpu/profile.yaml
    names the bucket).

    Raises:
      FileNotFoundError: no config.json at `path`.
    """
    raw, path = str(path), os.path.expandvars(str(path))
    if "$" in path:
        raise FileNotFoundError(f"base_policy.pretrained.path = {raw!r}: an environment variable in it is not set "
                                "in this job's environment")
    if not path.startswith("gs://"):
        local = Path(path)
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"base_policy.pretrained.path = {path!r}: no config.json there "
                                    "(a Hugging Face checkpoint directory is expected)")
        return local
    from etils import epath

    remote = epath.Path(path)
    dest = _cache_root() / hashlib.sha256(str(path).encode()).hexdigest()[:16]
    marker = dest / (".complete-weights" if weights else ".complete-config")
    if marker.exists() or (dest / ".complete-weights").exists():
        return dest
    if not (remote / "config.json").exists():
        raise FileNotFoundError(f"base_policy.pretrained.path = {path!r}: no config.json there")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    names = ["config.json", *(n for n in _TOKENIZER_FILES if (remote / n).exists())]
    if weights:
        names += [p.name for p in remote.iterdir() if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    for name in names:
        (tmp / name).write_bytes((remote / name).read_bytes())
    if dest.exists():  # an earlier config-only copy: keep the newer, complete one
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    (dest / marker.name).write_text(str(path))
    return dest


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a local checkpoint directory, as a dict."""
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: missing (a Hugging Face checkpoint directory is expected)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from e


def _maxtext_models_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("maxtext")  # locate without importing (a DAG check stays light)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("maxtext is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "configs" / "models"


def maxtext_model_yml(model: str) -> dict[str, Any]:
    """MaxText 0.2.5's model config `maxtext/configs/models/<model>.yml` as a dict.

    Raises:
      ValueError: MaxText has no such model config, or it is not a dense decoder of a supported
        family (the message lists the supported names).
    """
    import yaml

    models = _maxtext_models_dir()
    f = models / f"{model}.yml"
    yml = yaml.safe_load(f.read_text()) if f.is_file() else {}
    if yml.get("decoder_block") not in FAMILIES or int(yml.get("num_experts", 1)) > 1 or "-vl" in model:
        supported = sorted(p.stem for p in models.glob("*.yml")
                           if (y := yaml.safe_load(p.read_text()) or {}).get("decoder_block") in FAMILIES
                           and int(y.get("num_experts", 1)) <= 1 and "-vl" not in p.stem and p.stem.startswith(("qwen2.5", "qwen3", "llama3.1")))
        what = "has no model config" if not f.is_file() else f"is decoder_block {yml.get('decoder_block')!r}"
        raise ValueError(f"base_policy.pretrained.model = {model!r}: MaxText {what}; a dense Qwen2.5 / Qwen3 / Llama 3.x "
                         f"model is needed, e.g. {supported}")
    return yml


# ----------------------------------------------------------------------------------------------
# Architecture: config.json → cts `model:` keys, checked against the MaxText model config
# ----------------------------------------------------------------------------------------------


def _rope_theta(hf: Mapping[str, Any]) -> Any:
    # transformers ≥ 4.5x may nest it under rope_parameters; older config.json files have rope_theta.
    if "rope_theta" in hf:
        return hf["rope_theta"], "rope_theta"
    params = hf.get("rope_parameters") or {}
    return params.get("rope_theta", 10000.0), "rope_parameters.rope_theta"


def _rope_scaling(hf: Mapping[str, Any]) -> tuple[dict | None, str]:
    scaling = hf.get("rope_scaling")
    key = "rope_scaling"
    if scaling is None and isinstance(hf.get("rope_parameters"), Mapping):
        params = hf["rope_parameters"]
        if params.get("rope_type", "default") != "default":
            scaling, key = params, "rope_parameters"
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return scaling, key


def model_keys_from_hf_config(hf: Mapping[str, Any], model: str, *, source: str = "config.json"
                              ) -> dict[str, tuple[Any, str]]:
    """The cts `model:` keys a checkpoint fixes, each with the config.json key it comes from.

    Args:
      hf: config.json as a dict.
      model: the MaxText model name (`base_policy.pretrained.model`), which picks the family.
      source: how messages name the file.

    Returns:
      {ModelConfig field: (value, "config.json key")} for decoder_block, emb_dim, num_heads,
      num_kv_heads, head_dim, mlp_dim, num_layers, rope_max_timescale, norm_epsilon,
      tied_embeddings, attention_bias, qk_norm, rope_type, rope_use_scale, and
      "max_position_embeddings" (the longest max_len).

    Raises:
      ValueError: config.json and the MaxText model config disagree on something structural, or
        config.json asks for something MaxText cannot build; every problem is listed, each naming
        the config.json key and the MaxText key.
    """
    yml = maxtext_model_yml(model)
    block = yml["decoder_block"]
    family = FAMILIES[block]
    problems = []

    def need(key: str) -> Any:
        if key not in hf:
            problems.append(f"{source} has no {key!r}")
            return None
        return hf[key]

    if hf.get("model_type") != family["model_type"]:
        problems.append(f"{source} model_type = {hf.get('model_type')!r}, but MaxText model {model} is decoder_block "
                        f"{block!r}, which reads {family['model_type']!r} checkpoints")
    act = hf.get("hidden_act", "silu")
    if list(yml.get("mlp_activations", ["silu", "linear"])) != ["silu", "linear"] or act != "silu":
        problems.append(f"{source} hidden_act = {act!r}; MaxText model {model} has mlp_activations "
                        f"{yml.get('mlp_activations')} (SwiGLU = silu, linear)")
    # Qwen2's attention always has q/k/v biases (no config key); Llama/Qwen3 say so in attention_bias.
    bias = True if block == "qwen2" else bool(hf.get("attention_bias", False))
    if bias != bool(yml.get("attention_bias", False)):
        problems.append(f"{source} attention_bias = {bias}, but MaxText model {model} has attention_bias: "
                        f"{bool(yml.get('attention_bias', False))}")
    qk_norm = block == "qwen3"
    if qk_norm != bool(yml.get("use_qk_norm", False)):
        problems.append(f"model_type {hf.get('model_type')!r} has qk-norm = {qk_norm}, but MaxText model {model} has "
                        f"use_qk_norm: {bool(yml.get('use_qk_norm', False))}")
    if hf.get("use_sliding_window"):
        problems.append(f"{source} use_sliding_window = true: MaxText's {block} block attends to the whole context")
    if hf.get("mlp_bias"):
        problems.append(f"{source} mlp_bias = true: MaxText's {block} block has no MLP biases")
    scaling, scaling_key = _rope_scaling(hf)
    rope_type, use_scale = ("llama3.1", False) if block == "llama2" else ("default", False)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if block != "llama2" or kind != "llama3":
            problems.append(f"{source} {scaling_key}.rope_type = {kind!r}: MaxText's {block} block has no such rope "
                            "scaling")
        else:
            for key, want in MAXTEXT_ROPE_SCALING.items():
                have = scaling.get(key)
                if have is None or not math.isclose(float(have), want):
                    problems.append(f"{source} {scaling_key}.{key} = {have!r}, but MaxText's llama3.1 rope hard-codes "
                                    f"{want:g} (layers/embeddings.py LLaMARotaryEmbedding)")
            use_scale = True
    heads = need("num_attention_heads")
    emb = need("hidden_size")
    theta, theta_key = _rope_theta(hf)
    if theta is not None and float(theta) != int(float(theta)):
        problems.append(f"{source} {theta_key} = {theta}: MaxText's rope_max_timescale is an integer")
    head_dim = hf.get("head_dim") or (emb // heads if emb and heads else None)
    if problems:
        raise ValueError(f"checkpoint {source} does not fit MaxText model {model}: " + "; ".join(problems))
    return {
        "decoder_block": (block, "model_type"),
        "emb_dim": (int(emb), "hidden_size"),
        "num_heads": (int(heads), "num_attention_heads"),
        "num_kv_heads": (int(hf.get("num_key_value_heads") or heads), "num_key_value_heads"),
        "head_dim": (int(head_dim), "head_dim" if hf.get("head_dim") else "hidden_size / num_attention_heads"),
        "mlp_dim": (int(need("intermediate_size")), "intermediate_size"),
        "num_layers": (int(need("num_hidden_layers")), "num_hidden_layers"),
        "rope_max_timescale": (int(float(theta)), theta_key),
        "norm_epsilon": (float(hf.get("rms_norm_eps", 1e-6)), "rms_norm_eps"),
        "tied_embeddings": (bool(hf.get("tie_word_embeddings", False)), "tie_word_embeddings"),
        "attention_bias": (bias, "model_type (qwen2 has q/k/v biases)" if block == "qwen2" else "attention_bias"),
        "qk_norm": (qk_norm, "model_type (qwen3 normalises q and k)"),
        "rope_type": (rope_type, "model_type (MaxText's llama converter writes adjacent-pair rotary)"
                      if block == "llama2" else "model_type"),
        "rope_use_scale": (use_scale, scaling_key),
        "max_position_embeddings": (int(hf.get("max_position_embeddings", 2 ** 31 - 1)), "max_position_embeddings"),
    }


def check_model_against_hf(model_cfg: Mapping[str, Any], expected: Mapping[str, tuple[Any, str]], *, name: str,
                           allow_fewer_layers: bool = False, source: str = "config.json") -> list[str]:
    """Problems (each naming the `model.<key>`) where a cts `model:` block differs from the checkpoint.

    `tied_embeddings: false` on a tied checkpoint is allowed (the head starts as a copy of the
    embedding); the opposite is not. `max_len` must fit max_position_embeddings.
    """
    out = []
    for key, (want, origin) in expected.items():
        if key == "max_position_embeddings":
            if model_cfg.get("max_len", 0) > want:
                out.append(f"model.max_len = {model_cfg['max_len']} exceeds the {name} context length {want} "
                           f"({source} {origin})")
            continue
        defaults = {"attention_bias": False, "qk_norm": False, "rope_type": "default", "rope_use_scale": False,
                    "tied_embeddings": False, "decoder_block": "default", "rope_max_timescale": 10000,
                    "norm_epsilon": 1e-5}
        have = model_cfg.get(key, defaults.get(key))
        if key == "norm_epsilon":
            ok = have is not None and math.isclose(have, want, rel_tol=1e-5)  # GGUF/JSON round ε differently
        elif key == "num_layers" and allow_fewer_layers:
            ok = have is not None and 1 <= have <= want
        elif key == "tied_embeddings":
            ok = have == want or (want and not have)
        else:
            ok = have == want
        if not ok:
            shown = f"{want:.6g}" if isinstance(want, float) else repr(want)
            out.append(f"model.{key} = {have!r}, but the {name} checkpoint has {shown} ({source} {origin})")
    return out


# ----------------------------------------------------------------------------------------------
# Tensors and conversion
# ----------------------------------------------------------------------------------------------


class SafetensorsReader:
    """Tensors of a local HF checkpoint by name, read lazily from its safetensors file(s).

    `model.safetensors.index.json` (sharded) or every `*.safetensors` in the directory. Arrays
    come back as NumPy in their stored dtype (bfloat16 as ml_dtypes.bfloat16): no torch.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._where = {name: path / f for name, f in weight_map.items()}
        else:
            from safetensors import safe_open

            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}: no *.safetensors files")
            self._where = {}
            for f in files:
                with safe_open(f, framework="flax") as h:
                    self._where.update({k: f for k in h.keys()})
        self.path = path

    def names(self) -> set[str]:
        return set(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __call__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        if name not in self._where:
            raise KeyError(f"{self.path}: the checkpoint has no tensor {name!r}")
        # framework="flax" reads bfloat16 without torch; np.asarray gives an ml_dtypes array.
        with safe_open(self._where[name], framework="flax") as h:
            return np.asarray(h.get_tensor(name))


def convert_hf_to_maxtext(tensor: Callable[[str], np.ndarray], hf: Mapping[str, Any], model: str,
                          targets: Mapping[str, tuple[tuple[int, ...], Any]], *, compute_dtype=np.float32
                          ) -> dict[str, np.ndarray]:
    """MaxText parameters from HF tensors with MaxText's own PARAM_MAPPING/HOOK_FNS for `model`.

    Args:
      tensor: HF tensor name → array (e.g. a SafetensorsReader).
      hf: config.json as a dict (what the mapping functions read: num_hidden_layers, head_dim…).
      model: MaxText model name, the key of PARAM_MAPPING / HOOK_FNS.
      targets: {MaxText key "params-decoder-layers_0-self_attention-query-kernel": (shape, dtype)}
        of the policy being filled; every one must be covered by the mapping.
      compute_dtype: tensors are cast to it before the hooks run, so a bf16 checkpoint loaded into
        float32 weights is scaled (llama's query 1/sqrt(d)) in float32, not rounded twice.

    Returns:
      {MaxText key: array of the target shape and dtype}.

    Raises:
      KeyError: the mapping does not cover a policy parameter, or a tensor is missing (named).
      ValueError: a converted tensor has the wrong shape (named).
    """
    from maxtext.checkpoint_conversion.utils.param_mapping import HOOK_FNS, PARAM_MAPPING
    from maxtext.checkpoint_conversion.utils.tensor_handling import apply_hook_fns

    if model not in PARAM_MAPPING or model not in HOOK_FNS:
        raise ValueError(f"MaxText 0.2.5 has no Hugging Face conversion mapping for {model!r}")
    if PARAM_MAPPING[model].__name__ not in {f["mapping"] for f in FAMILIES.values()}:
        raise ValueError(f"MaxText's mapping for {model!r} ({PARAM_MAPPING[model].__name__}) is not one of the dense "
                         "Qwen / Llama mappings this loader supports")
    hf = dict(hf)
    hf.setdefault("head_dim", hf["hidden_size"] // hf["num_attention_heads"])  # read by the llama query hook
    # The two dense mappings used here read only the HF config dict, never `maxtext_config`.
    mapping = PARAM_MAPPING[model](hf, None, scan_layers=False)
    hooks = HOOK_FNS[model](hf, None, scan_layers=False, saving_to_hf=False)
    missing = sorted(set(targets) - set(mapping))
    if missing:
        raise KeyError(f"MaxText's {model} mapping does not cover policy parameters {missing[:5]}")
    out = {}
    for key, (shape, dtype) in targets.items():
        source = mapping[key]
        if not isinstance(source, str):
            raise ValueError(f"{key}: mapping source {source!r} is not one tensor (scanned/MoE layouts unsupported)")
        array = np.asarray(tensor(source)).astype(compute_dtype)
        array = np.asarray(apply_hook_fns(array, tuple(shape), hooks.get(key)))
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{key} (from {source}): converted shape {array.shape}, the policy has {tuple(shape)}")
        out[key] = array.astype(dtype)
    return out


def nnx_path_to_maxtext_key(path: tuple) -> str:
    """("decoder", "layers_0", "mlp", "wi_0", "kernel") → "params-decoder-layers_0-mlp-wi_0-kernel"
    (MaxText's checkpoint key convention; an integer layer index folds into "layers_<i>")."""
    parts: list[str] = []
    for p in map(str, path):  # "value" is a real name here (the value projection), not a wrapper
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return "params-" + "-".join(parts)
