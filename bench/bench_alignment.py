"""Forward+backward time of L_align per kind, token and step level (jit, compile excluded).

Run: JAX_PLATFORMS=cpu .venv/bin/python bench/bench_alignment.py [--repeats 5] [--batch 16 --tokens 128 --dim 64]
Prints one row per (level, kind): median / min ms over repeats, and the alignment value.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from cts.losses.alignment import AlignmentConfig, alignment_loss

KINDS = {
    "sinkhorn": AlignmentConfig(kind="sinkhorn", epsilon=1.0),
    "sinkhorn_unbalanced": AlignmentConfig(kind="sinkhorn", epsilon=1.0, tau=0.9),
    "sinkhorn_debiased": AlignmentConfig(kind="sinkhorn", epsilon=1.0, debiased=True),
    "soft_dtw": AlignmentConfig(kind="soft_dtw", gamma=1.0),
    "l2": AlignmentConfig(kind="l2"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12, help="step-level trajectory length")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"device={jax.devices()[0].platform} B={args.batch} T={args.tokens} steps={args.steps} d={args.dim}")
    print(f"{'level':6} {'kind':22} {'median_ms':>10} {'min_ms':>9} {'value':>10} {'n_iters':>8}")
    for level, n in (("token", args.tokens), ("step", args.steps)):
        lengths = rng.integers(n // 2, n + 1, size=args.batch)
        mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
        times = np.where(mask > 0, np.arange(n)[None] / np.maximum(lengths[:, None] - 1, 1), 0.0)
        x = jnp.asarray(rng.normal(size=(args.batch, n, args.dim)) * 0.2, jnp.float32)
        y = x + jnp.asarray(rng.normal(size=x.shape) * 0.1, jnp.float32)
        w, t = jnp.asarray(mask), jnp.asarray(times, jnp.float32)
        for name, cfg in KINDS.items():
            fn = jax.jit(jax.value_and_grad(lambda x, cfg=cfg: alignment_loss(x, w, t, y, w, t, cfg), has_aux=True))
            (val, m), g = fn(x)
            jax.block_until_ready(g)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x))
                ts.append(1e3 * (time.perf_counter() - t0))
            it = int(m["ot/n_iters"]) if "ot/n_iters" in m else 0
            print(f"{level:6} {name:22} {np.median(ts):10.1f} {np.min(ts):9.1f} {float(val):10.4f} {it:8d}")


if __name__ == "__main__":
    main()
