"""Throughput of the KV-cached Sampler vs the cache-less recompute decoder (compile excluded).

    .venv/bin/python bench/bench_sampler.py [--batch 8 --prompt-len 32 --new-tokens 96 --emb-dim 256 --layers 4]

Both decoders run greedy on the same random-init weights and the same mixed-length prompts; the
table reports generated tokens per second (sum of lengths / wall time, median of --repeats timed
calls after one warm-up call that includes compilation) and checks that the tokens are identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from flax import nnx

from cts.model.policy import ModelConfig, build_policy
from cts.model.sampler import Sampler, SamplingConfig, recompute_sample


def _timed(fn, repeats):
    t0 = time.perf_counter()
    out = fn()  # warm-up: compile + first run
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, first, statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--emb-dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    P, N, B = args.prompt_len, args.new_tokens, args.batch
    cfg = ModelConfig(vocab_size=args.vocab, emb_dim=args.emb_dim, num_heads=args.heads, num_kv_heads=args.heads,
                      head_dim=args.emb_dim // args.heads, mlp_dim=4 * args.emb_dim, num_layers=args.layers,
                      max_len=P + N)
    sc = SamplingConfig(max_prompt_len=P, max_new_tokens=N, greedy=True)
    # EOS = the last (padding) id; its output-head column is zeroed below so that its logit is 0
    # while the max of the other V-1 random logits is > 0: no row stops early and both decoders
    # generate exactly B*N tokens (a fair per-token comparison).
    eos, pad = args.vocab - 1, 0
    rs = np.random.RandomState(0)
    prompts = [rs.randint(3, min(99, args.vocab - 1), size=rs.randint(P // 2, P + 1)).tolist() for _ in range(B)]

    model, mesh = build_policy(cfg, seed=0, batch_size=B)
    params = nnx.state(model, nnx.Param)
    head = params["decoder"]["logits_dense"]["kernel"]
    head[...] = head[...].at[:, eos].set(0.0)
    sampler = Sampler(cfg, sc, batch_size=B, eos_id=eos, pad_id=pad)
    key = jax.random.key(0)

    kv, kv_first, kv_t = _timed(lambda: sampler(params, prompts, key), args.repeats)
    rc, rc_first, rc_t = _timed(
        lambda: recompute_sample(model, params, prompts, key, sampling=sc, eos_id=eos, pad_id=pad, mesh=mesh),
        max(1, args.repeats // 2))
    same = np.array_equal(kv.tokens, rc.tokens)
    n_tok = int(kv.lengths.sum())

    print(f"device={jax.devices()[0].device_kind} B={B} P={P} N={N} T={P + N} d={args.emb_dim} L={args.layers} "
          f"heads={args.heads} V={args.vocab} params≈{cfg.num_params_estimate / 1e6:.2f}M "
          f"generated={n_tok} tokens (max {B * N})")
    print(f"{'decoder':<22}{'first call s':>14}{'timed s':>10}{'tok/s':>10}")
    print(f"{'KV cache (Sampler)':<22}{kv_first:>14.2f}{kv_t:>10.3f}{n_tok / kv_t:>10.0f}")
    print(f"{'recompute (no cache)':<22}{rc_first:>14.2f}{rc_t:>10.3f}{int(rc.lengths.sum()) / rc_t:>10.0f}")
    if n_tok < B * N:
        print(f"note: EOS ended some rows early ({n_tok} of {B * N} tokens)")
    print(f"speed-up {rc_t / kv_t:.1f}x   greedy tokens identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
