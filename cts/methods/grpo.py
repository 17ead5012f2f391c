"""B2–B4: GRPO (cts.losses.grpo) on G rollouts per train prompt, with three rewards:

    B2  outcome   r = 1[correct]
    B3  verifier  r = 1[correct] + w·step_score          (w = verifier_weight)
    B4  critique  B3's r, and the tokens of the step the programmatic teacher flags in each sampled
                  completion get advantage Â − λ_pen   (λ_pen = critique_penalty)

μ optimizer updates per rollout batch (Tunix `num_iterations`): with μ = 1 the update is on-policy,
π_old = sg(πθ) and the ratio ρ ≡ 1, so the ε_low/ε_high clip never acts; with μ > 1 the batch carries
log π_old from the policy that sampled it and updates 2..μ see ρ ≠ 1, which the clip bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np

from cts.losses.grpo import GRPOConfig, grpo_advantages, grpo_loss, token_advantages
from cts.methods import register_method
from cts.methods.base import Method, MethodConfig, draw, masked_logps
from cts.model.policy import token_logprobs
from cts.teachers.programmatic import critique
from cts.train.batching import bucket_length, encode_prompt, make_batch
from cts.verifiers.outcome import verify_many
from cts.distributed import map_once

__all__ = ["GRPOMethod", "GRPOMethodConfig", "Rollouts"]

REWARDS = ("outcome", "verifier", "critique")


@dataclass(frozen=True, kw_only=True)
class GRPOMethodConfig(MethodConfig):
    """A GRPO-family method (symbols: Shao et al. 2024; μ as in the GRPO paper's Algorithm 1).

    Attributes:
      reward: "outcome" (B2) | "verifier" (B3, B5) | "critique" (B4).
      verifier_weight: w in r = 1[correct] + w·step_score (read for verifier and critique).
      critique_penalty: λ_pen ≥ 0, B4's advantage penalty on the flagged step's tokens.
      num_iterations: μ, optimizer updates per rollout batch (Tunix `num_iterations`). Default 1:
        the setting every measured result of this project was produced with (Tunix's default too);
        μ > 1 reuses each batch of rollouts (cheaper per update) and makes the clip act.
      grpo: GRPOConfig (G = train.group_size, β, ε_low, ε_high, KL estimator, aggregation).
    """

    reward: str = "outcome"
    verifier_weight: float = 0.5
    critique_penalty: float = 0.5
    num_iterations: int = 1
    grpo: GRPOConfig = GRPOConfig(num_generations=4)

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"{type(self).__name__}.reward must be one of {REWARDS}, got {self.reward!r}")
        for name in ("verifier_weight", "critique_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a number >= 0, got {v!r}")
        if isinstance(self.num_iterations, bool) or not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            raise ValueError(f"{type(self).__name__}.num_iterations (μ) must be an int >= 1, got {self.num_iterations!r}")
        if not isinstance(self.grpo, GRPOConfig):
            raise TypeError(f"{type(self).__name__}.grpo must be a GRPOConfig, got {type(self.grpo).__name__}")

    @classmethod
    def fields_from_cell(cls, cell: dict) -> dict:
        """The GRPO fields of a cell: its method block, the shared `grpo` block, G from `train`."""
        m, g = cell["method_config"], dict(cell.get("grpo", {}))
        out = {k: m[k] for k in ("reward", "verifier_weight", "critique_penalty") if k in m}
        if "num_iterations" in g:
            out["num_iterations"] = g.pop("num_iterations")
        out["grpo"] = GRPOConfig(num_generations=cell["train"]["group_size"], **g)
        return out

    @classmethod
    def from_cell(cls, cell: dict) -> "GRPOMethodConfig":
        return cls(**cls.fields_from_cell(cell))


@dataclass
class Rollouts:
    """One step's G completions per drawn prompt (groups contiguous) and their verdicts."""

    problems: list
    completions: list[str]
    ids: list
    finished: list
    verdicts: list
    sample_s: float

    def critiques(self):
        """The programmatic teacher's quadruple of every rollout (deterministic: its own cache)."""
        return [critique(p, c, v.code_verdict) for p, c, v in zip(self.problems, self.completions, self.verdicts)]


@register_method("grpo")
class GRPOMethod(Method):
    Config = GRPOMethodConfig

    @property
    def updates_per_batch(self) -> int:
        return self.config.num_iterations

    def setup(self, data, loop, params, optimizer, log=print):
        params, optimizer = super().setup(data, loop, params, optimizer, log)
        if self.config.grpo.num_generations != loop.group_size:
            raise ValueError(f"GRPO group size G = {self.config.grpo.num_generations} but the loop samples "
                             f"train.group_size = {loop.group_size}")
        if not data.problems:
            raise ValueError("no training problems for GRPO (check the split outputs)")
        # longest prompt + the rollout budget, bucketed: one compile per run
        longest_prompt = max(len(encode_prompt(self.runtime.tok, p.prompt)) for p in data.problems)
        self.pad_to = bucket_length(longest_prompt + loop.max_new_tokens + 1, self.runtime.model_cfg.max_len)
        runtime = self.runtime
        self._old_logps = jax.jit(lambda policy, tokens, seg: token_logprobs(runtime.forward(policy, tokens, seg)[0], tokens))
        return params, optimizer

    # BATCH SOURCE -------------------------------------------------------------

    def rollouts(self, params, rng, key) -> Rollouts:
        loop = self.loop
        idx = draw(rng, len(self.data.problems), loop.prompts_per_step, "training problems")
        problems = [self.data.problems[i] for i in idx for _ in range(loop.group_size)]  # groups contiguous
        t0 = time.perf_counter()
        completions, ids, finished = self.runtime.generate(
            params["policy"], [p.prompt for p in problems], key, max_new_tokens=loop.max_new_tokens,
            batch_size=min(loop.sampler_batch_size, len(problems)),  # rows per sampler call (train.sampler_batch_size)
            temperature=loop.temperature, top_p=loop.top_p, return_ids=True)
        sample_s = time.perf_counter() - t0
        verdicts = map_once(verify_many, list(zip(problems, completions)))  # each completion verified once across processes
        return Rollouts(problems, completions, ids, finished, verdicts, sample_s)

    def rewards(self, verdicts) -> np.ndarray:
        """[n] rewards: 1[correct], plus w·step_score for the verifier and critique rewards."""
        correct = np.array([v.correct for v in verdicts], np.float32)
        if self.config.reward == "outcome":
            return correct
        return correct + self.config.verifier_weight * np.array([v.step_score for v in verdicts], np.float32)

    def grpo_batch(self, params, r: Rollouts) -> tuple[dict, dict]:
        """The rollouts as the "grpo" batch ([B, T] arrays, B = prompts · G; rewards [B]); log π_old [B, T]
        of the sampling policy when μ > 1."""
        rewards = self.rewards(r.verdicts)
        flags = [None] * len(r.problems)
        if self.config.reward == "critique":  # B4: the teacher flags a step in each sampled completion
            flags = [tuple(q.error_span) if q.error_span is not None else None for q in r.critiques()]
        b = make_batch(self.runtime.tok, [p.prompt for p in r.problems], r.completions,
                       self.runtime.model_cfg.max_len, flag_spans=flags, pad_to=self.pad_to,
                       response_ids=r.ids, finished=r.finished)
        grpo = {**b.as_dict(), "rewards": rewards}
        if self.config.num_iterations > 1:
            grpo["old_logps"] = np.asarray(self._old_logps(params["policy"], b.tokens, b.segment_ids))
        host = {"reward/mean": float(rewards.mean()),
                "reward/accuracy": float(np.mean([v.correct for v in r.verdicts])),
                "time/sample_s": r.sample_s, "rollout/mean_len": float(np.mean([len(c) for c in r.completions]))}
        return {"grpo": grpo}, host

    def build_batch(self, params, rng, key):
        return self.grpo_batch(params, self.rollouts(params, rng, key))

    # LOSS ---------------------------------------------------------------------

    def loss(self, params, ref_params, batch):
        """batch["grpo"]: tokens, segment_ids, loss_mask, flag [B, T], rewards [B], optional old_logps
        [B, T] -> (clipped surrogate + β·KL to the frozen base, metrics)."""
        b, cfg = batch["grpo"], self.config
        logp, _ = masked_logps(self.runtime, params["policy"], b)  # (B, T)
        ref_logp, _ = masked_logps(self.runtime, ref_params, b)  # (B, T)
        adv = grpo_advantages(b["rewards"], cfg.grpo)  # (B,) group-normalised
        adv = token_advantages(adv, b["loss_mask"], flagged_mask=b["flag"],
                               step_penalty=cfg.critique_penalty if cfg.reward == "critique" else 0.0)  # (B, T)
        return grpo_loss(logp, b.get("old_logps"), jax.lax.stop_gradient(ref_logp), adv, b["loss_mask"], cfg.grpo)
