"""The policy at run time: tokenizer, MaxText model split into (graph, params, rest), samplers.

Training, rollouts and evaluation all go through a PolicyRuntime, so they build the model the
same way and load the same checkpoints. Parameters are handled functionally (an `nnx.State`
pytree) so the optimizer, the frozen reference and Orbax all see plain pytrees.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np
from flax import nnx

from cts.model.policy import ModelConfig, Parallelism, build_policy, forward
from cts.model.tokenizer import get_tokenizer
from cts.train.batching import encode_prompt

__all__ = ["PolicyRuntime", "limit_threads"]


def limit_threads(n: int, slot_dir: str | None = None) -> int:
    """Pin this process to n CPUs of its own and size XLA's thread pool to them.

    Concurrent JAX jobs (Snakemake runs at most cores/n of them, see rules/common.smk) each take a
    free CPU slot — an flock'ed file under `slot_dir` held for the life of the process — so two
    jobs never share a core while another idles. Must run before JAX initialises its backend.
    Returns the number of CPUs used.
    """
    import fcntl
    import tempfile

    n = max(1, int(n))
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    n = min(n, len(cpus))
    chosen = None  # no free slot (another pipeline's jobs hold them all): leave placement to the OS
    slot_dir = slot_dir or os.path.join(tempfile.gettempdir(), f"cts-cpu-slots-{os.getuid()}")
    os.makedirs(slot_dir, exist_ok=True)
    for slot in range(len(cpus) // n):
        f = open(os.path.join(slot_dir, f"slot{slot}-of-{len(cpus) // n}x{n}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _HELD_SLOTS.append(f)  # released when the process exits
        chosen = cpus[slot * n:(slot + 1) * n]
        break
    if chosen is None:
        print(f"limit_threads: all {len(cpus) // n} CPU slots under {slot_dir} are held (another pipeline's jobs?); "
              "this job is not pinned", file=sys.stderr)
    else:
        try:
            os.sched_setaffinity(0, chosen)
        except (AttributeError, OSError):
            pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


_HELD_SLOTS: list = []


class PolicyRuntime:
    """A tokenizer plus a MaxText decoder, with parameters kept outside the module."""

    def __init__(self, model_cfg: dict, tokenizer: str, *, seed: int, batch_size: int = 8,
                 parallelism: Parallelism | dict | None = None):
        """parallelism: None (replicated weights) or e.g. {"fsdp": 4, "tensor": 2}: weights built
        sharded on that mesh (see cts.model.policy.Parallelism); batches go on it with
        `shard_batch(batch, self.mesh)`."""
        self.tok = get_tokenizer(tokenizer)
        self.model_cfg = ModelConfig(vocab_size=self.tok.vocab_size, **model_cfg)
        self.parallelism = Parallelism.coerce(parallelism)
        model, self.mesh = build_policy(self.model_cfg, seed=seed, batch_size=batch_size,
                                        parallelism=self.parallelism)
        self.graphdef, self.init_params, self.rest = nnx.split(model, nnx.Param, ...)
        self._samplers: dict = {}

    # ------------------------------------------------------------------ forward
    def merge(self, params):
        return nnx.merge(self.graphdef, params, self.rest, copy=True)

    def forward(self, params, tokens, segment_ids):
        """(logits [B,T,V], hidden [B,T,D]) — pure in params, for use under jit/grad."""
        return forward(self.merge(params), tokens, segment_ids)

    # ------------------------------------------------------------------ sampling
    def sampler(self, batch_size: int, max_prompt_len: int, max_new_tokens: int):
        from cts.model.sampler import Sampler, SamplingConfig

        key = (batch_size, max_prompt_len, max_new_tokens)
        if key not in self._samplers:
            # The decode cache only needs P + N positions, not the training max_len.
            cfg = dataclasses.replace(self.model_cfg, max_len=max_prompt_len + max_new_tokens)
            self._samplers[key] = Sampler(
                cfg, SamplingConfig(max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens),
                batch_size=batch_size, eos_id=self.tok.eos_id, pad_id=self.tok.pad_id,
                parallelism=self.parallelism)  # the training mesh: weights read where they lie
        return self._samplers[key]

    def decode_lenient(self, ids: list[int]) -> str:
        """Text of sampled ids; an id outside the tokenizer's used vocabulary (a tiny model can
        sample the padding ids) becomes U+FFFD, one character per id, so spans stay aligned."""
        try:
            return self.tok.decode(ids)
        except ValueError:
            out = []
            for i in ids:
                try:
                    out.append(self.tok.decode([i]))
                except ValueError:
                    out.append("\ufffd")
            return "".join(out)

    def generate(self, params, prompts: list[str], rng: jax.Array, *, max_new_tokens: int,
                 batch_size: int, greedy: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, return_ids: bool = False):
        """Completions (text before EOS) for each prompt, in order, `batch_size` at a time.

        With return_ids, returns (texts, ids, finished): the sampled token ids (EOS excluded) and
        whether each completion ended with EOS — training uses the ids, never a re-tokenization.
        """
        encoded = [encode_prompt(self.tok, p) for p in prompts]
        if not encoded:
            return []
        longest = max(len(e) for e in encoded)
        P = ((longest + 15) // 16) * 16  # a few prompt-length buckets, not one compile per length
        sampler = self.sampler(batch_size, P, max_new_tokens)
        texts, all_ids, finished = [], [], []
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            rng, key = jax.random.split(rng)
            res = sampler(params, chunk, key, greedy=greedy, temperature=temperature, top_p=top_p)
            for row, n in zip(res.tokens[:len(chunk)], res.lengths[:len(chunk)]):  # host numpy already
                ids = [int(t) for t in row[:n]]
                done = bool(ids) and ids[-1] == self.tok.eos_id
                ids = ids[:-1] if done else ids
                texts.append(self.decode_lenient(ids))
                all_ids.append(ids)
                finished.append(done)
        return (texts, all_ids, finished) if return_ids else texts
