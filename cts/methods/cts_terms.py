"""B5 = B3 + the CTS terms (cts.losses.cts_objective, wired by cts.train.cts_step):

    L = L_GRPO + λ₁·L_align(R_θ, sg(R*)) + λ₂·L_decode(y¹ | x, y⁰, f) + λ₃·L_E

The plug-in owns the whole CTS setup: it adds the heads (P_φ, E_ψ) to the parameters, partitions the
optimizer (ψ gets the critic's own AdamW, or none under A5), warms the critic up and gates on it, and
adds a CTS batch of failed quadruples to every GRPO batch. Values and per-term gradients are combined
by `cts_total`, the one λ combiner (inside `cts_step`), so λ = 0 is bit-identical to B3.
"""

from __future__ import annotations

from dataclasses import dataclass

from cts.losses.alignment import AlignmentConfig
from cts.losses.cts_objective import CTSConfig
from cts.methods import register_method
from cts.methods.grpo import GRPOMethod, GRPOMethodConfig
from cts.answer_format import LABELS
from cts.train.cts_step import CriticConfig, setup_cts

__all__ = ["CTSMethod", "CTSMethodConfig"]

_TERM_KEYS = ("latent_dim", "trajectory", "eta", "edit_steps", "alpha_width", "energy_hidden",
              "critique_embedding", "lam_align", "lam_decode", "lam_energy", "energy_margin",
              "energy_freeze", "online_critique")


@dataclass(frozen=True, kw_only=True)
class CTSMethodConfig(GRPOMethodConfig):
    """B5: a GRPO method (B3's reward) plus the CTS terms.

    Attributes (besides GRPOMethodConfig's):
      terms: CTSConfig — d (latent_dim), η (eta), K (edit_steps), α's width, E_ψ's width, e_f,
        λ₁ (lam_align), λ₂ (lam_decode), λ₃ (lam_energy), m (energy_margin), A5 (energy_freeze),
        A6 (online_critique), L_align's AlignmentConfig. Its `max_steps` is sized to the data at setup.
      critic: CriticConfig — E_ψ's warm-up, its own learning rate and the held-out gate.
      batch_size: failed quadruples per step for the CTS terms (`cts.cts_batch_size`).
    """

    terms: CTSConfig = CTSConfig()
    critic: CriticConfig = CriticConfig()
    batch_size: int = 8

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.terms, CTSConfig):
            raise TypeError(f"CTSMethodConfig.terms must be a CTSConfig, got {type(self.terms).__name__}")
        if not isinstance(self.critic, CriticConfig):
            raise TypeError(f"CTSMethodConfig.critic must be a CriticConfig, got {type(self.critic).__name__}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"CTSMethodConfig.batch_size (cts.cts_batch_size) must be an int >= 1, got {self.batch_size!r}")

    @property
    def online_critique(self) -> bool:
        return self.terms.online_critique

    @classmethod
    def from_cell(cls, cell: dict) -> "CTSMethodConfig":
        d = cell["cts"]
        critic = CriticConfig(**d.get("critic", {}))
        # the critic's step feature is also the trajectory's and the edit's: one choice for all three
        terms = CTSConfig(**{k: d[k] for k in _TERM_KEYS if k in d},
                          step_pool=critic.step_pool, energy_correct_steps=critic.correct_steps,
                          energy_direction=float(critic.direction_weight), energy_form=critic.energy_form,
                          num_critique_ids=len(LABELS) if d.get("critique_embedding") == "learned" else 0,
                          alignment=AlignmentConfig(**d.get("alignment", {})))
        extra = {"batch_size": d["cts_batch_size"]} if "cts_batch_size" in d else {}
        return cls(**cls.fields_from_cell(cell), terms=terms, critic=critic, **extra)


@register_method("cts")
class CTSMethod(GRPOMethod):
    Config = CTSMethodConfig

    def setup(self, data, loop, params, optimizer, log=print):
        params, optimizer = super().setup(data, loop, params, optimizer, log)
        self.wiring = setup_cts(data, log=log, seed=loop.seed)  # heads, optimizer partition, critic warm-up and gate
        params, self.cts_step, self.make_cts_batch, optimizer = self.wiring(self.runtime, self.config, params, optimizer)
        return params, optimizer

    def build_batch(self, params, rng, key):
        r = self.rollouts(params, rng, key)
        batch, host = self.grpo_batch(params, r)
        batch["cts"] = self.make_cts_batch(rng, r.critiques() if self.config.online_critique else None)
        return batch, host

    def loss_and_grads(self, params, ref_params, batch):
        """GRPO's value and gradient on batch["grpo"], then + λ₁L_align + λ₂L_decode + λ₃L_E on batch["cts"]."""
        loss, grads, metrics = super().loss_and_grads(params, ref_params, batch)
        loss, grads, m = self.cts_step(params, batch["cts"], loss, grads)
        return loss, grads, {**metrics, **m}

    def report(self, params, rows):
        return self.wiring.report(params, rows)  # critic and edit-direction block of final.json
