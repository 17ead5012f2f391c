"""Text → fixed-shape token batches: prompt/response masks and step/flag maps over the response.

A sequence is `BOS prompt \\n response EOS` (or the tokenizer's `encode_prompt(prompt)`, e.g. an
instruct model's chat turn, then `response EOS`). The loss mask covers the response and its EOS. Step
maps give, for each response token, the index of the reasoning step it belongs to (−1 outside
any step), so the CTS trajectory can pool tokens into steps and α can localise the flagged step.
Batches are right-padded to a length bucket (a multiple of 64 unless told) so a run compiles a few shapes only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cts.model.tokenizer import Tokenizer

__all__ = ["TokenBatch", "bucket_length", "encode_prompt", "make_batch", "char_spans_to_token_ids", "repad"]


def bucket_length(n: int, max_len: int, multiple: int = 64) -> int:
    return min(max_len, ((n + multiple - 1) // multiple) * multiple)


def encode_prompt(tok: Tokenizer, prompt: str) -> list[int]:
    """`BOS prompt \\n`, or the tokenizer's own `encode_prompt` (an instruct model's chat turn)."""
    own = getattr(tok, "encode_prompt", None)
    return own(prompt) if own is not None else [tok.bos_id, *tok.encode(prompt + "\n")]


@dataclass
class TokenBatch:
    tokens: np.ndarray        # (B, T) int32
    segment_ids: np.ndarray   # (B, T) int32, 1 real / 0 pad
    loss_mask: np.ndarray     # (B, T) float32, 1 on response tokens (incl. EOS)
    step_ids: np.ndarray      # (B, T) int32, step index of each response token, −1 elsewhere
    flag: np.ndarray          # (B, T) float32, 1 on the tokens of the flagged span
    response_start: np.ndarray  # (B,) int32, position of the first response token

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("tokens", "segment_ids", "loss_mask", "step_ids", "flag")}


def char_spans_to_token_ids(tok: Tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token [start, end) of each char span of `text` (exact for the char tokenizer; for BPE the
    token boundaries are those of encoding the prefix, which can shift a merge by one token)."""
    if getattr(tok, "name", "") == "char":  # one token per character, U+FFFD placeholders included
        return [(s, e) for s, e in spans]
    return [(len(tok.encode(text[:s])), len(tok.encode(text[:e]))) for s, e in spans]


def make_batch(tok: Tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int, *,
               step_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
               flag_spans: Sequence[tuple[int, int] | None] | None = None,
               pad_to: int | None = None, rows: int | None = None,
               response_ids: Sequence[Sequence[int]] | None = None,
               finished: Sequence[bool] | None = None, multiple: int = 64, min_pad: int = 0) -> TokenBatch:
    """Tokenize (prompt, response) pairs; spans are char spans inside each response.

    For sampled responses pass `response_ids` (the sampled ids, used as they are) and `finished`
    (EOS is appended only to responses that ended with it). Without `pad_to` the batch is padded to
    its own longest row rounded up to `multiple` (≤ max_len / multiple shapes in a run), and to at least
    `min_pad` (a high-water mark: pass the last batch's length and a stream's shapes only grow, so
    a run compiles a handful of shapes, not one per step).

    Raises ValueError naming the row if a sequence does not fit in `max_len`.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"make_batch: {len(prompts)} prompts vs {len(responses)} responses")
    seqs, starts, steps, flags = [], [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        head = encode_prompt(tok, p)
        body = list(response_ids[i]) if response_ids is not None else tok.encode(r)
        ended = finished[i] if finished is not None else True
        seq = head + body + ([tok.eos_id] if ended else [])
        if len(seq) > max_len:
            raise ValueError(f"make_batch: row {i} has {len(seq)} tokens > max_len={max_len} "
                             f"(prompt {len(head)}, response {len(body) + 1}); raise model.max_len")
        seqs.append(seq)
        starts.append(len(head))
        s_ids = np.full(len(seq), -1, np.int32)
        if step_spans is not None:
            for k, (a, b) in enumerate(char_spans_to_token_ids(tok, r, step_spans[i])):
                s_ids[len(head) + a: len(head) + b] = k
        steps.append(s_ids)
        f = np.zeros(len(seq), np.float32)
        if flag_spans is not None and flag_spans[i] is not None:
            (a, b), = char_spans_to_token_ids(tok, r, [tuple(flag_spans[i])])
            if b == a:  # an empty span (a missing final line) flags the EOS position
                b = a + 1
            f[len(head) + a: len(head) + b] = 1.0
        flags.append(f)
    n_rows = rows or len(seqs)
    T = pad_to or max(min_pad, bucket_length(max(len(s) for s in seqs), max_len, multiple))
    out = TokenBatch(
        tokens=np.full((n_rows, T), tok.pad_id, np.int32),
        segment_ids=np.zeros((n_rows, T), np.int32),
        loss_mask=np.zeros((n_rows, T), np.float32),
        step_ids=np.full((n_rows, T), -1, np.int32),
        flag=np.zeros((n_rows, T), np.float32),
        response_start=np.zeros((n_rows,), np.int32),
    )
    for i, (seq, st) in enumerate(zip(seqs, starts)):
        n = len(seq)
        out.tokens[i, :n] = seq
        out.segment_ids[i, :n] = 1
        out.loss_mask[i, st:n] = 1.0
        out.step_ids[i, :n] = steps[i]
        out.flag[i, :n] = flags[i]
        out.response_start[i] = st
    return out


def repad(batch: dict, T: int, pad_id: int) -> dict:
    """Right-pad every [B, t] array of a (nested) token batch to [B, T] with make_batch's padding
    values (tokens pad_id, masks 0, step ids −1): the same batch at a longer layout, e.g. to check
    that a padding change leaves the loss as it was."""
    fill = {"tokens": pad_id, "segment_ids": 0, "loss_mask": 0.0, "step_ids": -1, "flag": 0.0}

    def pad(k, v):
        if isinstance(v, dict):
            return {kk: pad(kk, vv) for kk, vv in v.items()}
        v = np.asarray(v)
        if k not in fill or v.ndim != 2:
            return v
        return np.pad(v, ((0, 0), (0, T - v.shape[1])), constant_values=fill[k])

    return {k: pad(k, v) for k, v in batch.items()}
