"""The one loop's pieces: batching, rewards, the non-finite guard, and a diverging run that aborts."""

import pytest

from cts.model.tokenizer import CharTokenizer
from cts.train.batching import bucket_length, make_batch
from cts.train.loop import MethodSpec, NonFiniteError, _check_finite, grpo_rewards
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
    assert grpo_rewards(MethodSpec(loss="grpo", reward="outcome"), verdicts).tolist() == [1.0, 0.0, 0.0]
    assert grpo_rewards(MethodSpec(loss="grpo", reward="verifier", verifier_weight=0.5), verdicts).tolist() == [1.5, 0.25, 0.0]


def test_method_spec_rejects_bad_combinations():
    with pytest.raises(ValueError, match="loss"):
        MethodSpec(loss="ppo")
    with pytest.raises(ValueError, match="CTS terms ride on GRPO"):
        MethodSpec(loss="sft", cts={"lam_align": 1.0})


def test_check_finite_names_term_and_step():
    _check_finite({"loss": 1.0, "grad_norm": 2.0}, 0)
    with pytest.raises(NonFiniteError, match=r"loss term 'cts/align' at step 7"):
        _check_finite({"loss": 1.0, "cts/align": float("nan")}, 7)
    with pytest.raises(NonFiniteError, match=r"the gradient at step 2"):
        _check_finite({"grad_norm": float("inf")}, 2)


@pytest.mark.slow
def test_a_diverging_run_aborts_with_a_diagnostic(tmp_path):
    from cts.tasks.synthetic import generate_synth_math
    from cts.train.loop import LoopConfig, TrainData, train
    from cts.train.runtime import PolicyRuntime

    runtime = PolicyRuntime(dict(emb_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32, num_layers=1,
                                 max_len=256), "char", seed=0, batch_size=4)
    pairs = [(p.prompt, p.reference) for p in generate_synth_math(8, [2], 0)]
    loop = LoopConfig(steps=6, prompts_per_step=4, learning_rate=1e38, grad_clip=1e38, checkpoint_every=100)
    with pytest.raises(NonFiniteError, match=r"at step [1-5]"):
        train(runtime=runtime, init_params=runtime.init_params, ref_params=None, spec=MethodSpec(loss="sft"),
              data=TrainData(sft_pairs=pairs), loop=loop, ckpt_dir=str(tmp_path / "ckpt"))
