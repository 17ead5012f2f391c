"""KV-cached sampler vs the cache-less recompute decoder; top-p, temperature, EOS, log-probs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cts.model.policy import ModelConfig, build_policy, forward, token_logprobs
from cts.model.sampler import (SampleOutput, Sampler, SamplingConfig, _choose_tokens, _finish, prepare_prompts,
                               recompute_sample, top_p_mask)

CFG = ModelConfig(vocab_size=128, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                  num_layers=2, max_len=32)
B = 4
SC = SamplingConfig(max_prompt_len=8, max_new_tokens=12, greedy=True)
PAD = 0
# Mixed lengths (1, 3, 5, 8 = P) so lockstep decoding must handle per-row positions.
PROMPTS = [[5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17], [20], [30, 31, 32, 33, 34]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Train-mode model (seed 3, so the sampler's own seed-0 init weights are NOT the ones used),
    its greedy reference completions, and a Sampler whose EOS is a token that the reference emits
    mid-sequence in row 0 (so EOS handling is exercised on real model output)."""
    run_dir = str(tmp_path_factory.mktemp("mt"))
    model, mesh = build_policy(CFG, seed=3, batch_size=B, run_dir=run_dir)
    params = nnx.state(model, nnx.Param)
    for eos_probe in (2, 127, 126, 125, 124):  # find an id the greedy completions never emit
        ref_no_eos = recompute_sample(model, params, PROMPTS, jax.random.key(0), sampling=SC, eos_id=eos_probe,
                                      pad_id=PAD, mesh=mesh)
        if (ref_no_eos.lengths == SC.max_new_tokens).all():
            break
    else:
        pytest.fail("every probe EOS id appears in the greedy completions")
    row0 = ref_no_eos.tokens[0]
    # first step k >= 3 whose token has not appeared earlier in row 0
    k = next(k for k in range(3, SC.max_new_tokens) if row0[k] not in row0[:k] and row0[k] not in (PAD,))
    eos = int(row0[k])
    sampler = Sampler(CFG, SC, batch_size=B, eos_id=eos, pad_id=PAD, run_dir=run_dir)
    return dict(model=model, mesh=mesh, params=params, full=ref_no_eos.tokens, eos=eos, eos_step=k,
                sampler=sampler)


def _expected_after_eos(full, eos):
    """Truncate reference rows at their first `eos` (inclusive) and pad: the independent expectation."""
    tokens = np.full_like(full, PAD)
    lengths = np.full(len(full), full.shape[1])
    for b, row in enumerate(full):
        hits = np.flatnonzero(row == eos)
        n = hits[0] + 1 if len(hits) else len(row)
        tokens[b, :n] = row[:n]
        lengths[b] = n
    return tokens, lengths


# ----------------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------------


def test_top_p_mask_hand_computed():
    probs = jnp.array([[0.2, 0.5, 0.3]])
    mask = lambda p: np.asarray(top_p_mask(probs, jnp.float32(p)))[0].tolist()
    assert mask(0.5) == [False, True, False]  # 0.5 alone reaches p
    assert mask(0.6) == [False, True, True]  # 0.5 < 0.6 → add 0.3
    assert mask(0.8) == [False, True, True]  # 0.8 >= 0.8: minimal set stops there
    assert mask(0.81) == [True, True, True]
    assert mask(1e-6) == [False, True, False]  # always keeps the argmax


def test_choose_tokens_distribution_and_policy_logprob():
    # p = [0.5, 0.3, 0.2]; τ = 1, top_p = 0.6 keeps {0, 1} → renormalised [0.625, 0.375, 0]
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]] * 20000))
    tok, lp = _choose_tokens(logits, jax.random.key(0), jnp.float32(1.0), jnp.float32(0.6), jnp.bool_(False))
    freq = np.bincount(np.asarray(tok), minlength=3) / len(tok)
    np.testing.assert_allclose(freq, [0.625, 0.375, 0.0], atol=0.015)  # ~4.4 σ
    # the returned log-prob is the policy's, not the truncated distribution's
    np.testing.assert_allclose(np.asarray(lp), np.log([0.5, 0.3, 0.2])[np.asarray(tok)], rtol=1e-5)
    # temperature 0.5 squares and renormalises: [25, 9, 4] / 38, top_p = 1
    tok, _ = _choose_tokens(logits, jax.random.key(1), jnp.float32(0.5), jnp.float32(1.0), jnp.bool_(False))
    np.testing.assert_allclose(np.bincount(np.asarray(tok), minlength=3) / len(tok), np.array([25, 9, 4]) / 38,
                               atol=0.015)


def test_finish_pads_after_first_eos():
    tokens = jnp.array([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    logps = -jnp.ones((3, 4))
    t, n, lp = _finish(tokens, logps, eos_id=2, pad_id=0)
    assert np.asarray(t).tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert np.asarray(n).tolist() == [2, 4, 1]
    assert np.asarray(lp).tolist() == [[-1, -1, 0, 0], [-1, -1, -1, -1], [-1, 0, 0, 0]]


def test_prepare_prompts_validation():
    tokens, lengths, b = prepare_prompts(np.array([[4, 5, 0], [6, 0, 0]]), batch_size=3, max_prompt_len=4,
                                         pad_id=0, vocab_size=10)
    assert b == 2 and lengths.tolist() == [2, 1, 1] and tokens.tolist() == [[4, 5, 0, 0], [6, 0, 0, 0], [0] * 4]
    with pytest.raises(ValueError, match="prompt 1 has 5 tokens"):
        prepare_prompts([[1], [1] * 5], batch_size=2, max_prompt_len=4, pad_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="prompt 0 has 0 tokens"):
        prepare_prompts([[]], batch_size=2, max_prompt_len=4, pad_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="token id 12"):
        prepare_prompts([[1, 12]], batch_size=2, max_prompt_len=4, pad_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="got 3 prompts"):
        prepare_prompts([[1]] * 3, batch_size=2, max_prompt_len=4, pad_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(max_prompt_len=4, max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(max_prompt_len=4, max_new_tokens=4, temperature=0.0)


# ----------------------------------------------------------------------------------------------
# KV-cached sampler against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_greedy_kv_equals_recompute_on_mixed_lengths(setup):
    s, eos = setup["sampler"], setup["eos"]
    out = s(setup["params"], PROMPTS, jax.random.key(0))
    ref = recompute_sample(setup["model"], setup["params"], PROMPTS, jax.random.key(0), sampling=SC, eos_id=eos,
                           pad_id=PAD, mesh=setup["mesh"])
    assert isinstance(out, SampleOutput) and out.tokens.shape == (B, SC.max_new_tokens)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
    # EOS: rows are the no-EOS reference cut at their first EOS; row 0 stops at the chosen step
    exp_tokens, exp_lengths = _expected_after_eos(setup["full"], eos)
    np.testing.assert_array_equal(out.tokens, exp_tokens)
    np.testing.assert_array_equal(out.lengths, exp_lengths)
    assert out.lengths[0] == setup["eos_step"] + 1 and out.tokens[0, setup["eos_step"]] == eos
    assert (out.logprobs[0, out.lengths[0]:] == 0).all() and (out.logprobs[0, : out.lengths[0]] < 0).all()


@pytest.mark.slow
def test_partial_batch_and_fresh_cache_per_call(setup):
    s = setup["sampler"]
    full = s(setup["params"], PROMPTS, jax.random.key(0))
    again = s(setup["params"], PROMPTS, jax.random.key(0))  # a stale cache would change this
    np.testing.assert_array_equal(full.tokens, again.tokens)
    part = s(setup["params"], PROMPTS[1:3], jax.random.key(0))  # 2 of 4 rows, filler rows dropped
    assert part.tokens.shape == (2, SC.max_new_tokens)
    np.testing.assert_array_equal(part.tokens, full.tokens[1:3])


@pytest.mark.slow
def test_uses_given_params_not_its_own(setup, tmp_path):
    s = setup["sampler"]
    other, _ = build_policy(CFG, seed=11, batch_size=B, run_dir=str(tmp_path))
    a = s(setup["params"], PROMPTS, jax.random.key(0))
    b = s(nnx.state(other, nnx.Param), PROMPTS, jax.random.key(0))
    assert not np.array_equal(a.tokens, b.tokens)
    wrong = nnx.state(build_policy(ModelConfig(vocab_size=128, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
                                               mlp_dim=128, num_layers=1, max_len=32), seed=0, batch_size=B,
                                   run_dir=str(tmp_path))[0], nnx.Param)
    with pytest.raises(ValueError, match="parameter tree"):
        s(wrong, PROMPTS, jax.random.key(0))


@pytest.mark.slow
def test_tiny_top_p_equals_greedy_and_temperature_sampling_is_keyed(setup):
    s, params = setup["sampler"], setup["params"]
    greedy = s(params, PROMPTS, jax.random.key(0))
    compiled = s._generate._cache_size()
    nucleus = s(params, PROMPTS, jax.random.key(5), greedy=False, top_p=1e-6, temperature=1.0)
    np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)
    hot = dict(greedy=False, temperature=1.5, top_p=1.0)
    a1 = s(params, PROMPTS, jax.random.key(1), **hot)
    a2 = s(params, PROMPTS, jax.random.key(1), **hot)
    b = s(params, PROMPTS, jax.random.key(2), **hot)
    np.testing.assert_array_equal(a1.tokens, a2.tokens)
    assert not np.array_equal(a1.tokens, b.tokens)
    assert s._generate._cache_size() == compiled  # knobs are traced values: no recompilation
    # same key → same samples as the cache-less decoder (shared token-choice code and key schedule)
    ref = recompute_sample(setup["model"], params, PROMPTS, jax.random.key(1), sampling=SC, eos_id=setup["eos"],
                           pad_id=PAD, mesh=setup["mesh"], **hot)
    np.testing.assert_array_equal(a1.tokens, ref.tokens)


@pytest.mark.slow
def test_logprobs_equal_forward_over_prompt_plus_completion(setup):
    s, params, model = setup["sampler"], setup["params"], setup["model"]
    out = s(params, PROMPTS, jax.random.key(7), greedy=False, temperature=1.3)
    T = SC.max_prompt_len + SC.max_new_tokens
    seqs = np.full((B, T), PAD, np.int32)
    segs = np.zeros((B, T), np.int32)
    for b, p in enumerate(PROMPTS):
        n = out.lengths[b]
        row = p + out.tokens[b, :n].tolist()
        seqs[b, : len(row)] = row
        segs[b, : len(row)] = 1
    with jax.set_mesh(setup["mesh"]):
        logits, _ = forward(model, jnp.asarray(seqs), jnp.asarray(segs))
    lp = np.asarray(token_logprobs(logits, jnp.asarray(seqs)))
    for b, p in enumerate(PROMPTS):
        n = out.lengths[b]
        np.testing.assert_allclose(out.logprobs[b, :n], lp[b, len(p): len(p) + n], atol=1e-4)
        assert (out.logprobs[b, n:] == 0).all()
