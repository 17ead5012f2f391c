"""A plain NumPy llama forward on SmolLM2's GGUF tensors: the oracle for the MaxText port.

Written from the architecture definition in llama.cpp's own convention (rotary pairs (2i, 2i+1) on
the GGUF row order, as `cts.model.smollm2.load_gguf_weights` returns the tensors), independent of
MaxText and of the GGUF → Hugging Face rewrite (`cts.model.smollm2.gguf_to_hf`) that the package
uses. `reference_greedy_decode` is also a sanity check of the weights.

Shape letters: T sequence length, D embedding, H query heads, K kv heads, d head dim, F MLP
width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_dtypes
import numpy as np

from cts.model.smollm2 import SmolLM2Config

__all__ = ["reference_forward", "reference_greedy_decode"]


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
