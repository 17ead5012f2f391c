"""The one training loop. A method is a plug-in (cts.methods): it supplies its batch source, its
reward and its loss terms; the loop reads the same for all of them:

    BUILD THE BATCH  host side: a data draw seeded by (seed, step); rollouts for the GRPO family
    UPDATE           μ jitted updates on the batch (μ = 1 except GRPO's num_iterations): the
                     method's loss terms → grads → clip → AdamW
    LOG              one JSONL row per step (+ a progress line every `log_every` steps)
    CHECKPOINT       Orbax, every `checkpoint_every` steps and at the end

    B0  sft            on revisions y¹                         cts/methods/sft.py
    B1  dpo            y¹ ≻ y⁰ against the frozen base          cts/methods/dpo.py
    B2  grpo           reward = 1[correct]                      cts/methods/grpo.py
    B3  grpo           reward = 1[correct] + w·step_score       cts/methods/grpo.py
    B4  grpo           B3 reward, minus a penalty on the critique-flagged step's tokens
    B5  cts            B3 + λ₁ L_align + λ₂ L_decode + λ₃ L_E    cts/methods/cts_terms.py
    B6  critique_grpo  B3 + the teacher's refinement of a failed rollout in its group (off-policy,
                       policy-shaped)                           cts/methods/critique_grpo.py
    base policy        sft on gold + error-injected solutions

A rerun resumes from the latest checkpoint and, because every random draw is keyed by (seed, step),
ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cts.distributed import assemble_global_batch, is_writer, map_once  # i18: multi-process
from cts.io import atomic_write_jsonl
from cts.methods.base import Method, TrainData
from cts.train.checkpoint import CheckpointStore
from cts.train.runtime import PolicyRuntime

__all__ = ["DeadRunError", "LoopConfig", "NonFiniteError", "TrainData", "make_optimizer", "make_schedule",
           "make_train_step", "train"]


class NonFiniteError(FloatingPointError):
    """A loss term or the gradient became NaN/inf; the message names the term and the step."""


class DeadRunError(RuntimeError):
    """The run stopped learning: gradient norm exactly 0, or the NLL pinned at ln(vocab) (uniform
    predictions), for `dead_run_steps` steps in a row; the message gives step, loss, lr, grad norm."""


_TRAIN_KEYS = ("steps", "prompts_per_step", "group_size", "learning_rate", "warmup_steps", "weight_decay",
               "grad_clip", "max_new_tokens", "temperature", "top_p", "checkpoint_every", "sampler_batch_size")
_MONITOR_KEYS = ("log_every", "dead_run_steps")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The shared budget of a run (config block `train`, plus `monitor`). The defaults are
    workflow_config.yaml's `train` and `monitor` values, where each has its reason
    (tests/test_loop.py checks they stay equal); cells pass every key, the base policy its SFT ones."""

    steps: int
    prompts_per_step: int
    group_size: int = 4
    learning_rate: float = 1e-4
    warmup_steps: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    checkpoint_every: int = 10
    sampler_batch_size: int = 16  # rollout rows per sampler call (16 of 64: 2–3× less per row-step on CPU)
    seed: int = 0
    log_every: int = 10       # a progress line every N steps (monitor.log_every)
    dead_run_steps: int = 20  # abort after N steps in a row with no learning signal (monitor.dead_run_steps)

    @classmethod
    def from_cell(cls, cell: dict, monitor: dict | None = None) -> "LoopConfig":
        """A cell's `train` block (cts.config.cell_config), its seed and the `monitor` block."""
        monitor = monitor or {}
        return cls(seed=cell["seed"], **{k: cell["train"][k] for k in _TRAIN_KEYS if k in cell["train"]},
                   **{k: monitor[k] for k in _MONITOR_KEYS if k in monitor})


def make_schedule(cfg: LoopConfig, updates_per_step: int = 1) -> optax.Schedule:
    """Learning rate of optimizer update n = 0, 1, ...: linear warm-up lr·(n+1)/W over the first W
    updates (counted from 1, so update 0 already moves the weights; counted from 0 it would get lr 0
    and change nothing), then cosine decay to lr/10 at the last update."""
    total = cfg.steps * updates_per_step
    if not cfg.warmup_steps:
        return optax.warmup_cosine_decay_schedule(init_value=cfg.learning_rate, peak_value=cfg.learning_rate,
                                                  warmup_steps=0, decay_steps=max(total, 1),
                                                  end_value=cfg.learning_rate * 0.1)
    w = cfg.warmup_steps
    return optax.warmup_cosine_decay_schedule(
        init_value=cfg.learning_rate / w, peak_value=cfg.learning_rate, warmup_steps=w - 1,
        decay_steps=max(total, w), end_value=cfg.learning_rate * 0.1)


def make_optimizer(cfg: LoopConfig, updates_per_step: int = 1) -> optax.GradientTransformation:
    schedule = make_schedule(cfg, updates_per_step)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))


def make_train_step(method: Method, optimizer: optax.GradientTransformation):
    """The jitted UPDATE: (params, opt_state, ref_params, batch) -> (params, opt_state, metrics); the
    method's `loss_and_grads` gives the loss terms and their combined gradient."""

    @jax.jit
    def train_step(params, opt_state, ref_params, batch):
        loss, grads, metrics = method.loss_and_grads(params, ref_params, batch)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "loss": loss, "grad_norm": grad_norm}

    return train_step


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


def train(*, runtime: PolicyRuntime, init_params, ref_params, method: Method, data: TrainData,
          loop: LoopConfig, ckpt_dir: str, log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
    """Run the loop; returns (final params, metric rows). Resumes from `ckpt_dir` when possible.

    `method` (cts.methods) sets itself up first (its heads, optimizer partition, padded lengths);
    `method.report(params, rows)` afterwards gives its block of the cell's final.json.
    """
    mu = method.updates_per_batch
    params, optimizer = method.setup(data, loop, {"policy": init_params}, make_optimizer(loop, mu), log)
    step_fn = make_train_step(method, optimizer)
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
    schedule = make_schedule(loop, mu)
    dead = _DeadRunMonitor(loop.dead_run_steps, math.log(runtime.model_cfg.vocab_size), nll=method.nll)
    t_start = time.perf_counter()
    with open(metrics_path if is_writer() else os.devnull, "a") as mlog:  # i18: process 0 writes files
        for step in range(start, loop.steps):
            t0 = time.perf_counter()
            rng = np.random.default_rng([loop.seed, step])
            key = jax.random.fold_in(base_key, step)
            # BUILD THE BATCH
            batch, host = method.build_batch(params, rng, key)
            # sharded runs split the batch over ("data", "fsdp"); the single-device path is unchanged
            on_mesh = runtime.parallelism.sharded or jax.process_count() > 1  # i18: global batch from local rows
            dev_batch = assemble_global_batch(batch, runtime.mesh) if on_mesh else _to_device(batch)
            # UPDATE: μ optimizer updates on this batch (the metrics are the last one's)
            for _ in range(mu):
                params, opt_state, metrics = step_fn(params, opt_state, ref_params, dev_batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(metrics, step)
            lr = float(schedule(step * mu))  # the learning rate of this step's first update
            dead.update(step, metrics, lr)
            # LOG: time/* keys are wall-clock; every other key is a deterministic function of (config, seed)
            row = {"step": step, **host, **metrics, "lr": lr, "time/step_s": time.perf_counter() - t0}
            rows.append(row)
            mlog.write(json.dumps(row, sort_keys=True) + "\n")
            mlog.flush()
            # CHECKPOINT
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
