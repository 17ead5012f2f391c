"""Batched sampling from the policy with MaxText's KV cache, and a cache-less reference decoder.

`Sampler` owns an autoregressive-mode MaxText model (same parameter tree as the train-mode model
from `build_policy`) and runs a whole generation in ONE jitted call:

    PREFILL   the right-padded prompts [B, P] in one pass (segment id 0 on padding, so the padded
              cache slots are masked for every later step); the first new token comes from the
              logits at each row's last real prompt position.
    DECODE    one token per step in a `lax.while_loop` that exits once every row has emitted EOS.
              The batch decodes in lockstep (one cache write index), but each row gets its own
              explicit position len_b + i, so row b sees exactly [prompt_b, generated_b]: the
              same context as the cache-less decoder, hence identical greedy tokens.

Traps handled here (see shared/notes/stack-on-cpu.md): every call starts from a fresh all-zero
cache state (prefill does not reset the decode write index); the decode cache holds T − P =
max_new_tokens entries, so it never wraps; the NNX model is merged and split INSIDE the loop body
(the decoder mutates its cache variables on each call).

`recompute_sample` is the reference: the train-mode model re-run on the whole buffer every step.
Both decoders draw token i with key `fold_in(rng, i)` through the same `_choose_tokens`, so with
equal logits they return equal samples, not just equal greedy outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cts.distributed import assemble_global_batch, host_copy
from cts.model.policy import ModelConfig, Parallelism, build_policy, forward

__all__ = ["SamplingConfig", "SampleOutput", "Sampler", "recompute_sample", "prepare_prompts", "top_p_mask"]


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Shapes and defaults of a sampler.

    max_prompt_len: P, prompts are right-padded to P (longer prompts are an error).
    max_new_tokens: N, completion budget; outputs are [B, N].
    temperature: τ > 0, logits are divided by τ before top-p and sampling.
    top_p: nucleus mass p in (0, 1]: keep the smallest set of tokens whose probability sum is >= p.
    greedy: argmax decoding (ignores τ and p).
    """

    max_prompt_len: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        for name in ("max_prompt_len", "max_new_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SamplingConfig.{name} must be an int >= 1, got {v!r}")
        _check_knobs(self.temperature, self.top_p)


def _check_knobs(temperature: float, top_p: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


@dataclass
class SampleOutput:
    """A batch of completions.

    tokens: int32 [B, N]; generated ids, EOS included, pad_id after it.
    lengths: int32 [B]; generated tokens per row, EOS included (N when no EOS was emitted).
    logprobs: float32 [B, N]; log π(token | context) under the policy's own distribution (before
      temperature/top-p), 0 on padding.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray


# --------------------------------------------------------------------------------------------
# Token choice (shared by both decoders)
# --------------------------------------------------------------------------------------------


def top_p_mask(probs: jax.Array, top_p: jax.Array) -> jax.Array:
    """Nucleus mask: True for the smallest set of most likely tokens whose total prob is >= top_p.

    Args:
      probs: [B, V], rows sum to 1.
      top_p: scalar in (0, 1].

    Returns:
      bool [B, V]. The most likely token is always kept (ties broken by lower id first).
    """
    order = jnp.argsort(-probs, axis=-1, stable=True)  # (B, V) ids by decreasing prob
    sorted_p = jnp.take_along_axis(probs, order, axis=-1)  # (B, V)
    mass_before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # (B, V) prob of strictly better tokens
    keep_sorted = mass_before < top_p  # a token is needed while the better ones sum to < p
    keep_sorted = keep_sorted.at[:, 0].set(True)
    return jnp.zeros_like(keep_sorted).at[jnp.arange(probs.shape[0])[:, None], order].set(keep_sorted)


def _choose_tokens(logits, key, temperature, top_p, greedy):
    """Pick one token per row.

    Args:
      logits: [B, V] next-token logits. key: PRNG key. temperature, top_p: f32 scalars.
      greedy: bool scalar.

    Returns:
      tokens int32 [B], policy log-probs float32 [B] of those tokens (before τ / top-p).
    """
    logits = logits.astype(jnp.float32)
    policy_logp = jax.nn.log_softmax(logits, axis=-1)  # (B, V)

    def sample():
        scaled = logits / temperature  # (B, V)
        # top_p = 1 skips the sort; it also avoids dropping tail tokens to cumsum rounding (> 1.0)
        scaled = jax.lax.cond(
            top_p < 1.0,
            lambda: jnp.where(top_p_mask(jax.nn.softmax(scaled, axis=-1), top_p), scaled, -jnp.inf),
            lambda: scaled,
        )
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)  # (B,)

    tokens = jax.lax.cond(greedy, lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32), sample)
    return tokens, jnp.take_along_axis(policy_logp, tokens[:, None], axis=-1)[:, 0]


def _finish(tokens, logps, eos_id, pad_id):
    """Pad after the first EOS. tokens/logps [B, N] → (tokens, lengths [B], logps)."""
    N = tokens.shape[1]
    is_eos = tokens == eos_id
    lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, N).astype(jnp.int32)  # (B,)
    valid = jnp.arange(N)[None, :] < lengths[:, None]  # (B, N)
    return jnp.where(valid, tokens, pad_id), lengths, jnp.where(valid, logps, 0.0)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def prepare_prompts(prompts, *, batch_size: int, max_prompt_len: int, pad_id: int, vocab_size: int):
    """Right-pad prompts into a fixed [batch_size, P] block.

    Args:
      prompts: list of token-id lists (each 1..P long), or an int array [b, <=P] whose rows are
        right-padded with pad_id (trailing pad_id entries are stripped).
      batch_size: rows of the block; b <= batch_size, extra rows are filler (one pad token).

    Returns:
      tokens int32 [batch_size, P], lengths int32 [batch_size], b (number of real rows).
    """
    if isinstance(prompts, (np.ndarray, jax.Array)):
        arr = np.asarray(prompts)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"prompts array must be an int array [b, P], got {arr.dtype} {arr.shape}")
        rows = []
        for r in arr:
            n = len(r)
            while n > 0 and r[n - 1] == pad_id:
                n -= 1
            rows.append(r[:n].tolist())
    else:
        rows = [list(map(int, p)) for p in prompts]
    b = len(rows)
    if not 1 <= b <= batch_size:
        raise ValueError(f"got {b} prompts; the sampler was built for 1..{batch_size}")
    tokens = np.full((batch_size, max_prompt_len), pad_id, np.int32)
    lengths = np.ones(batch_size, np.int32)  # filler rows: a single pad token
    for i, row in enumerate(rows):
        if not 1 <= len(row) <= max_prompt_len:
            raise ValueError(f"prompt {i} has {len(row)} tokens; must be 1..max_prompt_len={max_prompt_len}")
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i}: token id {bad[0]} outside [0, vocab_size={vocab_size})")
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths, b


# --------------------------------------------------------------------------------------------
# KV-cached sampler
# --------------------------------------------------------------------------------------------


class Sampler:
    """KV-cached batched sampler over a MaxText autoregressive-mode model.

    Usage:
      sampler = Sampler(model_cfg, SamplingConfig(max_prompt_len=32, max_new_tokens=96),
                        batch_size=8, eos_id=tok.eos_id, pad_id=tok.pad_id)
      out = sampler(nnx.state(train_model, nnx.Param), prompts, jax.random.key(0))

    The generation shape (P + N) is fixed at construction; model_cfg.max_len is ignored for
    the cache (the autoregressive model is built with max_len = P + N).
    """

    def __init__(self, model_cfg: ModelConfig, sampling: SamplingConfig, *, batch_size: int, eos_id: int,
                 pad_id: int, run_dir: str | None = None, parallelism: Parallelism | dict | None = None):
        """parallelism: the TRAINING mesh's layout (PolicyRuntime passes its own), so the sampler
        reads the training weights where they lie; its KV cache is split along the batch over
        ('data', 'fsdp') and along the kv heads over 'tensor' (policy.SAMPLER_CACHE_RULES), in the
        model's activation dtype (ModelConfig.dtype: bfloat16 halves it)."""
        for name, v in (("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= v < model_cfg.vocab_size:
                raise ValueError(f"Sampler: {name}={v} outside [0, vocab_size={model_cfg.vocab_size})")
        self.model_cfg = model_cfg
        self.sampling = sampling
        self.batch_size = batch_size
        self.eos_id = eos_id
        self.pad_id = pad_id
        P, N = sampling.max_prompt_len, sampling.max_new_tokens
        ar_cfg = dataclasses.replace(model_cfg, max_len=P + N)  # decode cache T − P = N: never wraps
        model, self.mesh = build_policy(ar_cfg, seed=0, batch_size=batch_size, mode="autoregressive",
                                        max_prefill_len=P, run_dir=run_dir, parallelism=parallelism)
        self._graphdef, params, cache, self._rest = nnx.split(model, nnx.Param, nnx.Cache, ...)
        self._param_struct = jax.tree.structure(params)
        # The cache grows its batch axis on first use (MaxText builds some caches with batch 1), so
        # the loop-carried shapes are those after one prefill + one decode step. Only the SHAPES are
        # kept: each generation creates its zero cache inside the jitted call, so no cache outlives
        # a call (a paper-size cache is GBs per chip) and XLA lays it out with the model's sharding.
        with jax.set_mesh(self.mesh):
            self.cache_shapes = jax.eval_shape(
                self._prefill_and_one_step,
                params, cache, jax.ShapeDtypeStruct((batch_size, P), jnp.int32),
                jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            )
        del model, params, cache  # the autoregressive model's own random weights are never used
        self._generate = jax.jit(self._generate_impl)

    # -- pure pieces ------------------------------------------------------------------------

    def _prefill(self, params, cache, prompt, lengths):
        """Prefill; returns (last real-position logits [B, V], cache after prefill)."""
        model = nnx.merge(self._graphdef, params, cache, self._rest, copy=True)
        B, P = prompt.shape
        positions = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))  # (B, P)
        segs = (positions < lengths[:, None]).astype(jnp.int32)  # (B, P) 1 real, 0 pad
        logits = model(prompt, positions, decoder_segment_ids=segs, model_mode="prefill",
                       enable_dropout=False)  # (B, P, V)
        nnx.pop(model, nnx.Intermediate)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, V)
        return last, nnx.state(model, nnx.Cache)

    def _decode_step(self, params, cache, token, position):
        """One cached step: token [B], position [B] → (logits [B, V], cache)."""
        model = nnx.merge(self._graphdef, params, cache, self._rest, copy=True)
        logits = model(token[:, None], position[:, None], model_mode="autoregressive",
                       enable_dropout=False)  # (B, 1, V); decode takes no segment ids
        nnx.pop(model, nnx.Intermediate)
        return logits[:, 0], nnx.state(model, nnx.Cache)

    def _prefill_and_one_step(self, params, cache, prompt, lengths):
        last, cache = self._prefill(params, cache, prompt, lengths)
        _, cache = self._decode_step(params, cache, jnp.argmax(last, -1).astype(jnp.int32), lengths)
        return cache

    def _generate_impl(self, params, prompt, lengths, active, rng, temperature, top_p, greedy):
        """prompt [B, P], lengths [B], active bool [B] (False on filler rows) → tokens, lengths, log-probs."""
        B, N = prompt.shape[0], self.sampling.max_new_tokens
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.cache_shapes)  # fresh every call
        # PREFILL → token 0
        last, cache = self._prefill(params, cache, prompt, lengths)
        tok, lp = _choose_tokens(last, jax.random.fold_in(rng, 0), temperature, top_p, greedy)
        tokens = jnp.full((B, N), self.pad_id, jnp.int32).at[:, 0].set(tok)  # (B, N)
        logps = jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp)  # (B, N)

        # DECODE tokens 1..N-1, stopping early once every row has emitted EOS
        def cond(carry):
            i, _, _, _, done = carry
            return (i < N) & ~jnp.all(done)

        def body(carry):
            i, cache, tokens, logps, done = carry
            logits, cache = self._decode_step(params, cache, tokens[:, i - 1], lengths + i - 1)
            tok, lp = _choose_tokens(logits, jax.random.fold_in(rng, i), temperature, top_p, greedy)
            tokens = tokens.at[:, i].set(tok)
            logps = logps.at[:, i].set(lp)
            return i + 1, cache, tokens, logps, done | (tok == self.eos_id)

        # filler rows count as finished so that they never hold the early exit back
        carry = (jnp.int32(1), cache, tokens, logps, (tok == self.eos_id) | ~active)
        _, _, tokens, logps, _ = jax.lax.while_loop(cond, body, carry)
        return _finish(tokens, logps, self.eos_id, self.pad_id)

    # -- public call ------------------------------------------------------------------------

    def __call__(self, params: nnx.State, prompts, rng: jax.Array, *, temperature: float | None = None,
                 top_p: float | None = None, greedy: bool | None = None) -> SampleOutput:
        """Sample completions.

        Args:
          params: nnx.state(train_model, nnx.Param) of a model with this sampler's ModelConfig.
          prompts: up to batch_size prompts, see `prepare_prompts`.
          rng: PRNG key; the same key gives the same samples.
          temperature, top_p, greedy: per-call overrides of the SamplingConfig (no recompile).

        Returns:
          SampleOutput with b rows (b = number of prompts).
        """
        s = self.sampling
        temperature = s.temperature if temperature is None else temperature
        top_p = s.top_p if top_p is None else top_p
        greedy = s.greedy if greedy is None else greedy
        _check_knobs(temperature, top_p)
        if jax.tree.structure(params) != self._param_struct:
            raise ValueError("Sampler: params do not have the parameter tree of this ModelConfig "
                             f"({self.model_cfg}); pass nnx.state(train_model, nnx.Param)")
        tokens, lengths, b = prepare_prompts(prompts, batch_size=self.batch_size, max_prompt_len=s.max_prompt_len,
                                             pad_id=self.pad_id, vocab_size=self.model_cfg.vocab_size)
        with jax.set_mesh(self.mesh):
            # the prompt block is the same on every process: each uploads only its devices' rows
            active = np.arange(self.batch_size) < b
            prompt_dev, lengths_dev, active_dev = assemble_global_batch((tokens, lengths, active), self.mesh)
            out = self._generate(params, prompt_dev, lengths_dev, active_dev, rng,
                                 jnp.float32(temperature), jnp.float32(top_p), jnp.bool_(greedy))
        tok, ln, lp = (host_copy(x)[:b] for x in out)  # small [B, N] results, gathered across hosts
        return SampleOutput(tokens=tok, lengths=ln, logprobs=lp)


# --------------------------------------------------------------------------------------------
# Cache-less reference decoder
# --------------------------------------------------------------------------------------------


@partial(nnx.jit, static_argnames=("max_new_tokens",))
def _recompute_impl(model, params, prompt, lengths, rng, temperature, top_p, greedy, eos_id, pad_id, *,
                    max_new_tokens):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    B, P = prompt.shape
    N = max_new_tokens
    buf = jnp.concatenate([prompt, jnp.full((B, N), pad_id, jnp.int32)], axis=1)  # (B, P + N)
    rows = jnp.arange(B)

    def body(i, carry):
        buf, tokens, logps = carry
        model = nnx.merge(graphdef, params, rest, copy=True)
        segs = (jnp.arange(P + N)[None, :] < (lengths + i)[:, None]).astype(jnp.int32)  # (B, P + N)
        logits, _ = forward(model, buf, segs)  # (B, P + N, V), full recompute
        last = logits[rows, lengths + i - 1]  # (B, V)
        tok, lp = _choose_tokens(last, jax.random.fold_in(rng, i), temperature, top_p, greedy)
        buf = buf.at[rows, lengths + i].set(tok)
        return buf, tokens.at[:, i].set(tok), logps.at[:, i].set(lp)

    init = (buf, jnp.full((B, N), pad_id, jnp.int32), jnp.zeros((B, N), jnp.float32))
    _, tokens, logps = jax.lax.fori_loop(0, N, body, init)
    return _finish(tokens, logps, eos_id, pad_id)


def recompute_sample(model, params: nnx.State, prompts, rng: jax.Array, *, sampling: SamplingConfig,
                     eos_id: int, pad_id: int, mesh=None, temperature: float | None = None,
                     top_p: float | None = None, greedy: bool | None = None) -> SampleOutput:
    """Cache-less reference decoder: a full train-mode forward pass per generated token.

    Args:
      model: train-mode model from `build_policy` (its batch size is the block size; its max_len
        must be >= max_prompt_len + max_new_tokens).
      params: weights to use (nnx.state(model, nnx.Param) or another state with that tree).
      prompts, rng, temperature, top_p, greedy: as in `Sampler.__call__`.
      mesh: the model's mesh (from build_policy); used as the ambient mesh when given.

    Returns:
      SampleOutput, identical in layout to the Sampler's. Tokens run every step for all rows
      (no early exit), so it costs N full forward passes.
    """
    s = sampling
    temperature = s.temperature if temperature is None else temperature
    top_p = s.top_p if top_p is None else top_p
    greedy = s.greedy if greedy is None else greedy
    _check_knobs(temperature, top_p)
    mcfg = model.config
    if mcfg.max_target_length < s.max_prompt_len + s.max_new_tokens:
        raise ValueError(f"recompute_sample: model max_len={mcfg.max_target_length} < max_prompt_len + "
                         f"max_new_tokens = {s.max_prompt_len + s.max_new_tokens}")
    batch = int(mcfg.global_batch_size_to_train_on)
    tokens, lengths, b = prepare_prompts(prompts, batch_size=batch, max_prompt_len=s.max_prompt_len,
                                         pad_id=pad_id, vocab_size=mcfg.vocab_size)
    args = (model, params, jnp.asarray(tokens), jnp.asarray(lengths), rng, jnp.float32(temperature),
            jnp.float32(top_p), jnp.bool_(greedy), jnp.int32(eos_id), jnp.int32(pad_id))
    kw = dict(max_new_tokens=s.max_new_tokens)
    if mesh is not None:
        with jax.set_mesh(mesh):
            out = _recompute_impl(*args, **kw)
    else:
        out = _recompute_impl(*args, **kw)
    tok, ln, lp = (np.asarray(x)[:b] for x in out)
    return SampleOutput(tokens=tok, lengths=ln, logprobs=lp)


# --------------------------------------------------------------------------------------------
# Memory of the KV cache (abstract: no weights or caches are allocated)
# --------------------------------------------------------------------------------------------


def kv_cache_bytes(model_cfg: ModelConfig, *, batch_size: int, max_prompt_len: int, max_new_tokens: int,
                   parallelism: Parallelism | dict | None = None) -> dict:
    """Bytes of the sampler's KV cache, in total and on the most-loaded device, from shapes alone.

    Builds the autoregressive MaxText model with `jax.eval_shape` (nnx abstract model: shapes,
    dtypes and the NamedSharding of every variable, nothing allocated), keeps the nnx.Cache
    variables, and applies the sampler's layout (batch over ('data', 'fsdp'), kv heads over
    'tensor', cache dtype = ModelConfig.dtype). Runs on whatever devices JAX sees (tests use
    simulated CPU devices to stand for a slice's chips).

    Returns:
      {"total": bytes, "per_device": bytes on the device holding the most, "dtype": cache dtype,
       "shapes": {variable path: [shape, PartitionSpec as list]} of the big (K/V) caches}.
    """
    from maxtext.utils import maxtext_utils, model_creation_utils

    from cts.model.policy import _fit_sharding, maxtext_config

    P, N = max_prompt_len, max_new_tokens
    ar_cfg = dataclasses.replace(model_cfg, max_len=P + N)
    mt_cfg = maxtext_config(ar_cfg, batch_size=batch_size, mode="autoregressive", max_prefill_len=P,
                            parallelism=parallelism)
    mesh = maxtext_utils.get_mesh_from_config(mt_cfg)
    _, abstract = model_creation_utils.create_nnx_abstract_model(mt_cfg, mesh=mesh, model_mode="autoregressive")
    caches = nnx.state(abstract, nnx.Cache)
    total, per_device, shapes, dtypes = 0, 0, {}, set()
    for path, x in jax.tree_util.tree_leaves_with_path(caches, is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct)):
        sharding = _fit_sharding(x.sharding, x.shape)
        shard = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        nbytes = int(np.prod(x.shape)) * x.dtype.itemsize
        total += nbytes
        per_device += int(np.prod(shard)) * x.dtype.itemsize
        if x.ndim == 4:  # [batch, seq, kv heads, head dim] (axis order per MaxText): the K/V caches
            shapes[jax.tree_util.keystr(path)] = [list(x.shape), [a for a in sharding.spec]]
            dtypes.add(str(x.dtype))
    return {"total": total, "per_device": per_device, "dtype": sorted(dtypes), "shapes": shapes}
