"""Tiny random Hugging Face checkpoints, written offline in the hub layout: config.json (the
keys transformers writes for Qwen2ForCausalLM / Qwen3ForCausalLM / LlamaForCausalLM),
model.safetensors (HF tensor names, (out, in) linears, bfloat16 or float32) and tokenizer files
(a byte-level BPE trained here, tokenizer_config.json with a chat template), so that
`transformers.AutoTokenizer.from_pretrained(dir)` and the cts loader read them like a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

FAMILIES = {
    # family: (model_type, architectures, MaxText model name, extra config.json keys)
    "qwen2.5": ("qwen2", "Qwen2ForCausalLM", "qwen2.5-1.5b", {"use_sliding_window": False, "tie_word_embeddings": True,
                                                             "rope_theta": 10000.0}),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", "qwen3-0.6b", {"tie_word_embeddings": True, "attention_bias": False,
                                                         "rope_theta": 1000000.0, "head_dim": 16}),
    "llama3": ("llama", "LlamaForCausalLM", "llama3.1-8b", {
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}),
}
CORPUS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
          "How many clips did Natalia sell altogether in April and May? 48 / 2 = 24. 48 + 24 = 72. #### 72",
          "def add(a, b):\n    return a + b\n", "The answer is \\boxed{42}."] * 4


def write_tokenizer(out: Path, family: str, vocab: int) -> int:
    """Byte-level BPE of < `vocab` tokens plus the family's chat specials; returns its length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    qwen = family != "llama3"
    specials = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen else
                ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|finetune_right_pad_id|>"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 16, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
           "chat_template": QWEN_TEMPLATE if qwen else LLAMA_TEMPLATE, "add_bos_token": False}
    cfg.update({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None} if qwen else
               {"eos_token": "<|eot_id|>", "bos_token": "<|begin_of_text|>", "pad_token": None})
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return tok.get_vocab_size()


def write_checkpoint(out: Path, family: str, *, seed: int = 0, vocab: int = 384, hidden: int = 64, heads: int = 4,
                     kv_heads: int = 2, layers: int = 2, mlp: int = 128, dtype: str = "float32",
                     scale: float = 0.2) -> tuple[dict, dict]:
    """Write a random `family` checkpoint into `out`; returns (config.json dict, tensors by HF name).

    Weights ~ N(0, scale²) (norm scales 1 + N(0, 0.1²)), so logits are O(1) and a greedy decode is
    not one repeated token. `dtype` is how the safetensors file stores them.
    """
    import ml_dtypes
    from safetensors.numpy import save_file

    model_type, arch, _, extra = FAMILIES[family]
    out.mkdir(parents=True, exist_ok=True)
    n_tok = write_tokenizer(out, family, vocab)
    assert n_tok <= vocab
    head_dim = extra.get("head_dim", hidden // heads)
    hf = {"architectures": [arch], "model_type": model_type, "hidden_size": hidden, "num_attention_heads": heads,
          "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "intermediate_size": mlp,
          "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu",
          "torch_dtype": dtype, **extra}
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": mat(vocab, hidden), "model.norm.weight": norm(hidden)}
    if not hf["tie_word_embeddings"]:
        t["lm_head.weight"] = mat(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(hidden)
        t[p + "post_attention_layernorm.weight"] = norm(hidden)
        t[p + "self_attn.q_proj.weight"] = mat(heads * head_dim, hidden)
        t[p + "self_attn.k_proj.weight"] = mat(kv_heads * head_dim, hidden)
        t[p + "self_attn.v_proj.weight"] = mat(kv_heads * head_dim, hidden)
        t[p + "self_attn.o_proj.weight"] = mat(hidden, heads * head_dim)
        if model_type == "qwen2":
            for n, h in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                t[p + f"self_attn.{n}_proj.bias"] = mat(h * head_dim)
        if model_type == "qwen3":
            t[p + "self_attn.q_norm.weight"] = norm(head_dim)
            t[p + "self_attn.k_norm.weight"] = norm(head_dim)
        t[p + "mlp.gate_proj.weight"] = mat(mlp, hidden)
        t[p + "mlp.up_proj.weight"] = mat(mlp, hidden)
        t[p + "mlp.down_proj.weight"] = mat(hidden, mlp)
    if dtype == "bfloat16":
        t = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=1))
    return hf, t


def model_block(hf: dict, max_len: int = 64) -> dict:
    """The cts `model:` block matching config.json `hf` (what a workflow config must say)."""
    mt = hf["model_type"]
    scaling = hf.get("rope_scaling") is not None
    return {"decoder_block": {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama2"}[mt],
            "emb_dim": hf["hidden_size"], "num_heads": hf["num_attention_heads"],
            "num_kv_heads": hf["num_key_value_heads"], "head_dim": hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
            "mlp_dim": hf["intermediate_size"], "num_layers": hf["num_hidden_layers"],
            "rope_max_timescale": int(hf["rope_theta"]), "norm_epsilon": hf["rms_norm_eps"],
            "tied_embeddings": hf["tie_word_embeddings"], "attention_bias": mt == "qwen2", "qk_norm": mt == "qwen3",
            "rope_type": "llama3.1" if mt == "llama" else "default", "rope_use_scale": scaling, "max_len": max_len}
