"""The Tunix cross-check, a test oracle: B0 (SFT), B1 (DPO) and B2 (GRPO) losses recomputed by Tunix
0.1.7's own trainer code on the SAME MaxText model, wrapped in maxtext's `TunixMaxTextAdapter`.

The project trains with one loop (`cts.train.loop`): its losses are pure functions of per-token
log-probs computed from right-padded rows `BOS prompt \\n response EOS PAD…`. Tunix computes the
same quantities differently: its own model call signature `(tokens, positions, cache,
attention_mask)`, left-padded prompts, masks derived from `pad_id`, positions from the mask,
its own log-softmax, its own reductions. Agreement of the two is evidence that neither side has
a masking, shifting or normalisation bug. Mapping of each method:

    B0  tunix_sft_loss   peft_trainer._default_loss_fn on the adapter; inputs built the way
                         Tunix's SFT recipes build them (input_mask = loss mask, attention mask
                         and positions from `tokens != pad_id`)
        run_tunix_sft    Tunix `PeftTrainer` (nnx.Optimizer, its jitted train step) for n steps
    B1  tunix_dpo_loss   `DPOTrainer._prepare_inputs` (concatenation, masks, positions, frozen
                         reference log-probs through `dpo_trainer.compute_logps`) then
                         `dpo_trainer.dpo_loss_fn` on the policy adapter
    B2  tunix_grpo_loss  what `GRPOLearner._generate_and_compute_advantage` does after sampling
                         (completion mask = ids != pad, registered advantage estimator, reference
                         log-probs through `common.compute_per_token_logps`, exactly the call of
                         Tunix's inference worker) then `algo_core.grpo_loss_fn` on the adapter

The adapter: `TunixMaxTextAdapter.__init__` looks the model up in
`HF_MODEL_CONFIGS[config.model_name]` to build vLLM weight mappings. The project's small models
are named "default" and have no Hugging Face counterpart, so construction raises KeyError.
`_CrossCheckAdapter` subclasses it, skips only that lookup (the mappings are for exporting
weights to vLLM, never used in training), and inherits `__call__` unchanged — the code under test.

Tunix's sampler cannot drive MaxText through the adapter (no KV cache; see
/work/shared/notes/stack-on-cpu.md), so GRPO is cross-checked from the point where rollouts
exist: a fixed batch of completions and rewards.

The loss functions are pure in `params`: `jax.grad(lambda q: tunix_dpo_loss(rt, q, ref, b)[0])`
works, with the mesh set OUTSIDE the transformation (`with jax.set_mesh(rt.mesh): jax.grad(...)`;
JAX forbids set_mesh under a trace). Called eagerly, they set the runtime's mesh themselves.

All batch dicts use the project's format (`cts.train.batching.TokenBatch.as_dict()`): `tokens`
int [B, T], `segment_ids` int [B, T] (1 real, 0 padding), `loss_mask` float [B, T] (1 on response
tokens incl. EOS), plus `flag` [B, T] and `rewards` [B] for GRPO.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cts.losses.grpo import GRPOConfig
from cts.train.runtime import PolicyRuntime

__all__ = [
    "make_adapter",
    "run_project_sft",
    "run_tunix_sft",
    "split_prompt_completion",
    "tunix_dpo_loss",
    "tunix_grpo_config",
    "tunix_grpo_loss",
    "tunix_sft_inputs",
    "tunix_sft_loss",
]

# ours → Tunix names (the parity of the pure functions is in tests/test_losses_tunix_parity.py)
_KL_MODES = {"k1": "kl", "k3": "low_var_kl"}
_LOSS_AGG_MODES = {
    "sequence-mean-token-mean": "sequence-mean-token-mean",
    "token-mean": "token-mean",
    "seq-mean-token-sum": "seq-mean-token-sum",
    "dr-grpo": "sequence-mean-token-scale",  # equal when the completion width is L, no empty row
}
_TUNIX_ADV_EPS = 1e-6  # hard-coded in tunix.rl.algo_core.compute_advantages


# ==============================================================================
# The adapter
# ==============================================================================

def _adapter_class():
    from maxtext.integration.tunix.tunix_adapter import TunixMaxTextAdapter

    class _CrossCheckAdapter(TunixMaxTextAdapter):
        """TunixMaxTextAdapter without the vLLM weight-mapping lookup (KeyError for models that
        have no Hugging Face config); `__call__` is the adapter's own."""

        def __init__(self, base_model, pad_id: int | None = None):
            nnx.Module.__init__(self)
            self.base = base_model
            self._vllm_weight_mapping = None
            self.use_no_op_mappings = True  # to_hf_* return {} instead of touching the mapping
            self._pad_id = pad_id

    return _CrossCheckAdapter


_ADAPTER_CLS = None


def make_adapter(runtime: PolicyRuntime, params) -> nnx.Module:
    """The runtime's MaxText Transformer with `params` merged in, wrapped for Tunix.

    Args:
      runtime: the PolicyRuntime whose graphdef/rest define the model.
      params: an `nnx.State` of the runtime's parameters (e.g. `runtime.init_params`); may hold
        tracers, so functions built on this can be differentiated w.r.t. `params`.

    Returns:
      A `TunixMaxTextAdapter` (subclass, see the module docstring) over a fresh copy of the
      model: training it never mutates `params`.
    """
    global _ADAPTER_CLS
    if _ADAPTER_CLS is None:
        _ADAPTER_CLS = _adapter_class()
    return _ADAPTER_CLS(runtime.merge(params), pad_id=runtime.tok.pad_id)


def _mesh_scope(runtime: PolicyRuntime, *trees):
    """`jax.set_mesh(runtime.mesh)` for eager calls. Under a transformation (grad/jit of params)
    set_mesh is not allowed: the caller sets it outside, `with jax.set_mesh(runtime.mesh):`."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees)):
        return contextlib.nullcontext()
    return jax.set_mesh(runtime.mesh)


# ==============================================================================
# Batch conversion (host side, numpy)
# ==============================================================================

def _as_numpy_batch(batch: dict, keys: Sequence[str], where: str) -> dict[str, np.ndarray]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{where}: batch is missing key(s) {missing}; has {sorted(batch)}")
    out = {k: np.asarray(batch[k]) for k in keys}
    shapes = {k: v.shape for k, v in out.items() if k != "rewards"}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"{where}: expected matching [B, T] arrays, got shapes {shapes}")
    return out


def _check_pad_consistency(tokens: np.ndarray, segment_ids: np.ndarray, pad_id: int, where: str):
    """Tunix derives its padding mask from `tokens != pad_id`; ours from segment_ids. Refuse a
    batch where the two disagree (a sampled pad id inside a completion would be masked by Tunix
    and not by us), naming the first offending (row, column)."""
    disagree = (tokens != pad_id) != (segment_ids != 0)
    if disagree.any():
        row, col = map(int, np.argwhere(disagree)[0])
        raise ValueError(
            f"{where}: row {row}, column {col}: token {int(tokens[row, col])} with segment id "
            f"{int(segment_ids[row, col])} — Tunix treats exactly the tokens == pad_id={pad_id} as "
            "padding, so real tokens must differ from pad_id and padding must equal it")


def split_prompt_completion(batch: dict, pad_id: int, *, completion_width: int | None = None,
                            where: str = "batch") -> dict[str, np.ndarray]:
    """Project rows → Tunix's (left-padded prompt, right-padded completion) layout.

    Each row must be `prompt response PAD…` with `loss_mask` = 1 exactly on the response (from
    its first supervised token to the last real token) — what `make_batch` produces.

    Args:
      batch: dict with `tokens`, `segment_ids`, `loss_mask`, each [B, T].
      pad_id: the tokenizer's pad id (Tunix fills and detects padding with it).
      completion_width: C, pad completions to this width (default: the longest completion).
      where: name used in error messages.

    Returns:
      dict with `prompt_ids` int32 [B, P] left-padded with pad_id, `prompt_mask` bool [B, P],
      `completion_ids` int32 [B, C] right-padded, `completion_mask` float32 [B, C], and
      `response_start` int [B] (the column in `tokens` where each completion starts).

    Raises:
      ValueError naming the row if a row has no supervised token, a gap or supervised padding in
      its mask, or a token/pad-id mismatch (see `_check_pad_consistency`).
    """
    b = _as_numpy_batch(batch, ("tokens", "segment_ids", "loss_mask"), where)
    tokens, seg, mask = b["tokens"], b["segment_ids"], b["loss_mask"] != 0
    _check_pad_consistency(tokens, seg, pad_id, where)
    n_rows = tokens.shape[0]
    starts, ends = np.zeros(n_rows, int), np.zeros(n_rows, int)
    for i in range(n_rows):
        supervised = np.flatnonzero(mask[i])
        if supervised.size == 0:
            raise ValueError(f"{where}: row {i} has no supervised token (loss_mask all 0)")
        start, end = int(supervised[0]), int(np.flatnonzero(seg[i])[-1]) + 1
        if not (mask[i, start:end].all() and mask[i].sum() == end - start):
            raise ValueError(f"{where}: row {i}: loss_mask must be 1 exactly on columns "
                             f"[{start}, {end}) (first supervised token to last real token)")
        starts[i], ends[i] = start, end
    width_p = int(starts.max())
    width_c = int((ends - starts).max())
    if completion_width is not None:
        if completion_width < width_c:
            raise ValueError(f"{where}: completion_width={completion_width} < longest completion "
                             f"({width_c} tokens)")
        width_c = completion_width
    prompt_ids = np.full((n_rows, width_p), pad_id, np.int32)
    completion_ids = np.full((n_rows, width_c), pad_id, np.int32)
    for i in range(n_rows):
        prompt_ids[i, width_p - starts[i]:] = tokens[i, :starts[i]]  # left padding
        completion_ids[i, :ends[i] - starts[i]] = tokens[i, starts[i]:ends[i]]  # right padding
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_ids != pad_id,
            "completion_ids": completion_ids,
            "completion_mask": (completion_ids != pad_id).astype(np.float32),
            "response_start": starts}


# ==============================================================================
# B0: SFT
# ==============================================================================

def tunix_sft_inputs(tokens, input_mask, pad_id: int) -> dict[str, jax.Array]:
    """Tunix's `TrainingInput(input_tokens, input_mask)` → the kwargs of PeftTrainer's default
    loss, built as Tunix's SFT recipes build them (its `gen_model_input_fn`).

    Args:
      tokens: int [B, T]. input_mask: [B, T], 1 on target tokens (the project's loss_mask:
        Tunix reads it shifted, `input_mask[:, 1:]`, exactly like our `token_logprobs`).
      pad_id: padding id; attention and positions are derived from `tokens != pad_id`.

    Returns:
      {"input_tokens" [B, T], "input_mask" [B, T], "positions" [B, T],
       "attention_mask" bool [B, T, T]}.
    """
    from tunix.sft import utils as sft_utils

    tokens = jnp.asarray(tokens, jnp.int32)
    pad_mask = tokens != pad_id  # (B, T)
    return {"input_tokens": tokens, "input_mask": jnp.asarray(input_mask),
            "positions": sft_utils.build_positions_from_mask(pad_mask),
            "attention_mask": sft_utils.make_causal_attn_mask(pad_mask)}


def tunix_sft_loss(runtime: PolicyRuntime, params, batch: dict) -> jax.Array:
    """B0 loss through Tunix's `peft_trainer._default_loss_fn` on the adapter model.

    Args:
      runtime: the PolicyRuntime (model structure, tokenizer pad id).
      params: policy parameters (`nnx.State`); differentiable.
      batch: the project's "sft" batch: `tokens`, `segment_ids`, `loss_mask` [B, T].

    Returns:
      float32 scalar: token-mean NLL of the supervised tokens. Equals
      `SFTMethod(SFTConfig(), runtime).loss` on {"sft": batch}.
    """
    from tunix.sft import peft_trainer

    b = _as_numpy_batch(batch, ("tokens", "segment_ids", "loss_mask"), "tunix_sft_loss")
    _check_pad_consistency(b["tokens"], b["segment_ids"], runtime.tok.pad_id, "tunix_sft_loss")
    inputs = tunix_sft_inputs(b["tokens"], b["loss_mask"], runtime.tok.pad_id)
    with _mesh_scope(runtime, params):
        return peft_trainer._default_loss_fn(make_adapter(runtime, params), **inputs)


def run_tunix_sft(runtime: PolicyRuntime, params, batches: Sequence[dict], lr: float, *,
                  weight_decay: float = 0.0) -> list[float]:
    """Train a copy of the model for len(batches) steps with Tunix's `PeftTrainer`.

    Optimizer: `optax.adamw(lr, weight_decay=weight_decay)`, constant lr, no clipping — pass the
    same to `run_project_sft` to compare. The trainer runs its own jitted step
    (`nnx.value_and_grad` of `_default_loss_fn`, `nnx.Optimizer.update`) and its own metrics
    logger, from which the losses are read.

    Args:
      runtime, params: the model and its initial parameters (not modified).
      batches: project "sft" batches (see `tunix_sft_loss`), one per step, all one shape.
      lr: learning rate.

    Returns:
      Per-step training losses (each computed before that step's update).

    Note: PeftTrainer.close() calls `jax.monitoring.clear_event_listeners()` (process-wide).
    Nothing in this project registers listeners, so this is harmless here.
    """
    from tunix.sft import metrics_logger, peft_trainer

    if not batches:
        raise ValueError("run_tunix_sft: no batches")
    pad_id = runtime.tok.pad_id
    examples = []
    for k, batch in enumerate(batches):
        b = _as_numpy_batch(batch, ("tokens", "segment_ids", "loss_mask"), f"batches[{k}]")
        _check_pad_consistency(b["tokens"], b["segment_ids"], pad_id, f"batches[{k}]")
        examples.append(peft_trainer.TrainingInput(input_tokens=jnp.asarray(b["tokens"], jnp.int32),
                                                   input_mask=jnp.asarray(b["loss_mask"])))
    with jax.set_mesh(runtime.mesh):
        model = make_adapter(runtime, params)
        config = peft_trainer.TrainingConfig(eval_every_n_steps=len(batches) + 1,
                                             max_steps=len(batches), pbar_description=None)
        trainer = peft_trainer.PeftTrainer(model, optax.adamw(lr, weight_decay=weight_decay), config)
        trainer.with_gen_model_input_fn(
            lambda x: tunix_sft_inputs(x.input_tokens, x.input_mask, pad_id))
        trainer.train(examples)
        history = trainer.metrics_logger.get_metric_history("", "loss", metrics_logger.Mode.TRAIN)
    losses = [float(v) for v in np.asarray(history)]
    if len(losses) != len(batches):
        raise RuntimeError(f"run_tunix_sft: PeftTrainer logged {len(losses)} losses for "
                           f"{len(batches)} steps")
    return losses


def run_project_sft(runtime: PolicyRuntime, params, batches: Sequence[dict], lr: float, *,
                    weight_decay: float = 0.0) -> list[float]:
    """The project's side of `run_tunix_sft`: the loop's `make_train_step` of the SFT method with
    `optax.adamw(lr, weight_decay=weight_decay)`. Returns the per-step (pre-update) losses."""
    from cts.methods.sft import SFTConfig, SFTMethod
    from cts.train.loop import make_train_step

    optimizer = optax.adamw(lr, weight_decay=weight_decay)
    step = make_train_step(SFTMethod(SFTConfig(), runtime), optimizer)
    state = {"policy": params}
    losses = []
    with jax.set_mesh(runtime.mesh):
        opt_state = optimizer.init(state)
        for k, batch in enumerate(batches):
            b = _as_numpy_batch(batch, ("tokens", "segment_ids", "loss_mask"), f"batches[{k}]")
            state, opt_state, metrics = step(state, opt_state, None,
                                             {"sft": jax.tree.map(jnp.asarray, b)})
            losses.append(float(metrics["loss"]))
    return losses


# ==============================================================================
# B1: DPO
# ==============================================================================

def tunix_dpo_loss(runtime: PolicyRuntime, params, ref_params, batch: dict, *, beta: float = 0.1,
                   label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """B1 loss through Tunix's DPO trainer path.

    The batch is converted to Tunix's tokenized `dpo_trainer.TrainingInput` (shared prompt
    left-padded, chosen/rejected right-padded); a `DPOTrainer` whose model and reference are the
    reference adapter prepares it (`_prepare_inputs`: concatenation, masks, positions, frozen
    reference log-probs via `compute_logps`) — the trainer is used for nothing else; then
    `dpo_loss_fn` runs on the policy adapter.

    Args:
      runtime: the PolicyRuntime.
      params: policy parameters (`nnx.State`); differentiable.
      ref_params: frozen reference parameters (concrete arrays).
      batch: the project's "dpo" batch (`_dpo_batch` in loop.py): 2n rows, chosen rows 0..n−1,
        rejected rows n..2n−1, row i and i+n with the same prompt; `tokens`, `segment_ids`,
        `loss_mask` [2n, T].
      beta, label_smoothing: as `cts.losses.dpo.dpo_loss` (and `DPOConfig.beta`).

    Returns:
      (loss, aux): float32 scalar and Tunix's metrics (`rewards/chosen`, `rewards/rejected`,
      `rewards/margin`, `rewards/accuracy`, `log_probs/chosen`, `log_probs/rejected`).
    """
    from tunix.sft.dpo import dpo_trainer

    parts = split_prompt_completion(batch, runtime.tok.pad_id, where="tunix_dpo_loss")
    n_rows = parts["prompt_ids"].shape[0]
    if n_rows % 2:
        raise ValueError(f"tunix_dpo_loss: {n_rows} rows; expected chosen rows then rejected rows")
    n = n_rows // 2
    prompts = parts["prompt_ids"]
    mismatch = np.flatnonzero((prompts[:n] != prompts[n:]).any(axis=1))
    if mismatch.size:
        i = int(mismatch[0])
        raise ValueError(f"tunix_dpo_loss: chosen row {i} and rejected row {i + n} have different "
                         "prompts; Tunix's DPO input shares one prompt per pair")
    comp, cmask = parts["completion_ids"], parts["completion_mask"]
    training_input = dpo_trainer.TrainingInput(
        prompt_ids=jnp.asarray(prompts[:n]), prompt_mask=jnp.asarray(parts["prompt_mask"][:n]),
        chosen_ids=jnp.asarray(comp[:n]), chosen_mask=jnp.asarray(cmask[:n]),
        rejected_ids=jnp.asarray(comp[n:]), rejected_mask=jnp.asarray(cmask[n:]))
    with _mesh_scope(runtime, params, ref_params):
        reference = make_adapter(runtime, ref_params)
        preparer = dpo_trainer.DPOTrainer(
            model=reference, ref_model=reference, optimizer=optax.identity(),
            training_config=dpo_trainer.DPOTrainingConfig(
                eval_every_n_steps=1, beta=beta, label_smoothing=label_smoothing))
        example = preparer._prepare_inputs(training_input)
        return dpo_trainer.dpo_loss_fn(make_adapter(runtime, params), example, algorithm="dpo",
                                       beta=beta, label_smoothing=label_smoothing)


# ==============================================================================
# B2: GRPO
# ==============================================================================

def tunix_grpo_config(cfg: GRPOConfig):
    """Our GRPOConfig → Tunix's `GRPOConfig` (plus the attributes its learner sets later:
    `epsilon_high`, `temperature`).

    Raises:
      ValueError for settings Tunix cannot express: adv_std "population", adv_eps ≠ 1e-6 (Tunix
      hard-codes both), "dr-grpo" without `max_completion_length` (Tunix normalises by the
      completion width, we by L).
    """
    from tunix.rl.grpo.grpo_learner import GRPOConfig as TunixGRPOConfig

    if cfg.adv_std != "sample" or cfg.adv_eps != _TUNIX_ADV_EPS:
        raise ValueError(f"Tunix's advantages use the sample std and eps={_TUNIX_ADV_EPS}; got "
                         f"adv_std={cfg.adv_std!r}, adv_eps={cfg.adv_eps!r}")
    if cfg.loss_agg == "dr-grpo" and cfg.max_completion_length is None:
        raise ValueError("loss_agg 'dr-grpo' needs max_completion_length for a Tunix cross-check "
                         "(Tunix divides by the completion width, which is then padded to L)")
    tunix_cfg = TunixGRPOConfig(
        num_generations=cfg.num_generations, beta=cfg.beta, epsilon=cfg.epsilon_low,
        kl_loss_mode=_KL_MODES[cfg.kl_estimator], loss_agg_mode=_LOSS_AGG_MODES[cfg.loss_agg],
        loss_algo="grpo", advantage_estimator="grpo" if cfg.adv_scale == "group" else "drgrpo")
    tunix_cfg.epsilon_high = cfg.epsilon_high
    tunix_cfg.temperature = 1.0  # the learner copies the rollout temperature here
    return tunix_cfg


def tunix_grpo_loss(runtime: PolicyRuntime, params, ref_params, batch: dict, cfg: GRPOConfig, *,
                    step_penalty: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """B2 loss through Tunix: the learner's post-rollout preparation, then `grpo_loss_fn`.

    On-policy (one iteration per batch, Tunix's default): old log-probs are None on both sides.

    Args:
      runtime: the PolicyRuntime.
      params: policy parameters (`nnx.State`); differentiable.
      ref_params: frozen reference parameters (concrete arrays).
      batch: the project's "grpo" batch: `tokens`, `segment_ids`, `loss_mask`, `flag` [B, T] and
        `rewards` [B], B = n_prompts · G with each group contiguous.
      cfg: our GRPOConfig (mapped by `tunix_grpo_config`).
      step_penalty: B4's λ: the advantage of flagged completion tokens is lowered by λ (Tunix's
        `grpo_loss_fn` accepts [B, C] token advantages). 0 for B2 (flags ignored).

    Returns:
      (loss, aux): float32 scalar and Tunix's metrics (`pg_loss`, `kl`, `kl_loss`,
      `pg_clipfrac`, `is_ratio/*`, `advantage/*`, `entropy`, ...).
    """
    from tunix.rl import algo_core, common, function_registry

    where = "tunix_grpo_loss"
    b = _as_numpy_batch(batch, ("tokens", "segment_ids", "loss_mask", "flag", "rewards"), where)
    rewards = b["rewards"].astype(np.float32)
    if rewards.shape != (b["tokens"].shape[0],):
        raise ValueError(f"{where}: rewards shape {rewards.shape} != [B] = "
                         f"[{b['tokens'].shape[0]}]")
    tunix_cfg = tunix_grpo_config(cfg)
    pad_id, eos_id = runtime.tok.pad_id, runtime.tok.eos_id
    parts = split_prompt_completion(b, pad_id, completion_width=cfg.max_completion_length,
                                    where=where)
    prompt_ids = jnp.asarray(parts["prompt_ids"])
    completion_ids = jnp.asarray(parts["completion_ids"])
    # ADVANTAGES: the learner's registered estimator on the raw rewards
    estimator = function_registry.get_advantage_estimator(tunix_cfg.advantage_estimator)
    advantages = jnp.asarray(estimator(rewards=rewards, num_generations=cfg.num_generations))
    if step_penalty:
        width = completion_ids.shape[1]
        flag = np.zeros((rewards.shape[0], width), np.float32)  # (B, C)
        for i, start in enumerate(parts["response_start"]):
            span = b["flag"][i, start:start + width]
            flag[i, :span.shape[0]] = span
        advantages = advantages[:, None] - step_penalty * jnp.asarray(flag)  # (B, C)
    with _mesh_scope(runtime, params, ref_params):
        # REFERENCE LOG-PROBS: the inference worker's call (skipped at β = 0, as the learner does)
        ref_logps = None
        if tunix_cfg.beta != 0.0:
            ref_graphdef, ref_state = nnx.split(make_adapter(runtime, ref_params))
            ref_logps = common.compute_per_token_logps(
                ref_graphdef, ref_state, prompt_tokens=prompt_ids, completion_tokens=completion_ids,
                pad_id=pad_id, eos_id=eos_id, stop_gradient=True, return_logits=False,
                temperature=tunix_cfg.temperature)
        example = common.TrainExample(
            prompt_ids=prompt_ids, prompt_mask=jnp.asarray(parts["prompt_mask"]),
            completion_ids=completion_ids, completion_mask=jnp.asarray(parts["completion_mask"]),
            advantages=advantages, ref_per_token_logps=ref_logps, old_per_token_logps=None)
        return algo_core.grpo_loss_fn(make_adapter(runtime, params), example, tunix_cfg,
                                      pad_id, eos_id)
