"""B0 (SFT on the teacher's revisions y¹) and the shared base policy (SFT on gold + error-injected
solutions): L = −(1/|y|) Σ_t log πθ(y_t | x, y_<t) over the response tokens."""

from __future__ import annotations

from dataclasses import dataclass

from cts.losses.sft import sft_loss
from cts.methods import register_method
from cts.methods.base import Method, MethodConfig, draw, masked_logps, pad_length
from cts.train.batching import make_batch

__all__ = ["SFTConfig", "SFTMethod"]


@dataclass(frozen=True, kw_only=True)
class SFTConfig(MethodConfig):
    """SFT has no hyperparameters of its own: the data (TrainData.sft_pairs) and the shared budget
    (LoopConfig: steps, batch, learning rate) define it.

    pad_multiple is layout only (the loss is the same, padding is masked): None pads every batch to
    the data's longest pair (one compiled shape: what a 30-step cell wants); k pads each batch to its
    own longest row rounded up to a multiple of k (≤ max_len / k shapes). train_base keeps None: on the
    default's data random batches of 32 still reach 256 on synth_math (8 of 10 drawn) and synth_code's
    run pad is already 192, so k = 32 measured 1.00× the step (issue 16) for an extra compile."""

    pad_multiple: int | None = None

    def __post_init__(self):
        k = self.pad_multiple
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"SFTConfig.pad_multiple must be None or an int >= 1, got {k!r}")

    @classmethod
    def from_cell(cls, cell: dict) -> "SFTConfig":
        return cls()


@register_method("sft")
class SFTMethod(Method):
    Config = SFTConfig
    nll = True

    def setup(self, data, loop, params, optimizer, log=print):
        params, optimizer = super().setup(data, loop, params, optimizer, log)
        if not data.sft_pairs:
            raise ValueError("no SFT pairs to train on (check the teacher and split outputs)")
        # one pad for the run, or (pad_multiple) each batch's own longest row, bucketed
        self.pad_to = pad_length(self.runtime, data.sft_pairs) if self.config.pad_multiple is None else None
        return params, optimizer

    def build_batch(self, params, rng, key):
        idx = draw(rng, len(self.data.sft_pairs), self.loop.prompts_per_step, "SFT pairs")
        pairs = [self.data.sft_pairs[i] for i in idx]
        b = make_batch(self.runtime.tok, [p for p, _ in pairs], [r for _, r in pairs],
                       self.runtime.model_cfg.max_len, pad_to=self.pad_to, multiple=self.config.pad_multiple or 64)
        return {"sft": b.as_dict()}, {}

    def loss(self, params, ref_params, batch):
        """batch["sft"]: tokens, segment_ids, loss_mask [B, T] -> (mean token NLL, metrics)."""
        b = batch["sft"]
        logp, _ = masked_logps(self.runtime, params["policy"], b)  # (B, T)
        return sft_loss(logp, b["loss_mask"])
