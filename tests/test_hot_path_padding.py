"""Hot-path padding (issue 16): batches are padded per step to a bucket of their own longest row, not
to a whole-run or model-wide length. Padding is masked, so the loss and its gradient must equal those
of the old, longer padding (float32, summation order only: ≤ 1e-6), and the padded length is always a
multiple of the bucket ≤ max_len, so a run compiles at most max_len / bucket shapes; the per-step streams
(B6 refinements, A6 critiques) keep a high-water mark, so their shapes only grow (a few compiles a run)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_cts_critic import _config, _grpo_batch, _toy_data

from cts.train.batching import repad

TOL = 1e-6


def _assert_same_loss_and_grads(method, params, ref_params, short: dict, long: dict):
    """method.loss_and_grads (the loop's step body) on both batches: same loss, metrics and gradient."""
    f = jax.jit(method.loss_and_grads)
    la, ga, ma = f(params, ref_params, jax.tree.map(jnp.asarray, short))
    lb, gb, mb = f(params, ref_params, jax.tree.map(jnp.asarray, long))
    assert abs(float(la) - float(lb)) <= TOL * max(1.0, abs(float(lb))), (float(la), float(lb))
    for k in ma:
        np.testing.assert_allclose(np.asarray(ma[k]), np.asarray(mb[k]), rtol=1e-5, atol=TOL, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=TOL)
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(ga)) > 0  # not a vacuous check


def _runtime(max_len):
    from cts.train.runtime import PolicyRuntime

    return PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                              max_len=max_len), "char", seed=0, batch_size=4)


def test_base_sft_batches_are_trimmed_to_their_own_longest_row_in_buckets_of_32():
    from cts.methods.base import TrainData, pad_length
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.batching import bucket_length
    from cts.train.loop import LoopConfig, make_optimizer

    runtime = _runtime(256)
    rng = np.random.default_rng(0)
    # one long pair in the data sets the whole-run pad (256); most batches do not draw it
    pairs = [(f"Add {i}.", "x" * int(rng.integers(20, 120))) for i in range(63)] + [("Long.", "y" * 240)]
    loop = LoopConfig(steps=4, prompts_per_step=4)
    method = SFTMethod(SFTConfig(pad_multiple=32), runtime)
    params, _ = method.setup(TrainData(sft_pairs=pairs), loop, {"policy": runtime.init_params},
                             make_optimizer(loop), log=lambda m: None)
    whole_run = pad_length(runtime, pairs)
    assert whole_run == 256
    shapes = set()
    for s in range(12):
        batch, _ = method.build_batch(params, np.random.default_rng(s), None)
        T = batch["sft"]["tokens"].shape[1]
        longest = int(batch["sft"]["segment_ids"].sum(1).max())
        assert T == bucket_length(longest, 256, 32) and T % 32 == 0, (T, longest)
        shapes.add(T)
    assert len(shapes) <= 256 // 32 and min(shapes) < whole_run
    tok = runtime.tok
    _assert_same_loss_and_grads(method, params, None, batch, repad(batch, whole_run, tok.pad_id))
    # a cell's SFT (B0, 30 steps) keeps one shape for the run: compiles would not pay off there
    b0 = SFTMethod(SFTConfig(), runtime)
    b0.setup(TrainData(sft_pairs=pairs), loop, {"policy": runtime.init_params}, make_optimizer(loop),
             log=lambda m: None)
    assert b0.build_batch(params, np.random.default_rng(0), None)[0]["sft"]["tokens"].shape[1] == whole_run


@pytest.mark.slow
def test_b6_refinements_are_padded_to_their_steps_bucket_not_max_len():
    from cts.losses.grpo import GRPOConfig
    from cts.methods.base import TrainData
    from cts.methods.critique_grpo import CritiqueGRPOConfig, CritiqueGRPOMethod
    from cts.tasks.synthetic import generate_synth_math
    from cts.train.batching import bucket_length
    from cts.train.loop import LoopConfig, make_optimizer

    runtime = _runtime(512)
    loop = LoopConfig(steps=1, prompts_per_step=2, group_size=2, learning_rate=1e-3, max_new_tokens=16)
    method = CritiqueGRPOMethod(CritiqueGRPOConfig(reward="verifier", grpo=GRPOConfig(num_generations=2, beta=0.04)),
                                runtime)
    params, _ = method.setup(TrainData(problems=generate_synth_math(4, [2], 0)), loop,
                             {"policy": runtime.init_params}, make_optimizer(loop), log=lambda m: None)
    batch, host = method.build_batch(params, np.random.default_rng(0), jax.random.key(0))
    ref = batch["refine"]
    T = ref["tokens"].shape[1]
    longest = int(ref["segment_ids"].sum(1).max())
    assert host["critique_grpo/refine_frac"] > 0 and longest > 0
    assert T == bucket_length(longest, 512) < 512, (T, longest)
    long = {**batch, "refine": repad(ref, 512, runtime.tok.pad_id)}
    _assert_same_loss_and_grads(method, params, runtime.init_params, batch, long)
    # the next steps pad to the longest bucket seen so far: shapes only grow
    seen = [T]
    for s in range(1, 4):
        nxt = method.build_batch(params, np.random.default_rng(s), jax.random.key(s))[0]["refine"]
        bucket = bucket_length(int(nxt["segment_ids"].sum(1).max()), 512)
        seen.append(nxt["tokens"].shape[1])
        assert seen[-1] == max(seen[-2], bucket), seen


@pytest.mark.slow
def test_a6_online_critique_batches_are_padded_to_their_steps_bucket_not_max_len():
    from cts.methods.cts_terms import CTSMethod
    from cts.train.batching import bucket_length
    from cts.train.loop import LoopConfig, make_optimizer

    runtime = _runtime(512)
    data = _toy_data()
    method = CTSMethod(_config(online_critique=True, critic=dict(warmup_steps=0, min_dev_pair_accuracy=0.0)),
                       runtime)
    loop = LoopConfig(steps=4, prompts_per_step=2, group_size=2)
    params, _ = method.setup(data, loop, {"policy": runtime.init_params}, make_optimizer(loop), log=lambda m: None)
    cts = method.make_cts_batch(np.random.default_rng(0), data.quadruples)
    for part in ("att", "rev", "crit", "dec"):
        T = cts[part]["tokens"].shape[1]
        longest = int(cts[part]["segment_ids"].sum(1).max())
        assert T == bucket_length(longest, 512) < 512, (part, T, longest)
    batch = {**_grpo_batch(runtime, data), "cts": cts}
    long = {**batch, "cts": repad(cts, 512, runtime.tok.pad_id)}
    _assert_same_loss_and_grads(method, params, runtime.init_params, batch, long)
    # a step of longer critiques raises the pad; a later step of short ones keeps it (shapes only grow)
    longer = [dataclasses.replace(q, critique=q.critique * 4) for q in data.quadruples]
    crit = method.make_cts_batch(np.random.default_rng(1), longer)["crit"]
    up = crit["tokens"].shape[1]
    assert up == bucket_length(int(crit["segment_ids"].sum(1).max()), 512) > cts["crit"]["tokens"].shape[1], up
    again = method.make_cts_batch(np.random.default_rng(2), data.quadruples)
    assert again["crit"]["tokens"].shape[1] == up
    assert again["att"]["tokens"].shape[1] == cts["att"]["tokens"].shape[1]


def test_training_rollouts_sample_in_chunks_of_sampler_batch_size_and_greedy_does_not_depend_on_it():
    from cts.methods.base import TrainData
    from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
    from cts.losses.grpo import GRPOConfig
    from cts.tasks.synthetic import generate_synth_math
    from cts.train.loop import LoopConfig, make_optimizer

    runtime = _runtime(256)
    problems = generate_synth_math(8, [2], 0)
    greedy = [runtime.generate(runtime.init_params, [p.prompt for p in problems], jax.random.key(0),
                               max_new_tokens=12, batch_size=b, greedy=True) for b in (3, 8)]
    assert greedy[0] == greedy[1]
    loop = LoopConfig(steps=1, prompts_per_step=4, group_size=2, max_new_tokens=12, sampler_batch_size=3)
    method = GRPOMethod(GRPOMethodConfig(reward="verifier", grpo=GRPOConfig(num_generations=2)), runtime)
    params, _ = method.setup(TrainData(problems=problems), loop, {"policy": runtime.init_params},
                             make_optimizer(loop), log=lambda m: None)
    sizes, build = [], runtime.sampler
    runtime.sampler = lambda b, *a, **k: (sizes.append(b), build(b, *a, **k))[1]
    try:
        r = method.rollouts(params, np.random.default_rng(0), jax.random.key(0))
    finally:
        del runtime.sampler
    assert sizes == [3] and len(r.completions) == 8
