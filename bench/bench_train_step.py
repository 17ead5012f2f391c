"""Training-step benchmarks (run on demand: `.venv/bin/python bench/bench_train_step.py`).

  (i)   this loop's SFT step vs a bare MaxText + Optax step on identical shapes (goal ≥ 0.9×)
  (ii)  MFU of the SFT step against a matmul peak measured here (goal ≥ 50%)
  (iv)  one full GRPO step (B3) broken into rollout / verify+reward / batch / update
  (v)   B5 (B3 + CTS terms) step vs B3 step on the same batch (goal ≤ 1.25×)

Times are medians over --repeats runs after a warm-up (compile excluded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = median_time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / t


def sft_flops(cfg, B: int, T: int) -> float:
    """6·N·tokens for the dense weights plus the attention score/value matmuls (fwd+bwd = 3× fwd)."""
    d, L, V, H, hd, m = cfg.emb_dim, cfg.num_layers, cfg.vocab_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    per_layer = d * H * hd * 4 + 3 * d * m  # q, k, v, o projections; gated MLP (wi_0, wi_1, wo)
    dense = L * per_layer + d * V  # + output head
    attn = L * 2 * 2 * T * T * H * hd  # QKᵀ and AV per sequence (fwd)
    return 6 * dense * B * T + 3 * attn * B


def bench_sft(args):
    from cts.losses.sft import sft_loss
    from cts.model.policy import ModelConfig, build_policy, forward, token_logprobs
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.loop import LoopConfig, make_optimizer, make_train_step
    from cts.train.runtime import PolicyRuntime

    model_cfg = dict(emb_dim=256, num_heads=4, num_kv_heads=4, head_dim=64, mlp_dim=1024, num_layers=4, max_len=256,
                     remat_policy=args.remat)
    B, T = 16, 256
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 98, size=(B, T)), jnp.int32)
    seg = jnp.ones((B, T), jnp.int32)
    mask = jnp.ones((B, T), jnp.float32).at[:, :32].set(0.0)
    loop = LoopConfig(steps=100, prompts_per_step=B, learning_rate=1e-3)

    # bare MaxText + Optax step: the model module itself under nnx.jit
    model, mesh = build_policy(ModelConfig(vocab_size=128, **model_cfg), seed=0, batch_size=B)
    with jax.set_mesh(mesh):
        opt = nnx.Optimizer(model, make_optimizer(loop), wrt=nnx.Param)

        @nnx.jit
        def bare_step(model, opt, tokens, seg, mask):
            def loss_fn(model):
                logits, _ = forward(model, tokens, seg)
                return sft_loss(token_logprobs(logits, tokens), mask)[0]

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return loss

        t_bare = median_time(lambda: bare_step(model, opt, tokens, seg, mask).block_until_ready(), args.repeats)

    # this project's loop step
    runtime = PolicyRuntime(model_cfg, "char", seed=0, batch_size=B)
    optimizer = make_optimizer(loop)
    step = make_train_step(SFTMethod(SFTConfig(), runtime), optimizer)
    state = {"params": {"policy": runtime.init_params}}
    state["opt"] = optimizer.init(state["params"])
    batch = {"sft": {"tokens": tokens, "segment_ids": seg, "loss_mask": mask}}

    def ours():
        p, o, m = step(state["params"], state["opt"], None, batch)
        jax.block_until_ready(m["loss"])
        state["params"], state["opt"] = p, o

    with jax.set_mesh(runtime.mesh):
        t_ours = median_time(ours, args.repeats)
    flops = sft_flops(runtime.model_cfg, B, T)
    peak = matmul_peak()
    print(f"remat_policy={args.remat} (MFU counts model FLOPs only: with 'full' the backward pass "
          "also re-runs each layer's forward)")
    print(f"(i)  SFT step d=256 L=4 T=256 B=16: bare MaxText {t_bare * 1e3:.1f} ms, this loop "
          f"{t_ours * 1e3:.1f} ms → speed ratio bare/ours = {t_bare / t_ours:.3f} (goal ≥ 0.9)")
    print(f"(ii) model FLOPs/step {flops / 1e9:.2f} GFLOP → {flops / t_ours / 1e9:.1f} GFLOP/s; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s → MFU {flops / t_ours / peak:.1%} (goal ≥ 50%)")


def bench_grpo(args):
    from cts.tasks.synthetic import generate_synth_math
    from cts.teachers.programmatic import critique_many
    from cts.methods.cts_terms import CTSMethod, CTSMethodConfig
    from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
    from cts.train import loop as L
    from cts.train.runtime import PolicyRuntime

    model_cfg = dict(emb_dim=128, num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=512, num_layers=2, max_len=768)
    problems = generate_synth_math(64, [2, 3, 4, 5, 6], seed=0)
    runtime = PolicyRuntime(model_cfg, "char", seed=0, batch_size=8)
    import random

    from cts.tasks.synthetic import corrupt_solution

    r = random.Random(0)
    quads = critique_many([(p, corrupt_solution(p, r)[0]) for p in problems])  # failed attempts for CTS
    data = L.TrainData(problems=problems, quadruples=quads, problems_by_id={p.id: p for p in problems})
    loop = L.LoopConfig(steps=100, prompts_per_step=8, group_size=4, max_new_tokens=144)
    grpo = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, kl_estimator="k3", loss_agg="sequence-mean-token-mean")
    cts = dict(latent_dim=32, trajectory="step", eta=0.5, edit_steps=1, alpha_width=1.0, energy_hidden=64,
               critique_embedding="pooled", lam_align=0.1, lam_decode=0.1, lam_energy=0.1, energy_margin=1.0,
               energy_freeze=False, online_critique=False, cts_batch_size=4,
               alignment=dict(kind="sinkhorn", epsilon=0.1, tau=1.0, debiased=False, w_time=1.0, gamma=0.1),
               # the base here is an untrained model: time the step, do not gate on the critic's accuracy
               critic=dict(min_dev_pair_accuracy=0.0))
    params0 = runtime.init_params
    key = jax.random.key(0)

    # (iv) parts of one B3 step
    cell = {"method_config": {"loss": "grpo", "reward": "verifier", "verifier_weight": 0.5},
            "train": {"group_size": 4}, "grpo": grpo}
    b3 = GRPOMethod(GRPOMethodConfig.from_cell(cell), runtime)
    b3.setup(data, loop, {"policy": params0}, L.make_optimizer(loop))
    t0 = time.perf_counter()
    texts, ids, fin = runtime.generate(params0, [p.prompt for p in problems[:8] for _ in range(4)], key,
                                       max_new_tokens=144, batch_size=32, return_ids=True)
    t_compile_sample = time.perf_counter() - t0
    t_sample = median_time(lambda: runtime.generate(params0, [p.prompt for p in problems[:8] for _ in range(4)],
                                                    key, max_new_tokens=144, batch_size=32), args.repeats)
    from cts.verifiers.outcome import verify_many

    items = list(zip([p for p in problems[:8] for _ in range(4)], texts))
    t_verify = median_time(lambda: verify_many(items), args.repeats)
    rng = np.random.default_rng(0)

    def build():
        return b3.build_batch({"policy": params0}, np.random.default_rng(0), key)

    batch3, host = build()
    t_build_total = median_time(build, args.repeats)  # sample + verify + batch
    t_batch = max(t_build_total - t_sample - t_verify, 0.0)

    def step_time(method):
        params, optimizer = method.setup(data, loop, {"policy": params0}, L.make_optimizer(loop))
        fn = L.make_train_step(method, optimizer)
        opt_state = optimizer.init(params)
        batch = dict(batch3)
        if hasattr(method, "make_cts_batch"):
            batch["cts"] = method.make_cts_batch(rng, None)
        batch = L._to_device(batch)

        def run():
            _, _, m = fn(params, opt_state, params0, batch)
            jax.block_until_ready(m["loss"])

        with jax.set_mesh(runtime.mesh):
            return median_time(run, args.repeats)

    t_update3 = step_time(GRPOMethod(GRPOMethodConfig.from_cell(cell), runtime))
    t_update5 = step_time(CTSMethod(CTSMethodConfig.from_cell({**cell, "cts": cts}), runtime))
    total3 = t_build_total + t_update3
    print(f"(iv) B3 GRPO step (8 prompts × G=4, 144 new tokens, d=128 L=2): total {total3 * 1e3:.0f} ms = "
          f"rollout {t_sample * 1e3:.0f} ms ({t_sample / total3:.0%}) + verify/reward {t_verify * 1e3:.0f} ms "
          f"+ batch {t_batch * 1e3:.0f} ms + update {t_update3 * 1e3:.0f} ms ({t_update3 / total3:.0%}); "
          f"sampler compile {t_compile_sample:.1f} s")
    total5 = t_build_total + t_update5
    print(f"(v)  B5 vs B3 on the same batch: update {t_update5 * 1e3:.0f} vs {t_update3 * 1e3:.0f} ms "
          f"({t_update5 / t_update3:.2f}×); whole step {total5 / total3:.2f}× (goal ≤ 1.25×)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=["sft", "grpo"], default=None)
    ap.add_argument("--remat", choices=["none", "minimal", "full"], default="none",
                    help="ModelConfig.remat_policy of the SFT benchmark (the project's default: none)")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s), {os.cpu_count()} cores)")
    if args.only in (None, "sft"):
        bench_sft(args)
    if args.only in (None, "grpo"):
        bench_grpo(args)


if __name__ == "__main__":
    main()
