"""The one loop's pieces: batching, rewards, the non-finite guard, and a diverging run that aborts."""

import numpy as np
import pytest

from cts.model.tokenizer import CharTokenizer
from cts.train.batching import bucket_length, make_batch
from cts.losses.grpo import GRPOConfig
from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
from cts.train.loop import NonFiniteError, _check_finite
from cts.verifiers.outcome import Verdict

TOK = CharTokenizer()


def test_make_batch_masks_steps_and_flags():
    b = make_batch(TOK, ["ab", "x"], ["12\n34", "5"], 64, step_spans=[[(0, 2), (3, 5)], [(0, 1)]],
                   flag_spans=[(3, 5), None])
    # row 0: BOS a b \n | 1 2 \n 3 4 EOS
    assert b.tokens.shape == (2, 64) and b.response_start.tolist() == [4, 3]
    assert b.tokens[0, :10].tolist() == [TOK.bos_id, *TOK.encode("ab\n12\n34"), TOK.eos_id]
    assert b.loss_mask[0].tolist()[:11] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    assert b.step_ids[0].tolist()[:10] == [-1, -1, -1, -1, 0, 0, -1, 1, 1, -1]
    assert b.flag[0].tolist()[:10] == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert b.flag[1].sum() == 0 and b.segment_ids[1].sum() == 5


def test_make_batch_uses_sampled_ids_and_only_appends_eos_when_finished():
    b = make_batch(TOK, ["q"], ["ignored"], 32, response_ids=[[10, 120]], finished=[False])
    assert b.tokens[0, :5].tolist() == [TOK.bos_id, *TOK.encode("q\n"), 10, 120]
    assert b.segment_ids[0].sum() == 5  # no EOS appended to an unfinished completion


def test_make_batch_names_the_row_that_does_not_fit():
    with pytest.raises(ValueError, match="row 1 has"):
        make_batch(TOK, ["a", "b"], ["x", "y" * 40], 16)


def test_bucket_length():
    assert [bucket_length(n, 256) for n in (1, 64, 65, 300)] == [64, 64, 128, 256]


def test_rewards_per_method():
    verdicts = [Verdict(True, 1.0), Verdict(False, 0.5), Verdict(False, 0.0)]
    def rewards(**cfg):
        return GRPOMethod(GRPOMethodConfig(**cfg), runtime=None).rewards(verdicts).tolist()

    assert rewards(reward="outcome") == [1.0, 0.0, 0.0]
    assert rewards(reward="verifier", verifier_weight=0.5) == [1.5, 0.25, 0.0]


def test_method_registry_and_configs_reject_bad_names_and_values():
    from cts.methods import get_method, method_from_cell, method_names

    assert {"sft", "dpo", "grpo", "cts", "critique_grpo"} <= set(method_names())
    with pytest.raises(LookupError, match=r"unknown method 'ppo'; known methods: \[.*'critique_grpo'.*'grpo'.*\]"):
        get_method("ppo")
    with pytest.raises(LookupError, match="unknown method 'ppo'"):
        method_from_cell({"method_config": {"loss": "ppo"}}, runtime=None)
    with pytest.raises(ValueError, match="reward must be one of"):
        GRPOMethodConfig(reward="ppo")
    with pytest.raises(ValueError, match=r"num_iterations \(μ\) must be an int >= 1, got 0"):
        GRPOMethodConfig(num_iterations=0)
    with pytest.raises(TypeError):
        GRPOMethodConfig("verifier")  # kw_only
    # CTS terms ride on GRPO: the CTS plug-in is a GRPO method, whatever the block's loss says
    assert issubclass(get_method("cts"), GRPOMethod) and issubclass(get_method("critique_grpo"), GRPOMethod)


def test_the_loop_has_no_method_branches():
    import inspect

    import cts.train.loop as loop

    src = inspect.getsource(loop)
    for needle in ("spec.loss", "spec.reward", "spec.cts", "if method", '"sft" in', '"grpo" in', '"cts" in'):
        assert needle not in src, needle


def test_warmup_starts_above_zero_so_the_first_update_moves_the_weights():
    """Counted from 1: update n of W warm-up updates gets lr·(n+1)/W (counted from 0, update 0 got
    lr 0 and changed nothing); then cosine decay to lr/10 at the last update."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    from cts.train.loop import LoopConfig, make_optimizer, make_schedule

    cfg = LoopConfig(steps=10, prompts_per_step=1, learning_rate=1.0, warmup_steps=4)
    lrs = [float(make_schedule(cfg)(n)) for n in range(10)]
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] == pytest.approx(0.1, abs=0.05)
    # μ updates per step: the warm-up and decay count optimizer updates
    assert float(make_schedule(cfg, updates_per_step=2)(19)) == pytest.approx(0.1, abs=0.02)
    params = {"w": jnp.ones(3)}
    opt = make_optimizer(cfg)
    updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
    assert float(jnp.abs(optax.apply_updates(params, updates)["w"] - 1.0).max()) > 0.1  # step 0 moved it
    # no warm-up: the full rate from update 0, as before
    assert float(make_schedule(LoopConfig(steps=10, prompts_per_step=1, learning_rate=1.0, warmup_steps=0))(0)) == 1.0


def test_check_finite_names_term_and_step():
    _check_finite({"loss": 1.0, "grad_norm": 2.0}, 0)
    with pytest.raises(NonFiniteError, match=r"loss term 'cts/align' at step 7"):
        _check_finite({"loss": 1.0, "cts/align": float("nan")}, 7)
    with pytest.raises(NonFiniteError, match=r"the gradient at step 2"):
        _check_finite({"grad_norm": float("inf")}, 2)


@pytest.mark.slow
def test_a_diverging_run_aborts_with_a_diagnostic(tmp_path):
    from cts.tasks.synthetic import generate_synth_math
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.loop import LoopConfig, TrainData, train
    from cts.train.runtime import PolicyRuntime

    runtime = PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                                 max_len=256), "char", seed=0, batch_size=4)
    pairs = [(p.prompt, p.reference) for p in generate_synth_math(8, [2], 0)]
    loop = LoopConfig(steps=6, prompts_per_step=4, learning_rate=1e38, grad_clip=1e38, checkpoint_every=100)
    with pytest.raises(NonFiniteError, match=r"at step [1-5]"):
        train(runtime=runtime, init_params=runtime.init_params, ref_params=None, method=SFTMethod(SFTConfig(), runtime),
              data=TrainData(sft_pairs=pairs), loop=loop, ckpt_dir=str(tmp_path / "ckpt"))


def _tiny_grpo_run(tmp_path, mu: int, name: str):
    """One rollout batch through `train` with μ updates, for a GRPO plug-in whose rewards alternate
    1, 0 in every group (a random tiny model earns none: the advantages would all be 0)."""
    from cts.tasks.synthetic import generate_synth_math
    from cts.methods.base import TrainData
    from cts.train.loop import LoopConfig, train
    from cts.train.runtime import PolicyRuntime

    class Alternating(GRPOMethod):
        def rewards(self, verdicts):
            return (np.arange(len(verdicts)) % 2 == 0).astype(np.float32)

    runtime = PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                                 max_len=128), "char", seed=0, batch_size=4)
    problems = generate_synth_math(4, [2], 0)
    loop = LoopConfig(steps=1, prompts_per_step=2, group_size=2, learning_rate=0.05, max_new_tokens=16,
                      checkpoint_every=100)
    method = Alternating(GRPOMethodConfig(reward="outcome", num_iterations=mu,
                                          grpo=GRPOConfig(num_generations=2, beta=0.0)), runtime)
    _, rows = train(runtime=runtime, init_params=runtime.init_params, ref_params=runtime.init_params,
                    method=method, data=TrainData(problems=problems), loop=loop,
                    ckpt_dir=str(tmp_path / name), log=lambda m: None)
    return rows[-1]


@pytest.mark.slow
def test_grpo_mu_updates_per_batch_make_the_clip_act(tmp_path):
    """μ = 1 (the default): on-policy, ratio ≡ 1, the clip never acts. μ = 3 on the same batch:
    updates 2 and 3 see ρ = πθ/π_old ≠ 1 and the ε clip is active on some tokens."""
    one = _tiny_grpo_run(tmp_path, 1, "mu1")
    three = _tiny_grpo_run(tmp_path, 3, "mu3")
    assert one["grpo/ratio_mean"] == 1.0 and one["grpo/clip_frac"] == 0.0
    assert three["grpo/ratio_max"] > 1.0 + 0.28 or three["grpo/ratio_min"] < 1.0 - 0.2
    assert three["grpo/clip_frac"] > 0.0, three


def test_loop_config_defaults_are_the_workflow_configs():
    """One set of defaults: LoopConfig's equal workflow_config.yaml's `train` and `monitor` blocks
    (the base policy relies on them for the keys it does not pass)."""
    import dataclasses
    from pathlib import Path

    import yaml

    from cts.train.loop import LoopConfig

    wc = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow_config.yaml").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(LoopConfig) if f.default is not dataclasses.MISSING}
    expected = {k: v for k, v in {**wc["train"], **wc["monitor"]}.items() if k in defaults}
    assert set(defaults) - {"seed"} == set(expected), (set(defaults), set(expected))
    assert {k: defaults[k] for k in expected} == expected
