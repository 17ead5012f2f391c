"""Sharded training (MaxText mesh, fsdp × tensor) equals unsharded training, on 8 simulated CPUs.

JAX fixes its device count when the backend starts, so the 8-device part runs in a SUBPROCESS
(`python tests/test_sharded.py OUT.json` with XLA_FLAGS=--xla_force_host_platform_device_count=8).
It builds the tiny policy twice — unsharded (replicated weights, today's path) and
Parallelism(fsdp=4, tensor=2) — and measures, on the same fixed batches:

  * weights: max |w_sharded − w_unsharded| over all parameters (same seed ⇒ 0);
  * layout: every parameter's PartitionSpec and the shape of one device's shard;
  * SFT: one full `make_train_step(SFTMethod(...), make_optimizer(...))`
    of the project's loop (loss → grads → clip → AdamW): the loss at the initial weights, the
    global grad norm and the updated parameters;
  * GRPO: the loss of the GRPO method (outcome reward) with fixed rewards, policy = initial weights and
    reference = the weights after the SFT step (so the KL term is not zero).

The tests below assert on those measurements; the parent process never sees 8 devices.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

MODEL = dict(emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128, max_len=32)
N_DEVICES, FSDP, TENSOR = 8, 4, 2
B = 8  # rows: divisible by the 8 devices (MaxText's per-device batch) and by data×fsdp = 4
GROUP = 4  # GRPO group size G: two groups of four rows


# ----------------------------------------------------------------------------- the 8-device worker

def _fixed_rows():
    """(prompts, responses) for B rows; lengths differ so padding and loss masks vary by row."""
    prompts = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (2, 9), (6, 1), (4, 4), (8, 3)]]
    responses = ["3", "7", "15 is it", "14", "11", "seven", "8", "11 done"]
    return prompts, responses


def _leaves(tree):
    import jax

    return [(jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def _max_abs_diff(a_tree, b_tree) -> tuple[float, float]:
    """(max |a − b|, max |a − b| / max |a|) over matching leaves of two pytrees of equal structure."""
    worst_abs, worst_rel = 0.0, 0.0
    for (ka, a), (kb, b) in zip(_leaves(a_tree), _leaves(b_tree), strict=True):
        assert ka == kb, (ka, kb)
        d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        worst_abs = max(worst_abs, d)
        worst_rel = max(worst_rel, d / max(float(np.max(np.abs(a))), 1e-30))
    return worst_abs, worst_rel


def _worker(out_path: str) -> None:
    import jax
    import jax.numpy as jnp

    from cts.model.policy import batch_sharding, shard_batch
    from cts.losses.grpo import GRPOConfig
    from cts.train.batching import make_batch
    from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.loop import LoopConfig, make_optimizer, make_train_step
    from cts.train.runtime import PolicyRuntime

    assert jax.device_count() == N_DEVICES, jax.devices()
    runtimes = {
        "unsharded": PolicyRuntime(MODEL, "char", seed=0, batch_size=B),
        "sharded": PolicyRuntime(MODEL, "char", seed=0, batch_size=B,
                                 parallelism={"fsdp": FSDP, "tensor": TENSOR}),
    }
    tok = runtimes["unsharded"].tok
    prompts, responses = _fixed_rows()
    sft = make_batch(tok, prompts, responses, MODEL["max_len"], pad_to=MODEL["max_len"]).as_dict()
    # rewards: group 1 mixed, group 2 mixed with a different spread (non-zero advantages)
    grpo = {**sft, "rewards": np.array([1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.25], np.float32)}

    loop_cfg = LoopConfig(steps=10, prompts_per_step=B, learning_rate=1e-3, grad_clip=1.0)
    grpo_cfg = GRPOConfig(num_generations=GROUP, beta=0.04, epsilon_low=0.2, epsilon_high=0.28)
    out: dict = {"mesh": {k: int(v) for k, v in runtimes["sharded"].mesh.shape.items() if v > 1}}
    results = {}
    for name, rt in runtimes.items():
        # As train() does: params/opt_state replicated unless already laid out on the mesh.
        replicated = jax.sharding.NamedSharding(rt.mesh, jax.sharding.PartitionSpec())

        def commit(x, replicated=replicated):
            return x if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding) else jax.device_put(x, replicated)

        optimizer = make_optimizer(loop_cfg)
        params = {"policy": rt.init_params}
        opt_state = optimizer.init(params)
        params, opt_state = jax.tree.map(commit, (params, opt_state))
        dev0 = jax.devices()[0]

        def bytes_on_dev0(tree):
            return int(sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev0))

        out.setdefault("bytes_dev0", {})[name] = {"params": bytes_on_dev0(params), "opt_state": bytes_on_dev0(opt_state)}
        if name == "sharded":
            put = lambda b, rt=rt: shard_batch(b, rt.mesh)  # noqa: E731
        else:
            put = lambda b: jax.tree.map(jnp.asarray, b)  # noqa: E731  (loop._to_device today)
        sft_dev = {"sft": put(sft)}
        # metrics["loss"] is the SFT loss at the initial weights (value_and_grad, before the update)
        step = make_train_step(SFTMethod(SFTConfig(), rt), optimizer)
        new_params, _, metrics = step(params, opt_state, None, sft_dev)
        grpo_loss_fn = GRPOMethod(GRPOMethodConfig(reward="outcome", grpo=grpo_cfg), rt).loss
        grpo_dev = {"grpo": put(grpo)}
        gloss, gmetrics = jax.jit(grpo_loss_fn)(params, new_params["policy"], grpo_dev)
        results[name] = dict(params=params, new_params=new_params, sft_loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]),
                             grpo_loss=float(gloss), grpo_kl=float(gmetrics["grpo/kl"]))
        if name == "sharded":
            tokens_dev = sft_dev["sft"]["tokens"]
            out["batch_spec"] = str(tokens_dev.sharding.spec)
            out["batch_shard_shape"] = list(tokens_dev.addressable_shards[0].data.shape)
            out["batch_sharding_ok"] = tokens_dev.sharding.is_equivalent_to(batch_sharding(rt.mesh, 2), 2)

    def layout(tree):
        rows = {}
        for k, v in jax.tree_util.tree_leaves_with_path(tree):
            spec = list(v.sharding.spec)
            while spec and spec[-1] is None:  # jit outputs drop trailing Nones: P(a, b, None) == P(a, b)
                spec.pop()
            rows[jax.tree_util.keystr(k)] = dict(
                shape=list(v.shape), spec=spec,
                shard_shape=list(v.addressable_shards[0].data.shape), n_devices=len(v.sharding.device_set))
        return rows

    u, s = results["unsharded"], results["sharded"]
    out["init_max_abs_diff"], _ = _max_abs_diff(u["params"], s["params"])
    out["step_max_abs_diff"], out["step_max_rel_diff"] = _max_abs_diff(u["new_params"], s["new_params"])
    out["step_max_abs_update"], _ = _max_abs_diff(u["params"], u["new_params"])  # the step actually moved
    out["layout_init"] = layout(s["params"]["policy"])
    out["layout_after_step"] = layout(s["new_params"]["policy"])
    out["layout_unsharded"] = layout(u["params"]["policy"])
    for key in ("sft_loss", "grad_norm", "grpo_loss", "grpo_kl"):
        out[key] = {"unsharded": u[key], "sharded": s[key]}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)


# ----------------------------------------------------------------------------- tests (parent process)

@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "measured.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}").strip()}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"8-device worker failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    with open(out) as f:
        return json.load(f)


def _rel(pair: dict) -> float:
    return abs(pair["sharded"] - pair["unsharded"]) / max(abs(pair["unsharded"]), 1e-30)


@pytest.mark.slow
def test_mesh_is_fsdp_by_tensor(measured):
    assert measured["mesh"] == {"fsdp": FSDP, "tensor": TENSOR}


@pytest.mark.slow
def test_weights_really_sharded(measured):
    for layout in (measured["layout_init"], measured["layout_after_step"]):  # the step keeps the layout
        # the MLP input kernel [D=64, F=128] splits D over fsdp and F over tensor
        wi = layout["['decoder']['layers_0']['mlp']['wi_0']['kernel'].value"]
        assert wi["spec"] == ["fsdp", "tensor"]
        assert wi["shard_shape"] == [64 // FSDP, 128 // TENSOR] and wi["n_devices"] == N_DEVICES
        # attention query kernel [D, heads, head_dim] = P('fsdp', 'tensor', None): heads over tensor
        q = layout["['decoder']['layers_0']['self_attention']['query']['kernel'].value"]
        assert q["spec"] == ["fsdp", "tensor"] and q["shard_shape"] == [16, 2, 16]
        n_split = sum(np.prod(r["shard_shape"]) < np.prod(r["shape"]) for r in layout.values())
        assert n_split == len(layout), "every weight of this model has a shardable axis"
    # and the unsharded build really is replicated (so the comparison is sharded vs not)
    assert all(r["shard_shape"] == r["shape"] for r in measured["layout_unsharded"].values())


@pytest.mark.slow
def test_per_device_bytes_fall_by_the_fsdp_factor(measured):
    """Each weight's PartitionSpec, and one device's bytes of parameters and Adam state."""
    layout = measured["layout_init"]
    for key, r in sorted(layout.items()):
        print(f"{key:70s} {str(r['shape']):16s} P{tuple(r['spec'])!s:24s} shard {r['shard_shape']}")
    b = measured["bytes_dev0"]
    print("bytes on device 0:", b)
    expected = sum(int(np.prod(r["shard_shape"])) * 4 for r in layout.values())  # float32 weights
    assert b["sharded"]["params"] == expected
    assert b["unsharded"]["params"] == sum(int(np.prod(r["shape"])) * 4 for r in layout.values())
    for what in ("params", "opt_state"):  # Adam's m and v follow the weights' layout
        assert b["unsharded"][what] / b["sharded"][what] >= FSDP, (what, b)


@pytest.mark.slow
def test_batch_on_data_fsdp_axes(measured):
    assert measured["batch_sharding_ok"]
    assert measured["batch_shard_shape"] == [B // FSDP, MODEL["max_len"]]


@pytest.mark.slow
def test_same_seed_same_weights(measured):
    assert measured["init_max_abs_diff"] == 0.0


@pytest.mark.slow
def test_sft_loss_and_train_step_match(measured):
    assert measured["sft_loss"]["unsharded"] > 1.0  # ≈ log 128 for an untrained model, not a trivial 0
    assert _rel(measured["sft_loss"]) < 1e-5
    assert _rel(measured["grad_norm"]) < 1e-5
    assert measured["step_max_abs_update"] > 1e-4  # the step changed the weights
    assert measured["step_max_rel_diff"] < 1e-5


@pytest.mark.slow
def test_grpo_loss_matches(measured):
    assert measured["grpo_kl"]["unsharded"] > 0  # reference ≠ policy, so the KL term is exercised
    assert np.isfinite(measured["grpo_loss"]["unsharded"]) and measured["grpo_loss"]["unsharded"] != 0.0
    assert _rel(measured["grpo_loss"]) < 1e-5
    assert _rel(measured["grpo_kl"]) < 1e-4


# ----------------------------------------------------------------------------- fast, single device

def test_parallelism_validation_and_keys():
    from cts.model.policy import Parallelism

    assert Parallelism.coerce(None) == Parallelism() and not Parallelism().sharded
    assert Parallelism().maxtext_keys(8) == {}  # unsharded: MaxText's default mesh, untouched
    assert Parallelism.coerce({"fsdp": 4, "tensor": 2}).maxtext_keys(16) == {
        "ici_data_parallelism": 2, "ici_fsdp_parallelism": 4, "ici_tensor_parallelism": 2,
        "dcn_data_parallelism": 1, "dcn_fsdp_parallelism": 1, "num_slices": 1}
    # 2 × v5e-16: FSDP over a slice's 16 chips, data across the 2 slices (DCN)
    assert Parallelism.coerce({"fsdp": 16, "dcn_data": 2}).maxtext_keys(32) == {
        "ici_data_parallelism": 1, "ici_fsdp_parallelism": 16, "ici_tensor_parallelism": 1,
        "dcn_data_parallelism": 2, "dcn_fsdp_parallelism": 1, "num_slices": 2}
    # several processes, unsharded: the mesh is spelled out (data over every device)
    assert Parallelism().maxtext_keys(4, global_mesh=True)["ici_data_parallelism"] == 4
    with pytest.raises(ValueError, match="multiple of 16 devices per slice, but JAX sees 8"):
        Parallelism(fsdp=16, dcn_data=2).maxtext_keys(16)
    with pytest.raises(ValueError, match="multiple of 8 devices per slice, but JAX sees 4"):
        Parallelism(fsdp=4, tensor=2).maxtext_keys(4)
    with pytest.raises(ValueError, match="Parallelism.tensor"):
        Parallelism(tensor=0)
    with pytest.raises(ValueError, match="unknown keys \\['data'\\]"):
        Parallelism.coerce({"fsdp": 2, "data": 2})
    with pytest.raises(TypeError, match="parallelism"):
        Parallelism.coerce(4)


def test_shard_batch_single_device():
    import jax
    from jax.sharding import PartitionSpec

    from cts.model.policy import shard_batch

    mesh = jax.make_mesh((1, 1), ("data", "fsdp"))
    batch = {"sft": {"tokens": np.arange(6).reshape(3, 2), "rewards": np.ones(3, np.float32)}, "step": np.int32(3)}
    out = shard_batch(batch, mesh)
    assert out["sft"]["tokens"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
    assert out["sft"]["rewards"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert out["step"].sharding.spec == PartitionSpec()
    np.testing.assert_array_equal(out["sft"]["tokens"], batch["sft"]["tokens"])


if __name__ == "__main__":  # the 8-device worker (see module docstring)
    _worker(sys.argv[1])


def test_rollouts_and_eval_build_their_runtime_on_the_run_mesh(tmp_path, monkeypatch):
    """teacher_rollouts samples from the base on the run's mesh (the base final.json records none);
    eval_cell uses the cell's recorded mesh; no mesh named → the single-device default."""
    import cts.train.artifacts as artifacts
    from cts.io import atomic_write_json

    seen = []

    class RecordingRuntime:
        def __init__(self, model_cfg, tokenizer, *, seed, batch_size, parallelism=None):
            seen.append(parallelism)

    monkeypatch.setattr(artifacts, "PolicyRuntime", RecordingRuntime)
    monkeypatch.setattr(artifacts, "load_final_params", lambda runtime, path: None)
    base, cell = tmp_path / "base.json", tmp_path / "cell.json"
    atomic_write_json(str(base), {"config": {"model": {}, "tokenizer": "char"}})
    atomic_write_json(str(cell), {"config": {"model": {}, "tokenizer": "char", "parallelism": {"fsdp": 2}}})
    artifacts.runtime_from_final(str(base), 4, parallelism={"fsdp": 4})
    artifacts.runtime_from_final(str(cell), 4)
    artifacts.runtime_from_final(str(base), 4)
    assert seen == [{"fsdp": 4}, {"fsdp": 2}, None]
    rules = (Path(__file__).resolve().parents[1] / "rules" / "teacher.smk").read_text()
    rollouts_rule = rules.split("rule teacher_rollouts:")[1].split("\nrule ")[0]
    assert 'parallelism=config.get("parallelism")' in rollouts_rule
