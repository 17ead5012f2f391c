"""The interface every method of the one loop implements, and the pieces methods share.

A method supplies three things to `cts.train.loop.train`:
  its BATCH SOURCE  `build_batch(params, rng, key) -> (batch, host_metrics)` on the host: a data draw
                    seeded by (seed, step), rollouts for the GRPO family;
  its REWARD        (GRPO family) inside `build_batch`;
  its LOSS TERMS    `loss_and_grads(params, ref_params, batch) -> (loss, grads, metrics)`, traced
                    inside the loop's jitted UPDATE; the default differentiates `loss`.
Whatever else a method needs (extra heads, an optimizer partition, a warm-up, padded lengths) it
sets up itself in `setup(data, loop, params, optimizer, log)`, called once before the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np

from cts.model.policy import token_logprobs
from cts.tasks.schema import Problem, Quadruple
from cts.train.batching import bucket_length, encode_prompt

__all__ = ["Method", "MethodConfig", "TrainData", "draw", "masked_logps", "pad_length"]


@dataclass
class TrainData:
    sft_pairs: list[tuple[str, str]] = field(default_factory=list)        # (prompt, response)
    problems: list[Problem] = field(default_factory=list)                 # GRPO prompts
    quadruples: list[Quadruple] = field(default_factory=list)             # teacher output (train split)
    problems_by_id: dict[str, Problem] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of the per-family configs; `from_cell` is the one place a cell's blocks become one."""

    @classmethod
    def from_cell(cls, cell: dict) -> "MethodConfig":
        raise NotImplementedError


class Method:
    """One method = (batch source, reward, loss terms) of the one loop. Subclasses register with
    `cts.methods.register_method(name)` and set `Config` to their MethodConfig subclass."""

    Config: type = MethodConfig
    name: str = "?"
    nll: bool = False  # the loss is an NLL: the dead-run monitor also watches for ln(vocab)

    def __init__(self, config: MethodConfig, runtime):
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config, self.runtime = config, runtime
        self.data = self.loop = None
        self.log: Callable[[str], None] = print

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates per built batch (GRPO's μ); 1 for every other method."""
        return 1

    def setup(self, data: TrainData, loop, params: dict, optimizer, log: Callable[[str], None] = print):
        """Once before the first step -> (params, optimizer); may add parameters and partition the optimizer."""
        self.data, self.loop, self.log = data, loop, log
        return params, optimizer

    def build_batch(self, params: dict, rng: np.random.Generator, key: jax.Array) -> tuple[dict, dict]:
        """BUILD THE BATCH (host): -> (batch of NumPy arrays, host metrics for the log row)."""
        raise NotImplementedError

    def loss(self, params: dict, ref_params, batch: dict) -> tuple[jax.Array, dict]:
        """The differentiable loss: (scalar, metrics)."""
        raise NotImplementedError

    def loss_and_grads(self, params: dict, ref_params, batch: dict) -> tuple[jax.Array, dict, dict]:
        """(loss, ∇loss w.r.t. params, metrics); traced inside the loop's jitted update."""
        (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(params, ref_params, batch)
        return loss, grads, metrics

    def report(self, params: dict, rows: list[dict]) -> dict | None:
        """An extra block for the cell's final.json (None: nothing)."""
        return None


# ----------------------------------------------------------------------------- shared pieces

def draw(rng: np.random.Generator, n_items: int, k: int, what: str) -> np.ndarray:
    """k indices into n_items (with replacement only when k > n_items)."""
    if n_items == 0:
        raise ValueError(f"no {what} to train on (check the teacher and split outputs)")
    return rng.choice(n_items, size=k, replace=n_items < k)


def pad_length(runtime, pairs) -> int:
    """One padded length for the whole run (the longest pair, bucketed): one compile, not one per batch."""
    longest = max(len(encode_prompt(runtime.tok, p)) + len(runtime.tok.encode(r)) + 1 for p, r in pairs)
    return bucket_length(longest, runtime.model_cfg.max_len)


def masked_logps(runtime, params, b: dict) -> tuple[jax.Array, jax.Array]:
    """tokens, segment_ids [B, T] -> (log π of each next token [B, T], final hidden states [B, T, D])."""
    logits, hidden = runtime.forward(params, b["tokens"], b["segment_ids"])  # (B, T, V), (B, T, D)
    return token_logprobs(logits, b["tokens"]), hidden
