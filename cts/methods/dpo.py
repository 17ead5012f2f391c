"""B1: DPO (Rafailov et al. 2023) on pairs y¹ ≻ y⁰ of the failed train quadruples, against the frozen
base policy as π_ref:  L = −log σ(β[(log πθ(y¹|x) − log π_ref(y¹|x)) − (log πθ(y⁰|x) − log π_ref(y⁰|x))])."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax

from cts.losses.dpo import dpo_loss, sequence_logps
from cts.methods import register_method
from cts.methods.base import Method, MethodConfig, draw, masked_logps, pad_length
from cts.train.batching import make_batch

__all__ = ["DPOConfig", "DPOMethod"]


@dataclass(frozen=True, kw_only=True)
class DPOConfig(MethodConfig):
    """Attributes:
      beta: β, the inverse temperature of the implicit reward β·log(πθ/π_ref). 0.1 is the DPO
        paper's value (workflow_config.yaml: methods_config.B1.beta)."""

    beta: float = 0.1

    def __post_init__(self):
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not (
                math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"DPOConfig.beta must be a finite number > 0, got {self.beta!r}")

    @classmethod
    def from_cell(cls, cell: dict) -> "DPOConfig":
        return cls(beta=cell["method_config"]["beta"])


@register_method("dpo")
class DPOMethod(Method):
    Config = DPOConfig

    def setup(self, data, loop, params, optimizer, log=print):
        params, optimizer = super().setup(data, loop, params, optimizer, log)
        self.failed = [q for q in data.quadruples if not q.attempt_correct]
        if not self.failed:
            raise ValueError("no failed attempts for DPO pairs to train on (check the teacher and split outputs)")
        self.pad_to = pad_length(self.runtime, [(q.prompt, r) for q in data.quadruples for r in (q.attempt, q.revision)])
        return params, optimizer

    def build_batch(self, params, rng, key):
        idx = draw(rng, len(self.failed), self.loop.prompts_per_step, "failed attempts for DPO pairs")
        qs = [self.failed[i] for i in idx]
        prompts = [q.prompt for q in qs] * 2
        responses = [q.revision for q in qs] + [q.attempt for q in qs]  # chosen rows, then rejected
        b = make_batch(self.runtime.tok, prompts, responses, self.runtime.model_cfg.max_len, pad_to=self.pad_to)
        return {"dpo": b.as_dict()}, {}

    def loss(self, params, ref_params, batch):
        """batch["dpo"]: [2B, T] arrays, the B chosen rows then the B rejected rows -> (loss, metrics)."""
        b = batch["dpo"]
        logp, _ = masked_logps(self.runtime, params["policy"], b)  # (2B, T)
        ref_logp, _ = masked_logps(self.runtime, ref_params, b)  # (2B, T)
        seq, ref_seq = sequence_logps(logp, b["loss_mask"]), sequence_logps(ref_logp, b["loss_mask"])  # (2B,)
        n = seq.shape[0] // 2
        return dpo_loss(seq[:n], seq[n:], jax.lax.stop_gradient(ref_seq[:n]),
                        jax.lax.stop_gradient(ref_seq[n:]), beta=self.config.beta)
