"""Byte-level BPE tokenizer and chat template rebuilt from a GGUF file's own metadata.

A GGUF file for a GPT-2-style vocabulary (`tokenizer.ggml.model == "gpt2"`) carries the whole
tokenizer: `tokenizer.ggml.tokens` (id -> byte-level token string), `tokenizer.ggml.merges`
("a b" pairs in merge-rank order), `tokenizer.ggml.token_type` (llama.cpp's enum: 1 normal,
2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) and `tokenizer.ggml.pre`, the name of
the pre-tokenizer regex llama.cpp applies before BPE. We rebuild it with the `tokenizers`
library so the weights and the text they were trained on travel in one file.

Only the pre-tokenizers we have checked against llama.cpp's `llama-vocab.cpp` are accepted;
an unknown name raises rather than silently tokenizing differently from the model's training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

__all__ = [
    "TOKEN_TYPE_CONTROL",
    "TOKEN_TYPE_USER_DEFINED",
    "tokenizer_from_gguf_metadata",
    "render_chat_prompt",
]

# llama.cpp `llama_token_type` values stored in `tokenizer.ggml.token_type`.
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def _pre_tokenizer_for(pre: str) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer equivalent to llama.cpp's regex list for `pre`."""
    gpt2_byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt2", "default"):
        return gpt2_byte_level
    if pre in ("smollm", "starcoder", "refact"):
        # llama.cpp splits every digit on its own ("\p{N}") before the GPT-2 regex.
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), gpt2_byte_level]
        )
    raise ValueError(
        f"tokenizer.ggml.pre = {pre!r} is not supported; known: gpt2, default, smollm, "
        "starcoder, refact"
    )


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any]) -> Tokenizer:
    """Build a `tokenizers.Tokenizer` from GGUF metadata (as returned by `load_gguf_weights`).

    Control and user-defined tokens (`<|im_start|>` and friends) are registered as added tokens,
    so they are matched whole in the input text, as llama.cpp does with `parse_special=True`.

    Raises:
        KeyError: a required `tokenizer.ggml.*` key is missing (the message names it).
        ValueError: the vocabulary is not byte-level BPE, or tokens/types/merges are inconsistent.
    """
    def need(key: str) -> Any:
        if key not in metadata:
            raise KeyError(f"GGUF metadata has no {key!r}; cannot build the tokenizer")
        return metadata[key]

    model_kind = need("tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model = {model_kind!r}; only byte-level BPE 'gpt2' is supported")
    tokens: Sequence[str] = need("tokenizer.ggml.tokens")
    merges_raw: Sequence[str] = need("tokenizer.ggml.merges")
    token_types: Sequence[int] = metadata.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if len(token_types) != len(tokens):
        raise ValueError(
            f"tokenizer.ggml.token_type has {len(token_types)} entries but tokenizer.ggml.tokens has {len(tokens)}"
        )

    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("tokenizer.ggml.tokens contains duplicate strings")
    merges = []
    for rank, line in enumerate(merges_raw):
        left, sep, right = line.partition(" ")
        if not sep or not left or not right:
            raise ValueError(f"tokenizer.ggml.merges[{rank}] = {line!r} is not of the form 'a b'")
        merges.append((left, right))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer_for(str(metadata.get("tokenizer.ggml.pre", "default")))
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(tokens[i], special=(t == TOKEN_TYPE_CONTROL), normalized=False)
        for i, t in enumerate(token_types)
        if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tok.add_tokens(specials)
    # add_tokens must not have appended new ids: every special already has its GGUF id.
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError("added tokens changed the vocabulary size; GGUF token table is inconsistent")
    return tok


def render_chat_prompt(
    metadata: Mapping[str, Any],
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with the GGUF's `tokenizer.chat_template`.

    The Jinja template runs in a sandbox (it comes from a downloaded file).
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if "tokenizer.chat_template" not in metadata:
        raise KeyError("GGUF metadata has no 'tokenizer.chat_template'")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a mapping with 'role' and 'content', got {m!r}")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as HF transformers renders it
    template = env.from_string(metadata["tokenizer.chat_template"])
    return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)
