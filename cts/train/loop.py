"""The one training loop. Every method is a configuration of it: (data source, reward, loss terms).

    B0  sft   on revisions y¹                      — data: quadruples
    B1  dpo   y¹ ≻ y⁰ against the frozen base      — data: failed quadruples
    B2  grpo  reward = 1[correct]                  — data: train prompts, G rollouts each
    B3  grpo  reward = 1[correct] + w·step_score   — the strong verifier baseline
    B4  grpo  B3 reward, minus a penalty on the tokens of the critique-flagged step
    B5  grpo  B3 + λ₁ L_align + λ₂ L_decode + λ₃ L_E on failed quadruples (CTS)
    base      sft on gold + error-injected solutions (the shared base policy)

One step: BUILD THE BATCH (host: data draw seeded by (seed, step); rollouts for GRPO), then one
jitted UPDATE (loss terms → grads → clip → AdamW). Metrics go to a JSONL log; Orbax checkpoints
every `checkpoint_every` steps. A rerun resumes from the latest checkpoint and, because every
random draw is keyed by (seed, step), ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cts.distributed import assemble_global_batch, is_writer, map_once  # i18: multi-process
from cts.io import atomic_write_jsonl
from cts.losses.dpo import dpo_loss, sequence_logps
from cts.losses.grpo import GRPOConfig, grpo_advantages, grpo_loss, token_advantages
from cts.losses.sft import sft_loss
from cts.model.policy import token_logprobs
from cts.tasks.schema import Problem, Quadruple
from cts.train.batching import bucket_length, encode_prompt, make_batch
from cts.train.checkpoint import CheckpointStore
from cts.train.runtime import PolicyRuntime

__all__ = ["DeadRunError", "LoopConfig", "MethodSpec", "NonFiniteError", "TrainData", "make_optimizer", "train"]


class NonFiniteError(FloatingPointError):
    """A loss term or the gradient became NaN/inf; the message names the term and the step."""


class DeadRunError(RuntimeError):
    """The run stopped learning: gradient norm exactly 0, or the NLL pinned at ln(vocab) (uniform
    predictions), for `dead_run_steps` steps in a row; the message gives step, loss, lr, grad norm."""


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    steps: int
    prompts_per_step: int
    group_size: int = 4
    learning_rate: float = 3e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_new_tokens: int = 160
    temperature: float = 1.0
    top_p: float = 1.0
    checkpoint_every: int = 10
    seed: int = 0
    log_every: int = 10       # a progress line every N steps (monitor.log_every)
    dead_run_steps: int = 20  # abort after N steps in a row with no learning signal (monitor.dead_run_steps)


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """What distinguishes methods: the loss, the reward, and the extra terms."""

    loss: str  # sft | dpo | grpo
    reward: str = "outcome"  # outcome | verifier | critique
    verifier_weight: float = 0.5
    critique_penalty: float = 0.5
    beta: float = 0.1  # DPO β
    grpo: dict = field(default_factory=dict)
    cts: dict | None = None

    def __post_init__(self):
        if self.loss not in ("sft", "dpo", "grpo"):
            raise ValueError(f"MethodSpec.loss must be sft|dpo|grpo, got {self.loss!r}")
        if self.reward not in ("outcome", "verifier", "critique"):
            raise ValueError(f"MethodSpec.reward must be outcome|verifier|critique, got {self.reward!r}")
        if self.cts is not None and self.loss != "grpo":
            raise ValueError("CTS terms ride on GRPO (B5 = B3 + CTS); got loss=" + repr(self.loss))

    @classmethod
    def from_cell(cls, cell: dict) -> "MethodSpec":
        m = cell["method_config"]
        return cls(loss=m["loss"], reward=m.get("reward", "outcome"),
                   verifier_weight=m.get("verifier_weight", 0.5),
                   critique_penalty=m.get("critique_penalty", 0.5), beta=m.get("beta", 0.1),
                   grpo=cell.get("grpo", {}), cts=cell.get("cts") if m.get("cts") else None)


@dataclass
class TrainData:
    sft_pairs: list[tuple[str, str]] = field(default_factory=list)        # (prompt, response)
    problems: list[Problem] = field(default_factory=list)                 # GRPO prompts
    quadruples: list[Quadruple] = field(default_factory=list)             # teacher output (train split)
    problems_by_id: dict[str, Problem] = field(default_factory=dict)


def make_schedule(cfg: LoopConfig) -> optax.Schedule:
    decay_steps = max(cfg.steps, cfg.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps, decay_steps=decay_steps, end_value=cfg.learning_rate * 0.1)


def make_optimizer(cfg: LoopConfig) -> optax.GradientTransformation:
    schedule = make_schedule(cfg)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))


# ----------------------------------------------------------------------------- rewards

def grpo_rewards(spec: MethodSpec, verdicts) -> np.ndarray:
    """B2: 1[correct]. B3/B4/B5: 1[correct] + w·step_score (annotation checks / test pass rate)."""
    correct = np.array([v.correct for v in verdicts], np.float32)
    if spec.reward == "outcome":
        return correct
    return correct + spec.verifier_weight * np.array([v.step_score for v in verdicts], np.float32)


# ----------------------------------------------------------------------------- loss

def _masked_logps(runtime: PolicyRuntime, params, b: dict):
    logits, hidden = runtime.forward(params, b["tokens"], b["segment_ids"])
    return token_logprobs(logits, b["tokens"]), hidden  # (B, T), (B, T, D)


def make_loss_fn(runtime: PolicyRuntime, spec: MethodSpec, grpo_cfg: GRPOConfig | None, cts_terms: None = None):
    """loss(params, ref_params, batch) -> (total, metrics); the terms present depend on the batch
    (the CTS terms are added by the train step's `cts_step`, which combines them with L_GRPO)."""
    if cts_terms is not None:
        raise TypeError("make_loss_fn: CTS terms are added by make_train_step(..., cts_step), not here")

    def loss_fn(params, ref_params, batch):
        metrics, total = {}, jnp.zeros((), jnp.float32)
        policy = params["policy"]
        if "sft" in batch:  # B0 and the base policy: NLL of the response tokens
            b = batch["sft"]
            logp, _ = _masked_logps(runtime, policy, b)
            loss, m = sft_loss(logp, b["loss_mask"])
            total, metrics = total + loss, {**metrics, **m}
        if "dpo" in batch:  # B1: chosen (y¹) and rejected (y⁰) stacked in one batch
            b = batch["dpo"]
            logp, _ = _masked_logps(runtime, policy, b)
            ref_logp, _ = _masked_logps(runtime, ref_params, b)
            seq, ref_seq = sequence_logps(logp, b["loss_mask"]), sequence_logps(ref_logp, b["loss_mask"])
            n = seq.shape[0] // 2
            loss, m = dpo_loss(seq[:n], seq[n:], jax.lax.stop_gradient(ref_seq[:n]),
                               jax.lax.stop_gradient(ref_seq[n:]), beta=spec.beta)
            total, metrics = total + loss, {**metrics, **m}
        if "grpo" in batch:  # B2–B5: on-policy clipped surrogate + β·KL to the frozen base
            b = batch["grpo"]
            logp, _ = _masked_logps(runtime, policy, b)
            ref_logp, _ = _masked_logps(runtime, ref_params, b)
            adv = grpo_advantages(b["rewards"], grpo_cfg)  # (B,) group-normalised
            adv = token_advantages(adv, b["loss_mask"], flagged_mask=b["flag"],
                                   step_penalty=spec.critique_penalty if spec.reward == "critique" else 0.0)
            loss, m = grpo_loss(logp, None, jax.lax.stop_gradient(ref_logp), adv, b["loss_mask"], grpo_cfg)
            total, metrics = total + loss, {**metrics, **m}
        return total, metrics

    return loss_fn


def make_train_step(loss_fn, optimizer, cts_step: Callable | None = None):
    """cts_step(params, cts_batch, loss, grads) -> (loss, grads, metrics) adds the CTS terms (B5):
    each term differentiated over its own forward pass, all combined by cts_objective.cts_total."""

    @jax.jit
    def train_step(params, opt_state, ref_params, batch):
        main = {k: v for k, v in batch.items() if k != "cts"}
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, ref_params, main)
        if cts_step is not None and "cts" in batch:  # B5: + λ₁ L_align + λ₂ L_decode + λ₃ L_E
            loss, grads, m = cts_step(params, batch["cts"], loss, grads)
            metrics = {**metrics, **m}
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}

    return train_step


# ----------------------------------------------------------------------------- batches

def _draw(rng: np.random.Generator, n_items: int, k: int, what: str) -> np.ndarray:
    if n_items == 0:
        raise ValueError(f"no {what} to train on (check the teacher and split outputs)")
    return rng.choice(n_items, size=k, replace=n_items < k)


def _pad_length(runtime, pairs) -> int:
    """One padded length for the whole run (the longest pair, bucketed): one compile, not one per batch."""
    longest = max(len(encode_prompt(runtime.tok, p)) + len(runtime.tok.encode(r)) + 1 for p, r in pairs)
    return bucket_length(longest, runtime.model_cfg.max_len)


def _sft_batch(runtime, data: TrainData, loop: LoopConfig, rng, pad_to: int) -> dict:
    idx = _draw(rng, len(data.sft_pairs), loop.prompts_per_step, "SFT pairs")
    pairs = [data.sft_pairs[i] for i in idx]
    b = make_batch(runtime.tok, [p for p, _ in pairs], [r for _, r in pairs], runtime.model_cfg.max_len,
                   pad_to=pad_to)
    return {"sft": b.as_dict()}


def _dpo_batch(runtime, data: TrainData, loop: LoopConfig, rng, pad_to: int) -> dict:
    failed = [q for q in data.quadruples if not q.attempt_correct]
    idx = _draw(rng, len(failed), loop.prompts_per_step, "failed attempts for DPO pairs")
    qs = [failed[i] for i in idx]
    prompts = [q.prompt for q in qs] * 2
    responses = [q.revision for q in qs] + [q.attempt for q in qs]  # chosen rows, then rejected
    b = make_batch(runtime.tok, prompts, responses, runtime.model_cfg.max_len, pad_to=pad_to)
    return {"dpo": b.as_dict()}


def _grpo_pad_length(runtime, data: TrainData, loop: LoopConfig) -> int:
    """Longest prompt of the task + the rollout budget, bucketed (one compile per run)."""
    if not data.problems:
        raise ValueError("no training problems for GRPO (check the split outputs)")
    longest_prompt = max(len(encode_prompt(runtime.tok, p.prompt)) for p in data.problems)
    return bucket_length(longest_prompt + loop.max_new_tokens + 1, runtime.model_cfg.max_len)


def _grpo_batch(runtime, params, data: TrainData, spec: MethodSpec, loop: LoopConfig, rng, key, pad_to: int):
    from cts.teachers.programmatic import critique
    from cts.verifiers.outcome import verify_many

    idx = _draw(rng, len(data.problems), loop.prompts_per_step, "training problems")
    problems = [data.problems[i] for i in idx for _ in range(loop.group_size)]  # groups contiguous
    prompts = [p.prompt for p in problems]
    t0 = time.perf_counter()
    completions, ids, finished = runtime.generate(
        params["policy"], prompts, key, max_new_tokens=loop.max_new_tokens, batch_size=len(prompts),
        temperature=loop.temperature, top_p=loop.top_p, return_ids=True)
    t_sample = time.perf_counter() - t0
    verdicts = map_once(verify_many, list(zip(problems, completions)))  # i18: each completion verified once
    rewards = grpo_rewards(spec, verdicts)
    flags = [None] * len(problems)
    quads = None
    if spec.reward == "critique" or (spec.cts and spec.cts.get("online_critique")):
        quads = [critique(p, c, v.code_verdict) for p, c, v in zip(problems, completions, verdicts)]
        if spec.reward == "critique":
            flags = [tuple(q.error_span) if q.error_span is not None else None for q in quads]
    b = make_batch(runtime.tok, prompts, completions, runtime.model_cfg.max_len, flag_spans=flags,
                   pad_to=pad_to, response_ids=ids, finished=finished)
    host = {"reward/mean": float(rewards.mean()), "reward/accuracy": float(np.mean([v.correct for v in verdicts])),
            "time/sample_s": t_sample, "rollout/mean_len": float(np.mean([len(c) for c in completions]))}
    return {"grpo": {**b.as_dict(), "rewards": rewards}}, host, quads


def _to_device(batch):
    return jax.tree.map(jnp.asarray, batch)


# ----------------------------------------------------------------------------- the loop

def _check_finite(metrics: dict, step: int) -> None:
    for k, v in metrics.items():
        if not np.all(np.isfinite(np.asarray(v))):
            term = "the gradient" if k == "grad_norm" else f"loss term {k!r}"
            raise NonFiniteError(f"non-finite value in {term} at step {step}: {np.asarray(v)!r}")


class _DeadRunMonitor:
    """Counts consecutive steps without a learning signal: a gradient norm of exactly 0 (no
    update at all), or — for an NLL loss — a loss within 1e-3 of ln(vocab), the loss of uniform
    predictions (a collapsed model). One such step happens legitimately (GRPO groups whose
    rewards are all equal, at step 0 where the KL gradient is 0); `n` of them in a row do not."""

    def __init__(self, n: int, ln_vocab: float, nll: bool):
        self.n, self.ln_vocab, self.nll, self.run, self.why = n, ln_vocab, nll, 0, ""

    def update(self, step: int, metrics: dict, lr: float) -> None:
        loss, gnorm = metrics["loss"], metrics["grad_norm"]
        pinned = self.nll and abs(loss - self.ln_vocab) < 1e-3
        if gnorm == 0.0 or pinned:
            self.run += 1
            self.why = "gradient norm exactly 0" if gnorm == 0.0 else f"loss pinned at ln(vocab) = {self.ln_vocab:.4f}"
        else:
            self.run = 0
        if self.n and self.run >= self.n:
            raise DeadRunError(
                f"dead run: {self.why} for {self.run} steps in a row (monitor.dead_run_steps = {self.n}); "
                f"at step {step}: loss {loss:.6g}, lr {lr:.3g}, grad norm {gnorm:.3g}. "
                "Lower the learning rate (a too-large one collapses the model) or check the data and rewards")


def _progress_line(step: int, loop: LoopConfig, metrics: dict, host: dict, lr: float, step_s: float,
                   elapsed_s: float, steps_done: int) -> str:
    """`step 20/30 loss 0.41 reward/mean 0.52 ... 1.9 s/step lr 1.0e-04 ETA 19 s`."""
    keys = [k for k in ("reward/mean", "reward/accuracy", "sft/token_nll", "dpo/accuracy", "grpo/kl",
                        "cts/align", "cts/decode", "cts/energy") if k in {**host, **metrics}]
    vals = {**metrics, **host}
    eta = elapsed_s / max(1, steps_done) * (loop.steps - step - 1)  # elapsed_s excludes the compile step
    return (f"step {step + 1}/{loop.steps} loss {metrics['loss']:.4f} "
            + "".join(f"{k} {vals[k]:.3f} " for k in keys)
            + f"grad {metrics['grad_norm']:.3g} {step_s:.2f} s/step lr {lr:.2e} ETA {eta:.0f} s")


def _resume_metrics(path: str, start: int) -> list[dict]:
    """Metric lines of steps < start (later lines were written after the last checkpoint)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # the line a kill cut in half
                if row.get("step", math.inf) < start:
                    rows.append(row)
    if is_writer():  # i18: process 0 writes files
        atomic_write_jsonl(path, rows)
    return rows


def train(*, runtime: PolicyRuntime, init_params, ref_params, spec: MethodSpec, data: TrainData,
          loop: LoopConfig, ckpt_dir: str, log: Callable[[str], None] = print,
          cts_setup: Callable | None = None) -> tuple[dict, list[dict]]:
    """Run the loop; returns (final params, metric rows). Resumes from `ckpt_dir` when possible.

    cts_setup(runtime, spec, params, optimizer) -> (params_with_heads, cts_step, make_cts_batch,
    optimizer) wires the CTS terms in (cts.train.cts_step: it also warms the critic up); None for
    methods without them.
    """
    optimizer = make_optimizer(loop)
    params = {"policy": init_params}
    cts_step = make_cts_batch = None
    if spec.cts is not None:
        params, cts_step, make_cts_batch, optimizer = cts_setup(runtime, spec, params, optimizer)
    grpo_cfg = GRPOConfig(num_generations=loop.group_size, **spec.grpo) if spec.loss == "grpo" else None
    step_fn = make_train_step(make_loss_fn(runtime, spec, grpo_cfg), optimizer, cts_step)
    opt_state = optimizer.init(params)

    store = CheckpointStore(ckpt_dir)
    metrics_path = os.path.join(ckpt_dir, "metrics.live.jsonl")
    start = 0
    # ckpt_dir is named by the digest of this job's config and inputs (cts.train.checkpoint.state_dir),
    # so whatever is here was written by this same job; an unreadable latest step falls back to the one before
    latest, restored = store.restore_latest({"params": params, "opt_state": opt_state}, log=log)
    if latest is not None:
        params, opt_state, start = restored["params"], restored["opt_state"], latest
        log(f"resumed from checkpoint step {latest} in {ckpt_dir}")
    # Commit the whole state to the mesh the jitted step returns it on (optax creates its step
    # counters on a single device): otherwise step 2 sees new shardings and compiles again.
    replicated = jax.sharding.NamedSharding(runtime.mesh, jax.sharding.PartitionSpec())

    def commit(x):  # keep what is already laid out on the mesh (sharded weights); replicate the rest
        if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding):
            return x
        return jax.device_put(np.asarray(x), replicated)  # i18: host value → every process's devices

    params, opt_state = jax.tree.map(commit, (params, opt_state))
    rows = _resume_metrics(metrics_path, start)
    base_key = jax.random.key(loop.seed)
    pad_to = 0
    if spec.loss == "sft":
        pad_to = _pad_length(runtime, data.sft_pairs)
    elif spec.loss == "dpo":
        pad_to = _pad_length(runtime, [(q.prompt, r) for q in data.quadruples for r in (q.attempt, q.revision)])
    else:
        pad_to = _grpo_pad_length(runtime, data, loop)

    schedule = make_schedule(loop)
    dead = _DeadRunMonitor(loop.dead_run_steps, math.log(runtime.model_cfg.vocab_size), nll=spec.loss == "sft")
    t_start = time.perf_counter()
    with open(metrics_path if is_writer() else os.devnull, "a") as mlog:  # i18: process 0 writes files
        for step in range(start, loop.steps):
            t0 = time.perf_counter()
            rng = np.random.default_rng([loop.seed, step])
            key = jax.random.fold_in(base_key, step)
            # BUILD THE BATCH
            host, quads = {}, None
            if spec.loss == "sft":
                batch = _sft_batch(runtime, data, loop, rng, pad_to)
            elif spec.loss == "dpo":
                batch = _dpo_batch(runtime, data, loop, rng, pad_to)
            else:
                batch, host, quads = _grpo_batch(runtime, params, data, spec, loop, rng, key, pad_to)
            if make_cts_batch is not None:
                batch["cts"] = make_cts_batch(rng, quads)
            # UPDATE
            # sharded runs split the batch over ("data", "fsdp"); the single-device path is unchanged
            on_mesh = runtime.parallelism.sharded or jax.process_count() > 1  # i18: global batch from local rows
            dev_batch = assemble_global_batch(batch, runtime.mesh) if on_mesh else _to_device(batch)
            params, opt_state, metrics = step_fn(params, opt_state, ref_params, dev_batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(metrics, step)
            lr = float(schedule(step))
            dead.update(step, metrics, lr)
            # time/* keys are wall-clock; every other key is a deterministic function of (config, seed)
            row = {"step": step, **host, **metrics, "lr": lr, "time/step_s": time.perf_counter() - t0}
            rows.append(row)
            mlog.write(json.dumps(row, sort_keys=True) + "\n")
            mlog.flush()
            if (step + 1) % loop.checkpoint_every == 0 or step + 1 == loop.steps:
                store.save(step + 1, {"params": params, "opt_state": opt_state})
            if step == start:  # the first step compiles: the ETA uses the steps after it
                t_start = time.perf_counter()
            if step % loop.log_every == 0 or step + 1 == loop.steps:
                done = step - start  # steps timed since the compile step
                log(_progress_line(step, loop, metrics, host, lr, row["time/step_s"],
                                   time.perf_counter() - t_start if done else row["time/step_s"], max(1, done)))
    store.close()
    return params, rows
