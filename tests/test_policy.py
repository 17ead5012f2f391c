"""The MaxText policy: shapes, post-norm hidden, log-probs, padding invariance, seeds, jit/grad."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cts.model.policy import ModelConfig, build_policy, forward, output_head_weight, token_logprobs

CFG = ModelConfig(vocab_size=128, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                  num_layers=2, max_len=32)
B, T = 2, 16


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_policy(CFG, seed=0, batch_size=B, run_dir=str(tmp_path_factory.mktemp("mt")))


def _tokens(seed, shape=(B, T)):
    return jnp.asarray(np.random.RandomState(seed).randint(3, 99, shape), jnp.int32)


def test_token_logprobs_hand_computed():
    # V = 2, logits [0, log 3] → p = [1/4, 3/4]; logits [0, 0] → p = [1/2, 1/2].
    logits = jnp.array([[[0.0, np.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])  # (1, 3, 2)
    tokens = jnp.array([[0, 1, 0]])
    out = token_logprobs(logits, tokens)
    np.testing.assert_allclose(out, [[0.0, np.log(0.75), np.log(0.5)]], rtol=1e-6)
    with pytest.raises(ValueError, match="token_logprobs"):
        token_logprobs(logits, tokens[:, :2])


def test_token_logprobs_matches_numpy_reference():
    rs = np.random.RandomState(1)
    logits = rs.randn(3, 7, 11).astype(np.float32) * 3
    tokens = rs.randint(0, 11, (3, 7))
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))  # (3, 7, 11)
    ref = np.zeros((3, 7))
    for b in range(3):
        for t in range(1, 7):
            ref[b, t] = logp[b, t - 1, tokens[b, t]]
    np.testing.assert_allclose(token_logprobs(jnp.asarray(logits), jnp.asarray(tokens)), ref, rtol=1e-5, atol=1e-5)


def test_model_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="emb_dim"):
        ModelConfig(emb_dim=0)
    with pytest.raises(ValueError, match="decoder_block"):
        ModelConfig(decoder_block="deepseek")
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float16")


def test_forward_shapes_and_post_norm_hidden(policy):
    model, mesh = policy
    tok = _tokens(0)
    with jax.set_mesh(mesh):
        logits, hidden = forward(model, tok, jnp.ones_like(tok))
    assert logits.shape == (B, T, CFG.vocab_size) and logits.dtype == jnp.float32
    assert hidden.shape == (B, T, CFG.emb_dim)
    # logits are exactly the output head applied to `hidden` (no further norm, no bias)
    np.testing.assert_allclose(logits, hidden @ output_head_weight(model), rtol=1e-5, atol=1e-5)
    # and `hidden` is post-norm: RMSNorm output has RMS = |scale| (scale is initialised to 1)
    rms = jnp.sqrt(jnp.mean(hidden**2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-3)
    assert not nnx.state(model, nnx.Intermediate)  # sown values were popped


def test_right_padding_does_not_change_real_token_logits(policy):
    model, mesh = policy
    real = 9
    tok = _tokens(3)
    seg = jnp.array([[1] * real + [0] * (T - real), [1] * T], jnp.int32)
    tok_other_pad = tok.at[0, real:].set(7)  # different padding content
    with jax.set_mesh(mesh):
        a, _ = forward(model, tok, seg)
        b, _ = forward(model, tok_other_pad, seg)
        c, _ = forward(model, tok[:, :real], jnp.ones((B, real), jnp.int32))  # no padding at all
    np.testing.assert_allclose(a[0, :real], b[0, :real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[0, :real], c[0, :real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a[1, :real], c[1, :real], rtol=1e-4, atol=1e-4)  # causal: prefix unchanged


def test_weights_deterministic_by_seed(policy, tmp_path):
    model, _ = policy
    same, _ = build_policy(CFG, seed=0, batch_size=B, run_dir=str(tmp_path))
    other, _ = build_policy(CFG, seed=1, batch_size=B, run_dir=str(tmp_path))
    p0, p1, p2 = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (model, same, other))
    assert all(np.array_equal(x, y) for x, y in zip(p0, p1))
    random_init = [(x, y) for x, y in zip(p0, p2) if np.std(x) > 0]  # norm scales start at 1 for any seed
    assert len(random_init) >= 2 * CFG.num_layers and not any(np.array_equal(x, y) for x, y in random_init)


@pytest.mark.slow
def test_jitted_value_and_grad_does_not_recompile(policy):
    model, mesh = policy
    saved = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # restored below: the fixture is shared
    traces = []

    def mean_nll(model, tokens, segs):
        traces.append(1)  # runs only while tracing
        logits, _ = forward(model, tokens, segs)
        lp = token_logprobs(logits, tokens)[:, 1:]
        mask = (segs[:, 1:] > 0).astype(jnp.float32)
        return -(lp * mask).sum() / mask.sum()

    @nnx.jit
    def sgd_step(model, tokens, segs):
        loss, grads = nnx.value_and_grad(mean_nll)(model, tokens, segs)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads))
        return loss, grads

    tok = _tokens(5)
    seg = jnp.array([[1] * T, [1] * 12 + [0] * 4], jnp.int32)
    with jax.set_mesh(mesh):
        losses = []
        for _ in range(3):
            loss, grads = sgd_step(model, tok, seg)
            losses.append(float(loss))
    assert len(traces) == 1, f"traced {len(traces)} times"
    assert np.isfinite(losses).all() and losses[2] < losses[0]
    g = jax.tree.leaves(grads)
    assert all(np.isfinite(x).all() for x in g) and any(np.abs(x).sum() > 0 for x in g)
    # uniform-ish init: the first loss is near log(V) (untrained, std-1 embeddings make it larger)
    assert losses[0] > 0.5 * np.log(CFG.vocab_size)
    nnx.update(model, saved)


@pytest.mark.slow
def test_llama2_block_builds_and_runs(tmp_path):
    cfg = ModelConfig(vocab_size=128, emb_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                      num_layers=1, max_len=16, decoder_block="llama2")
    model, mesh = build_policy(cfg, seed=0, batch_size=2, run_dir=str(tmp_path))
    tok = _tokens(0, (2, 8))
    with jax.set_mesh(mesh):
        logits, hidden = forward(model, tok, jnp.ones_like(tok))
    np.testing.assert_allclose(logits, hidden @ output_head_weight(model), rtol=1e-5, atol=1e-5)


def test_jobs_share_the_compile_cache_named_by_paths_compile_cache(tmp_path, monkeypatch):
    """paths.compile_cache reaches maxtext_config through $CTS_JAX_CACHE_DIR (cts.script_support):
    every compile is cached there (no minimum compile time); without it a job keeps its own."""
    import jax

    from cts.model.policy import _compile_cache_dir

    monkeypatch.delenv("CTS_JAX_CACHE_DIR", raising=False)
    assert _compile_cache_dir(str(tmp_path / "run")) == str(tmp_path / "run" / "jax_cache")
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.setenv("CTS_JAX_CACHE_DIR", str(tmp_path / "shared"))
    try:
        assert _compile_cache_dir(str(tmp_path / "run")) == str(tmp_path / "shared")
        assert (tmp_path / "shared").is_dir() and jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def test_models_built_without_a_run_dir_leave_nothing_in_tmp(tmp_path):
    """Every model or sampler built without a run_dir shares one scratch dir per process, removed at
    exit (a mkdtemp per build left ~1,900 directories in /tmp after a day of tests and pipelines)."""
    import subprocess
    import sys

    script = (
        "import glob, os, tempfile\n"
        "from cts.model.policy import ModelConfig, maxtext_config\n"
        "cfg = ModelConfig(vocab_size=128, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,"
        " num_layers=2, max_len=32)\n"
        "for _ in range(2):\n"
        "    maxtext_config(cfg, batch_size=2)\n"
        "print(len(glob.glob(os.path.join(tempfile.gettempdir(), 'cts-maxtext-*'))))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("CTS_JAX_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"  # one for the process, not one per build
    assert not list(tmp_path.glob("cts-maxtext-*"))  # and gone at exit
