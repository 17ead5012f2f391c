"""A NumPy forward pass of Hugging Face Qwen2 / Qwen3 / Llama checkpoints, written from the
transformers architecture definitions (modeling_qwen2/qwen3/llama: rotate-half RoPE, q/k/v bias,
per-head q/k RMSNorm, Llama 3 frequency scaling, grouped-query attention), on HF tensor names and
layouts. It shares no code with MaxText or cts: the oracle for the converted policy.

Shape letters: T sequence, D hidden, H query heads, K kv heads, d head dim, F MLP, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (..., n) normalised over its last axis, times w (n,)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def inv_frequencies(hf: Mapping[str, Any], d: int) -> np.ndarray:
    """(d/2,) RoPE inverse frequencies θ^(-2i/d), Llama-3-scaled when config.json says so
    (transformers `_compute_llama3_parameters`)."""
    theta = float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def _rope_half(x: np.ndarray, positions: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """HF rotate-half RoPE: x (T, heads, d), pairs (i, i + d/2) rotated by pos · inv[i]."""
    ang = positions[:, None].astype(np.float64) * inv[None, :]  # (T, d/2)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]  # (T, 1, d)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def forward(tensors: Mapping[str, np.ndarray], hf: Mapping[str, Any], ids: Sequence[int], *,
            head_bf16: bool = False, dtype=np.float64) -> np.ndarray:
    """Logits (T, V) of one sequence `ids` (positions 0..T-1).

    head_bf16: round the output head to bfloat16 first (what MaxText does to a tied head).
    """
    import ml_dtypes

    def w(name):
        return np.asarray(tensors[name]).astype(dtype)

    mt = hf["model_type"]
    D, H, L = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    K = hf.get("num_key_value_heads") or H
    d = hf.get("head_dim") or D // H
    eps = hf["rms_norm_eps"]
    ids = np.asarray(ids)
    T = ids.size
    pos = np.arange(T)
    inv = inv_frequencies(hf, d)
    bias = mt == "qwen2" or hf.get("attention_bias", False)
    x = w("model.embed_tokens.weight")[ids]  # (T, D)
    causal = pos[None, :] <= pos[:, None]  # (T, T): query t sees keys s <= t
    for i in range(L):
        p = f"model.layers.{i}."
        h = _rms(x, w(p + "input_layernorm.weight"), eps)
        proj = {}
        for n, heads in (("q", H), ("k", K), ("v", K)):
            y = h @ w(p + f"self_attn.{n}_proj.weight").T
            if bias:
                y = y + w(p + f"self_attn.{n}_proj.bias")
            proj[n] = y.reshape(T, heads, d)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if mt == "qwen3":
            q = _rms(q, w(p + "self_attn.q_norm.weight"), eps)
            k = _rms(k, w(p + "self_attn.k_norm.weight"), eps)
        q, k = _rope_half(q, pos, inv), _rope_half(k, pos, inv)
        k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)  # (T, H, d)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(d)
        s = np.where(causal[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", s, v).reshape(T, H * d) @ w(p + "self_attn.o_proj.weight").T
        h = _rms(x, w(p + "post_attention_layernorm.weight"), eps)
        g = h @ w(p + "mlp.gate_proj.weight").T
        u = h @ w(p + "mlp.up_proj.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ w(p + "mlp.down_proj.weight").T
    x = _rms(x, w("model.norm.weight"), eps)
    head = w("model.embed_tokens.weight") if hf.get("tie_word_embeddings") else w("lm_head.weight")
    if head_bf16:
        head = head.astype(ml_dtypes.bfloat16).astype(dtype)
    return x @ head.T


def greedy(tensors, hf, prompt: Sequence[int], n: int, *, stop: int | None = None, head_bf16: bool = False
           ) -> list[int]:
    """Greedy continuation (recomputes the whole sequence each step: tiny models only)."""
    seq, out = list(prompt), []
    for _ in range(n):
        nxt = int(np.argmax(forward(tensors, hf, seq, head_bf16=head_bf16)[-1]))
        out.append(nxt)
        if nxt == stop:
            break
        seq.append(nxt)
    return out
