"""The embedded default's hot paths, before vs after issue 16's padding fixes, in ONE process
(run on demand: `nice .venv/bin/python bench/bench_hot_paths.py [--repeats 3] [--only ...]`).

Default shapes (workflow_config.yaml): d=64, 2 layers, 4 heads of 16, MLP 256, max_len 768, char
tokenizer, synth_math (--task; horizons 2–6). A random-init policy: its rollouts rarely stop early, so every
rollout runs the full 128 new tokens (the worst case; a trained base stops sooner).

  sft      base SFT step, B=32: the whole-run pad (the data's longest pair, 256) vs each batch trimmed
           to its own longest row in buckets of 32 (SFTConfig(pad_multiple=32)); mean over the same
           drawn batches, every shape compiled first.
  update   the loop's jitted update on one B3 batch (16 prompts × G=4): B3; B5 (+ CTS terms, 4 quads);
           B6 with refinements padded to max_len (before) vs their bucket (after); A6 (online critiques)
           with att/rev/crit/dec padded to max_len (before) vs their bucket (after).
  sampler  one rollout call of 64 rows × 128 new tokens, rows per sampler call 8/16/32/64; greedy outputs
           compared across chunk sizes.
  eval     158 problems × (4 samples + greedy) at 64 rows per call vs --eval-chunk.

Times are medians over --repeats calls after a warm-up (compile excluded); `uptime` is printed first.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_train_step import median_time  # noqa: E402  (run as bench/bench_hot_paths.py: bench/ is on sys.path)

from cts.train.batching import repad  # noqa: E402

MODEL = dict(emb_dim=64, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=256, num_layers=2, max_len=768)
GRPO = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, kl_estimator="k3", loss_agg="sequence-mean-token-mean")
CTS = dict(latent_dim=32, trajectory="step", eta=0.2, edit_steps=1, alpha_width=1.0, energy_hidden=128,
           critique_embedding="pooled", lam_align=0.1, lam_decode=0.1, lam_energy=1.0, energy_margin=1.0,
           energy_freeze=False, online_critique=False, cts_batch_size=4,
           alignment=dict(kind="sinkhorn", epsilon=0.1, tau=1.0, debiased=True, w_time=1.0, gamma=0.1),
           # an untrained base here: time the step, do not gate on the critic
           critic=dict(warmup_steps=0, min_dev_pair_accuracy=0.0))


def setup(args):
    from cts.methods.base import TrainData
    from cts.tasks.synthetic import base_sft_pairs, corrupt_solution, generate_synth_code, generate_synth_math
    from cts.teachers.programmatic import critique_many
    from cts.train.runtime import PolicyRuntime

    gen = {"synth_math": generate_synth_math, "synth_code": generate_synth_code}[args.task]
    problems = gen(1500, [2, 3, 4, 5, 6], seed=0)
    runtime = PolicyRuntime(MODEL, "char", seed=0, batch_size=64)
    r = random.Random(0)
    quads = critique_many([(p, corrupt_solution(p, r)[0]) for p in problems[:300]])
    data = TrainData(problems=problems, quadruples=quads, problems_by_id={p.id: p for p in problems},
                     sft_pairs=base_sft_pairs(problems[:1270], 0.35, 0))
    return runtime, data


def bench_sft(args, runtime, data):
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.stages.train import BASE_PAD_MULTIPLE
    from cts.train import loop as L

    loop = L.LoopConfig(steps=1200, prompts_per_step=32, learning_rate=3e-3, warmup_steps=30)
    res = {}
    for name, cfg in (("before (one pad)", SFTConfig()),
                      ("after (per batch)", SFTConfig(pad_multiple=BASE_PAD_MULTIPLE))):
        m = SFTMethod(cfg, runtime)
        params, opt = m.setup(data, loop, {"policy": runtime.init_params}, L.make_optimizer(loop), log=lambda s: None)
        fn = L.make_train_step(m, opt)
        state = opt.init(params)
        batches = [L._to_device(m.build_batch(params, np.random.default_rng([0, s]), None)[0])
                   for s in range(args.sft_batches)]
        shapes = sorted({b["sft"]["tokens"].shape[1] for b in batches})
        compile_s = {}
        with jax.set_mesh(runtime.mesh):
            for T in shapes:  # compile every shape first
                b = next(b for b in batches if b["sft"]["tokens"].shape[1] == T)
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, state, None, b)[2]["loss"])
                compile_s[T] = time.perf_counter() - t0
            per = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for b in batches:
                    jax.block_until_ready(fn(params, state, None, b)[2]["loss"])
                per.append((time.perf_counter() - t0) / len(batches))
        res[name] = statistics.median(per)
        counts = {T: sum(b["sft"]["tokens"].shape[1] == T for b in batches) for T in shapes}
        print(f"  sft {name}: {res[name] * 1e3:.1f} ms/step over {len(batches)} batches; shapes {counts}; "
              f"first call (compile + run) {', '.join(f'T={T} {s:.1f} s' for T, s in compile_s.items())}")
    a, b = res["before (one pad)"], res["after (per batch)"]
    print(f"SFT base step (B=32): before {a * 1e3:.1f} ms, after {b * 1e3:.1f} ms → {b / a:.2f}×")


def bench_updates(args, runtime, data):
    from cts.losses.grpo import GRPOConfig
    from cts.methods.critique_grpo import CritiqueGRPOConfig, CritiqueGRPOMethod
    from cts.methods.cts_terms import CTSMethod, CTSMethodConfig
    from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
    from cts.train import loop as L

    loop = L.LoopConfig(steps=30, prompts_per_step=16, group_size=4, learning_rate=1e-4, warmup_steps=3,
                        max_new_tokens=128)
    cell = {"method_config": {"loss": "grpo", "reward": "verifier", "verifier_weight": 0.5},
            "train": {"group_size": 4}, "grpo": GRPO}
    params0 = runtime.init_params
    max_len, pad_id = runtime.model_cfg.max_len, runtime.tok.pad_id

    def update_ms(method, batch):
        params, optimizer = method.setup(data, loop, {"policy": params0}, L.make_optimizer(loop), log=lambda s: None)
        fn, state, b = L.make_train_step(method, optimizer), optimizer.init(params), L._to_device(batch)

        def run():
            jax.block_until_ready(fn(params, state, params0, b)[2]["loss"])

        with jax.set_mesh(runtime.mesh):
            return median_time(run, args.repeats) * 1e3

    # one B6 batch = B3's rollout batch + the teacher's refinements (the rollouts are B3's, unchanged)
    b6 = CritiqueGRPOMethod(CritiqueGRPOConfig(reward="verifier", verifier_weight=0.5,
                                               grpo=GRPOConfig(num_generations=4, **GRPO)), runtime)
    b6.setup(data, loop, {"policy": params0}, L.make_optimizer(loop), log=lambda s: None)
    t0 = time.perf_counter()
    batch6, host = b6.build_batch({"policy": params0}, np.random.default_rng(0), jax.random.key(0))
    print(f"  B6 batch built (rollouts + teacher) in {time.perf_counter() - t0:.1f} s; grpo T = "
          f"{batch6['grpo']['tokens'].shape[1]}, refine T = {batch6['refine']['tokens'].shape[1]} (was {max_len}); "
          f"refine_frac {host['critique_grpo/refine_frac']:.2f}")
    grpo_only = {"grpo": batch6["grpo"]}
    out = {"B3": update_ms(GRPOMethod(GRPOMethodConfig.from_cell(cell), runtime), grpo_only)}

    b5 = CTSMethod(CTSMethodConfig.from_cell({**cell, "cts": CTS}), runtime)
    b5.setup(data, loop, {"policy": params0}, L.make_optimizer(loop), log=lambda s: None)
    cts5 = b5.make_cts_batch(np.random.default_rng(0), None)
    out["B5"] = update_ms(b5, {**grpo_only, "cts": cts5})

    out["B6 before"] = update_ms(b6, {**batch6, "refine": repad(batch6["refine"], max_len, pad_id)})
    out["B6 after"] = update_ms(b6, batch6)

    a6 = CTSMethod(CTSMethodConfig.from_cell({**cell, "cts": {**CTS, "online_critique": True}}), runtime)
    a6.setup(data, loop, {"policy": params0}, L.make_optimizer(loop), log=lambda s: None)
    cts6 = a6.make_cts_batch(np.random.default_rng(0), data.quadruples[:64])
    parts = ("att", "rev", "crit", "dec")
    print("  A6 cts T (att, rev, crit, dec) = " + ", ".join(str(cts6[k]["tokens"].shape[1]) for k in parts)
          + f" (was {max_len} each); B5's offline pads: "
          + ", ".join(str(cts5[k]["tokens"].shape[1]) for k in parts))
    out["A6 before"] = update_ms(a6, {**grpo_only, "cts": repad(cts6, max_len, pad_id)})
    out["A6 after"] = update_ms(a6, {**grpo_only, "cts": cts6})
    b3 = out["B3"]
    for k, v in out.items():
        print(f"update {k}: {v:.0f} ms ({v / b3:.2f}× B3)")
    print(f"B6 update after/before {out['B6 after'] / out['B6 before']:.2f}×; "
          f"A6 update after/before {out['A6 after'] / out['A6 before']:.2f}×")
    return out


def bench_sampler(args, runtime, data):
    prompts = [p.prompt for p in data.problems[:16] for _ in range(4)]
    params = runtime.init_params
    greedy = {}
    rows = {}
    for chunk in (8, 16, 32, 64):
        def call():
            return runtime.generate(params, prompts, jax.random.key(0), max_new_tokens=128, batch_size=chunk,
                                    return_ids=True)
        t0 = time.perf_counter()
        _, ids, _ = call()
        first = time.perf_counter() - t0
        t = median_time(call, args.repeats)
        row_steps = sum(len(i) + 1 for i in ids)
        rows[chunk] = t
        greedy[chunk] = runtime.generate(params, prompts[:16], jax.random.key(1), max_new_tokens=128,
                                         batch_size=chunk, greedy=True)
        print(f"sampler 64 rows × ≤128 new tokens, {chunk:2d} rows/call: {t * 1e3:.0f} ms "
              f"({t / row_steps * 1e6:.0f} µs per row-step; first call incl. compile {first:.1f} s)")
    same = all(greedy[c] == greedy[64] for c in greedy)
    best = min(rows, key=rows.get)
    print(f"sampler: best {best} rows/call = {rows[64] / rows[best]:.2f}× faster than 64; greedy identical "
          f"across chunk sizes: {same}")
    return best


def bench_eval(args, runtime, data):
    prompts = [p.prompt for p in data.problems[-158:]]
    params = runtime.init_params
    res = {}
    for chunk in sorted({64, args.eval_chunk}):
        def ev():
            runtime.generate(params, [p for p in prompts for _ in range(4)], jax.random.key(0), max_new_tokens=128,
                             batch_size=chunk)
            runtime.generate(params, prompts, jax.random.key(1), max_new_tokens=128, batch_size=chunk, greedy=True)
        res[chunk] = median_time(ev, max(1, args.repeats - 2))
        print(f"eval 158 × (4 samples + greedy), {chunk} rows/call: {res[chunk]:.1f} s")
    if len(res) == 2:
        print(f"eval {args.eval_chunk}/64: {res[args.eval_chunk] / res[64]:.2f}×")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sft-batches", type=int, default=10)
    ap.add_argument("--task", choices=["synth_math", "synth_code"], default="synth_math")
    ap.add_argument("--eval-chunk", type=int, default=16)
    ap.add_argument("--only", nargs="*", choices=["sft", "update", "sampler", "eval"],
                    default=["sft", "update", "sampler", "eval"])
    args = ap.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cores)")
    runtime, data = setup(args)
    if "sft" in args.only:
        bench_sft(args, runtime, data)
    if "update" in args.only:
        bench_updates(args, runtime, data)
    if "sampler" in args.only:
        bench_sampler(args, runtime, data)
    if "eval" in args.only:
        bench_eval(args, runtime, data)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
