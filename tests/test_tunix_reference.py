"""tests/oracles/tunix_reference.py: the project's B0/B1/B2 losses against Tunix 0.1.7's trainer code on the same
MaxText model (wrapped in maxtext's TunixMaxTextAdapter).

The pure loss functions were already matched on precomputed log-probs
(tests/test_losses_tunix_parity.py); here the whole path is compared: batch layout (our right-
padded rows vs Tunix's left-padded prompts and pad-id masks), positions, attention masking,
log-prob shift, the frozen reference, the optimizer step. Expected agreement is float32 rounding:
values and gradients within 1e-5.

Each side with the reference = the policy's own weights (what the loop does at step 0) leaves the
DPO loss at log 2 and the on-policy GRPO loss at 0 whatever the log-probs are, so those cases
compare GRADIENTS (and log-prob metrics); a perturbed reference gives non-trivial values.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tunix")
pytest.importorskip("maxtext")

from cts.losses.grpo import GRPOConfig  # noqa: E402
from cts.train.batching import make_batch  # noqa: E402
from cts.methods.dpo import DPOConfig, DPOMethod  # noqa: E402
from cts.methods.grpo import GRPOMethod, GRPOMethodConfig  # noqa: E402
from cts.methods.sft import SFTConfig, SFTMethod  # noqa: E402
from tests.oracles import tunix_reference as tb  # noqa: E402

# A small but non-degenerate decoder: 2 layers, grouped-query attention (4 query / 2 KV heads).
MODEL = dict(emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, num_layers=2,
             max_len=64)
TOL = dict(rtol=1e-5, atol=1e-5)
PAD = 32  # padded row width


@pytest.fixture(scope="module")
def rt():
    from cts.train.runtime import PolicyRuntime

    return PolicyRuntime(MODEL, "char", seed=0, batch_size=4)


@pytest.fixture(scope="module")
def perturbed(rt):
    """A reference ≠ policy: every weight shifted by a deterministic 0.05·sin pattern."""
    return jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                        rt.init_params)


def _project_loss(method, params, ref_params, key, batch):
    """The loss the loop trains on: the method plug-in's `loss`."""
    return method.loss({"policy": params}, ref_params, {key: jax.tree.map(jnp.asarray, batch)})


def _max_abs_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) > 0
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))


def _max_abs(a):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))


# ==============================================================================
# Batch conversion (no model)
# ==============================================================================

def test_split_prompt_completion_hand_example():
    # pad 0; rows: prompt [5 6] + response [7 8 2]; prompt [5] + response [9]
    batch = {
        "tokens": np.array([[5, 6, 7, 8, 2, 0], [5, 9, 0, 0, 0, 0]]),
        "segment_ids": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]),
        "loss_mask": np.array([[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]], np.float32),
    }
    out = tb.split_prompt_completion(batch, pad_id=0)
    np.testing.assert_array_equal(out["prompt_ids"], [[5, 6], [0, 5]])  # left-padded
    np.testing.assert_array_equal(out["prompt_mask"], [[True, True], [False, True]])
    np.testing.assert_array_equal(out["completion_ids"], [[7, 8, 2], [9, 0, 0]])  # right-padded
    np.testing.assert_array_equal(out["completion_mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(out["response_start"], [2, 1])
    wide = tb.split_prompt_completion(batch, pad_id=0, completion_width=5)
    np.testing.assert_array_equal(wide["completion_ids"], [[7, 8, 2, 0, 0], [9, 0, 0, 0, 0]])


def test_split_prompt_completion_rejects_bad_rows():
    good = {"tokens": np.array([[5, 6, 7, 0]]), "segment_ids": np.array([[1, 1, 1, 0]]),
            "loss_mask": np.array([[0, 1, 1, 0]], np.float32)}
    with pytest.raises(ValueError, match=r"row 0, column 2: token 0"):  # a real token == pad id
        tb.split_prompt_completion({**good, "tokens": np.array([[5, 6, 0, 0]])}, pad_id=0)
    with pytest.raises(ValueError, match=r"row 0: loss_mask must be 1 exactly on columns \[1, 3\)"):
        tb.split_prompt_completion({**good, "loss_mask": np.array([[0, 1, 0, 0]], np.float32)},
                                   pad_id=0)
    with pytest.raises(ValueError, match="row 0 has no supervised token"):
        tb.split_prompt_completion({**good, "loss_mask": np.zeros((1, 4), np.float32)}, pad_id=0)
    with pytest.raises(KeyError, match="loss_mask"):
        tb.split_prompt_completion({"tokens": good["tokens"], "segment_ids": good["segment_ids"]},
                                   pad_id=0)
    with pytest.raises(ValueError, match="completion_width=1 < longest completion"):
        tb.split_prompt_completion(good, pad_id=0, completion_width=1)


def test_grpo_config_mapping_and_unmappable_settings():
    pytest.importorskip("tunix.rl.grpo.grpo_learner")
    t = tb.tunix_grpo_config(GRPOConfig(num_generations=4, beta=0.1, epsilon_low=0.2,
                                        epsilon_high=0.28, kl_estimator="k1",
                                        loss_agg="token-mean"))
    assert (t.num_generations, t.beta, t.epsilon, t.epsilon_high) == (4, 0.1, 0.2, 0.28)
    assert (t.kl_loss_mode, t.loss_agg_mode, t.advantage_estimator) == ("kl", "token-mean", "grpo")
    with pytest.raises(ValueError, match="sample std"):
        tb.tunix_grpo_config(GRPOConfig(num_generations=2, adv_std="population"))
    with pytest.raises(ValueError, match="max_completion_length"):
        tb.tunix_grpo_config(GRPOConfig(num_generations=2, loss_agg="dr-grpo"))


# ==============================================================================
# B0: SFT
# ==============================================================================

SFT_PROMPTS = ["1+2=", "33*4=", "7-5=", "9*9="]


def _sft_batch(rt, step=0):
    responses = [f"{step}3", "132 so 132", "2", "81"]
    return make_batch(rt.tok, SFT_PROMPTS, responses, rt.model_cfg.max_len, pad_to=PAD).as_dict()


@pytest.mark.slow
def test_sft_loss_matches_tunix_default_loss(rt):
    batch = _sft_batch(rt)
    ours, _ = _project_loss(SFTMethod(SFTConfig(), rt), rt.init_params, None, "sft", batch)
    theirs = tb.tunix_sft_loss(rt, rt.init_params, batch)
    assert 3.0 < float(ours) < 6.0  # an untrained 128-way model: NLL near log 128 ≈ 4.85
    np.testing.assert_allclose(theirs, ours, **TOL)


@pytest.mark.slow
def test_sft_three_steps_peft_trainer_matches_project_train_step(rt):
    # lr 1e-2 moves the loss a lot per step (4.8 → 1.6 → 1.0), so a missing or different update
    # on either side shows. Step 1 is the same computation (1e-5). Later steps: both sides feed
    # float32 gradients that differ in rounding into AdamW, whose first steps move every weight
    # by about ±lr whatever the gradient's size; rounding differences stay ~1e-6 in the loss
    # (measured 4.8e-7) — 1e-4 leaves room without hiding a wrong update (≥ 1e-2 here).
    batches = [_sft_batch(rt, step) for step in range(3)]
    theirs = tb.run_tunix_sft(rt, rt.init_params, batches, 1e-2, weight_decay=0.1)
    ours = tb.run_project_sft(rt, rt.init_params, batches, 1e-2, weight_decay=0.1)
    assert ours[2] < ours[1] < ours[0]
    np.testing.assert_allclose(theirs[0], ours[0], **TOL)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


# ==============================================================================
# B1: DPO
# ==============================================================================

def _dpo_batch(rt):
    prompts = ["1+2=", "33*4="]
    chosen, rejected = ["3", "132"], ["4", "131 or so"]
    return make_batch(rt.tok, prompts * 2, chosen + rejected, rt.model_cfg.max_len,
                      pad_to=PAD).as_dict()


DPO_METRICS = [("dpo/rewards_chosen", "rewards/chosen"), ("dpo/rewards_rejected", "rewards/rejected"),
               ("dpo/reward_margin", "rewards/margin"), ("dpo/accuracy", "rewards/accuracy"),
               ("dpo/logps_chosen", "log_probs/chosen"), ("dpo/logps_rejected", "log_probs/rejected")]


@pytest.mark.slow
def test_dpo_same_reference_value_and_gradient_match(rt):
    batch, p = _dpo_batch(rt), rt.init_params
    method = DPOMethod(DPOConfig(beta=0.1), rt)
    with jax.set_mesh(rt.mesh):  # set_mesh is not allowed inside the grad trace
        (ours, m), g_ours = jax.value_and_grad(
            lambda q: _project_loss(method, q, p, "dpo", batch), has_aux=True)(p)
        (theirs, aux), g_theirs = jax.value_and_grad(
            lambda q: tb.tunix_dpo_loss(rt, q, p, batch, beta=0.1), has_aux=True)(p)
    np.testing.assert_allclose([ours, theirs], [math.log(2)] * 2, **TOL)  # h = 0 at the reference
    np.testing.assert_allclose(aux["log_probs/chosen"], m["dpo/logps_chosen"], **TOL)
    np.testing.assert_allclose(aux["log_probs/rejected"], m["dpo/logps_rejected"], **TOL)
    assert _max_abs(g_ours) > 1e-2  # a real gradient: −β/2 ∇(log π(y_w) − log π(y_l))
    assert _max_abs_diff(g_ours, g_theirs) < 1e-6


@pytest.mark.slow
def test_dpo_perturbed_reference_value_and_metrics_match(rt, perturbed):
    batch = _dpo_batch(rt)
    ours, m = _project_loss(DPOMethod(DPOConfig(beta=0.1), rt), rt.init_params, perturbed,
                            "dpo", batch)
    theirs, aux = tb.tunix_dpo_loss(rt, rt.init_params, perturbed, batch, beta=0.1)
    assert abs(float(ours) - math.log(2)) > 1e-3  # the reference really differs
    np.testing.assert_allclose(theirs, ours, **TOL)
    for ours_key, tunix_key in DPO_METRICS:
        np.testing.assert_allclose(aux[tunix_key], m[ours_key], err_msg=ours_key, **TOL)


def test_dpo_rejects_pairs_with_different_prompts(rt):
    batch = make_batch(rt.tok, ["1+2=", "2+2=", "1+2=", "2+3="], ["3", "4", "4", "5"],
                       rt.model_cfg.max_len, pad_to=PAD).as_dict()
    with pytest.raises(ValueError, match="chosen row 1 and rejected row 3 have different prompts"):
        tb.tunix_dpo_loss(rt, rt.init_params, rt.init_params, batch)


# ==============================================================================
# B2: GRPO (and B4's token-level penalty)
# ==============================================================================

def _grpo_batch(rt, flag_spans=None):
    # two groups of G = 2; one unfinished completion (no EOS) and unequal lengths
    prompts = ["1+2=", "1+2=", "3*3=", "3*3="]
    completions = ["3", "4 no", "9 yes", "10"]
    b = make_batch(rt.tok, prompts, completions, rt.model_cfg.max_len, pad_to=PAD,
                   finished=[True, False, True, True], flag_spans=flag_spans).as_dict()
    b["rewards"] = np.array([1.0, 0.0, 1.0, 0.25], np.float32)
    return b


GRPO_CFG = GRPOConfig(num_generations=2, beta=0.04, epsilon_low=0.2, epsilon_high=0.28,
                      kl_estimator="k3", loss_agg="sequence-mean-token-mean")


@pytest.mark.slow
def test_grpo_same_reference_value_and_gradient_match(rt):
    batch, p = _grpo_batch(rt), rt.init_params
    with jax.set_mesh(rt.mesh):
        (ours, m), g_ours = jax.value_and_grad(
            lambda q: _project_loss(GRPOMethod(GRPOMethodConfig(reward="outcome", grpo=GRPO_CFG), rt), q, p,
                                  "grpo", batch),
            has_aux=True)(p)
        (theirs, aux), g_theirs = jax.value_and_grad(
            lambda q: tb.tunix_grpo_loss(rt, q, p, batch, GRPO_CFG), has_aux=True)(p)
    np.testing.assert_allclose(theirs, ours, **TOL)
    np.testing.assert_allclose(aux["advantage/max"], m["grpo/adv_max"], **TOL)
    np.testing.assert_allclose(aux["advantage/min"], m["grpo/adv_min"], **TOL)
    assert _max_abs(g_ours) > 1e-2  # on-policy: Â ∇ log π, non-zero
    assert _max_abs_diff(g_ours, g_theirs) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg,kl,step_penalty", [
    ("sequence-mean-token-mean", "k3", 0.0),  # B2
    ("token-mean", "k1", 0.5),                # B4-style token advantages, other agg and KL
])
def test_grpo_perturbed_reference_matches(rt, perturbed, loss_agg, kl, step_penalty):
    cfg = GRPOConfig(num_generations=2, beta=0.3, epsilon_low=0.2, epsilon_high=0.28,
                     kl_estimator=kl, loss_agg=loss_agg)
    batch = _grpo_batch(rt, flag_spans=[None, (0, 2), (2, 5), None])
    method = GRPOMethod(GRPOMethodConfig(reward="critique" if step_penalty else "outcome",
                                         critique_penalty=step_penalty, grpo=cfg), rt)
    ours, m = _project_loss(method, rt.init_params, perturbed, "grpo", batch)
    theirs, aux = tb.tunix_grpo_loss(rt, rt.init_params, perturbed, batch, cfg,
                                     step_penalty=step_penalty)
    assert abs(float(m["grpo/kl"])) > 1e-3  # the KL term is live (k1 may be negative)
    np.testing.assert_allclose(theirs, ours, **TOL)
    np.testing.assert_allclose(aux["kl"], m["grpo/kl"], **TOL)
    np.testing.assert_allclose(aux["kl_loss"], m["grpo/kl_loss"], **TOL)
    np.testing.assert_allclose(aux["advantage/min"], m["grpo/adv_min"], **TOL)
