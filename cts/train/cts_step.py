"""Wires the CTS terms (cts.losses.cts_objective) into the one loop: B5 = B3 + CTS.

Per step, besides the GRPO batch, a CTS batch of failed quadruples (x, y⁰, f, y¹):
  attempt   x ⊕ y⁰, with the step map of y⁰ and the flagged step's tokens   → R_θ, α
  revision  x ⊕ y¹, with the step map of y¹ and its step at the flagged index → E_ψ's positive
  critique  x ⊕ f                                                          → e_f (pooled, stop-grad)
  decode    DECODE_TEMPLATE(x, y⁰, f) ⊕ y¹                                   → L_decode = NLL(y¹ | x, y⁰, f)
Quadruples come from the teacher stage (the base policy's attempts), or — ablation A6 — from this
step's own GRPO rollouts critiqued by the programmatic teacher (deterministic, so it is its own cache).

A step map holds every step of the trajectory, the math answer line `#### N` included (an error
there is an error of a step); a flag outside any step (a missing answer line flags the EOS) becomes
a step of its own, so α covers every localised error. Quadruples without a localisation
(error_span None) keep their L_decode, are excluded from α / L_align / L_E, and are counted.

THE CRITIC IS TRAINED BEFORE IT IS TRUSTED. Before the RL phase, E_ψ (and P_φ with
`critic.fit_projection`) is fitted on the failed train quadruples by L_E with its own AdamW
(`critic.learning_rate`, `critic.warmup_steps`), on features of the base policy computed once
(forward passes only: no policy update). A deterministic held-out share of those quadruples
(`critic.dev_fraction`, by problem-id hash; never in any L_E) measures it: dev pair accuracy =
fraction with E_ψ(attempt's flagged step) > E_ψ(revision's step). B5 refuses to start below
`critic.min_dev_pair_accuracy`. During B5, ψ keeps learning from L_E with that same optimizer (not
the policy's clipped AdamW, whose per-parameter normalisation and shared clip made λ₃ irrelevant
and let the critic's gradient shrink the policy's step); A5 freezes ψ after the warm-up.

Gradients per term: the step differentiates each term group over its own forward pass
(GRPO; L_align + L_E on the attempt; L_decode) — the same work as one joint backward, since the
groups share no forward — and combines values AND gradients with `cts_total`, the one λ combiner.
That yields the weighted θ-gradient norm of each term (`cts/grad_norm/{grpo,align,decode}`) for free.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cts.answer_format import LABELS, format_decode_context, trajectory_steps
from cts.losses.cts_objective import (ENERGY_FORMS, STEP_POOLS, CTSConfig, CTSHeads, correct_step_mask, critique_embedding,
                                      cts_loss, cts_total, energy_loss, flagged_feature, localisation_weights,
                                      step_features, term_weights)
from cts.losses.sft import sft_loss
from cts.model.policy import token_logprobs
from cts.train.batching import bucket_length, encode_prompt, make_batch

__all__ = ["CriticConfig", "CriticGateError", "setup_cts", "trajectory_steps"]

_PSI = ("critique_proj", "energy_in", "energy_out", "critique_table")  # E_ψ's parameters


class CriticGateError(ValueError):
    """B5 refused to start: the energy critic is not good enough on held-out quadruples."""


@dataclass(frozen=True, kw_only=True)
class CriticConfig:
    """The energy critic's own training (config block `cts.critic`).

    Attributes:
      warmup_steps: full-batch AdamW steps of L_E on the train quadruples before the RL phase.
      learning_rate: the critic's AdamW step size, in the warm-up and during B5 (constant).
      dev_fraction: share of the failed train quadruples held out from the critic (by problem-id
        hash) to measure it.
      min_dev_pair_accuracy: B5 refuses to start when the held-out pair accuracy is below this.
      min_dev_quadruples: below this many held-out quadruples the accuracy is not a measurement (a
        base that rarely fails leaves almost none): B5 runs and final.json records the gate as
        "not measured" with the count, so the table shows it instead of the DAG stopping.
      fit_projection: the warm-up also fits P_φ (the latent projection) on L_E; during B5 P_φ is
        trained by L_align only, as designed.
      step_pool: a step's feature — "mean" of its tokens' hidden states, the "last" token's, or
        "mean_last" (both); it is the trajectory's point too, so the critic, the edit and L_align
        share it (CTSConfig.step_pool).
      correct_steps: L_E (warm-up and B5) also ranks the flagged step above the attempt's steps
        before it and the revision's other steps (CTSConfig.energy_correct_steps).
      direction_weight: weight of L_E's direction term (warm-up and B5), 1 − cos(−∇_r E_ψ(r_att, e_f),
        r_rev − r_att) on the fitted quadruples: trains the edit's direction, not only the ranking
        (CTSConfig.energy_direction); 0 = ranking only.
      energy_form: E_ψ's form, "mlp" (a scalar MLP of [r; W e_f]) or "well" (½‖r − g_ψ(e_f)‖², the
        edit moves the flagged step toward a learned point) (CTSConfig.energy_form).
    """

    warmup_steps: int = 1000  # the defaults are workflow_config.yaml's, where each has its reason
    learning_rate: float = 3e-3
    dev_fraction: float = 0.2
    min_dev_pair_accuracy: float = 0.8
    min_dev_quadruples: int = 20
    fit_projection: bool = False
    step_pool: str = "mean"
    correct_steps: bool = True
    direction_weight: float = 0.03
    energy_form: str = "mlp"

    def __post_init__(self):
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"cts.critic.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"cts.critic.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.dev_fraction < 1:
            raise ValueError(f"cts.critic.dev_fraction must be in [0, 1), got {self.dev_fraction!r}")
        if not 0 <= self.min_dev_pair_accuracy <= 1:
            raise ValueError(f"cts.critic.min_dev_pair_accuracy must be in [0, 1], got {self.min_dev_pair_accuracy!r}")
        if isinstance(self.min_dev_quadruples, bool) or not (isinstance(self.min_dev_quadruples, int)
                                                             and self.min_dev_quadruples >= 0):
            raise ValueError(f"cts.critic.min_dev_quadruples must be an int >= 0, got {self.min_dev_quadruples!r}")
        if not isinstance(self.fit_projection, bool):
            raise ValueError(f"cts.critic.fit_projection must be a bool, got {self.fit_projection!r}")
        if self.step_pool not in STEP_POOLS:
            raise ValueError(f"cts.critic.step_pool must be one of {STEP_POOLS}, got {self.step_pool!r}")
        if not isinstance(self.correct_steps, bool):
            raise ValueError(f"cts.critic.correct_steps must be a bool, got {self.correct_steps!r}")
        if isinstance(self.direction_weight, bool) or not (isinstance(self.direction_weight, (int, float))
                                                           and self.direction_weight >= 0):
            raise ValueError(f"cts.critic.direction_weight must be a number >= 0, got {self.direction_weight!r}")
        if self.energy_form not in ENERGY_FORMS:
            raise ValueError(f"cts.critic.energy_form must be one of {ENERGY_FORMS}, got {self.energy_form!r}")


# ----------------------------------------------------------------------------- step maps, flags

def _localised(q) -> bool:
    return not q.attempt_correct and q.error_span is not None and q.first_error_step is not None


def _attempt_flag(q) -> tuple[int, int] | None:
    return tuple(q.error_span) if _localised(q) else None


def _revision_flag(kind: str, q) -> tuple[int, int] | None:
    """The revision's step at the attempt's flagged index (the corrected step; the answer line is a
    step); an empty span at the end (its EOS) when the revision has no step there."""
    if not _localised(q):
        return None
    spans = trajectory_steps(kind, q.revision)
    if q.first_error_step < len(spans):
        return spans[q.first_error_step]
    return (len(q.revision), len(q.revision))


def _flags_get_steps(step_ids: np.ndarray, flag: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, T] ×3 -> step ids where flagged response tokens outside any step (the EOS of an attempt
    whose answer line is missing) form one more step, so α and the flagged latent agree."""
    out = step_ids.copy()
    for i in range(out.shape[0]):
        loose = (flag[i] > 0) & (mask[i] > 0) & (out[i] < 0)
        if loose.any():
            out[i, loose] = out[i].max() + 1
    return out


def _is_dev(problem_id: str, fraction: float) -> bool:
    """Deterministic held-out membership by problem-id hash (independent of seed and order)."""
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def _mean_ci(x: np.ndarray) -> dict:
    """Mean with a normal-approximation 95% CI over rows."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": [float(x.mean() - half), float(x.mean() + half)], "n": int(x.size)}


# ----------------------------------------------------------------------------- setup

class setup_cts:  # noqa: N801 - used like the function it replaced: setup_cts(data)(runtime, ...)
    """The CTS wiring of the B5 plug-in (cts.methods.cts_terms): `setup_cts(data)(runtime, method_cfg, params,
    optimizer) -> (params with heads, cts_step, make_cts_batch, optimizer)`; `report(params, rows)` is the
    critic block of final.json. `method_cfg` is a cts.methods.cts_terms.CTSMethodConfig."""

    def __init__(self, data, log=print, seed: int = 0):
        self.data, self.log, self.seed = data, log, seed
        self.warmup: dict = {}
        self._evaluate, self._dev = None, []

    def __call__(self, runtime, method_cfg, params, optimizer):
        data = self.data
        failed = [q for q in data.quadruples if not q.attempt_correct]
        online = method_cfg.online_critique
        if not failed and not online:
            raise ValueError("B5 needs failed quadruples from the teacher stage; none in the train split")
        critic = method_cfg.critic
        kinds = {p.id: p.kind for p in data.problems_by_id.values()}
        kind_of = lambda q: kinds.get(q.problem_id, "math")  # noqa: E731
        unlocalised = [q for q in failed if not _localised(q)]
        localised = [q for q in failed if _localised(q)]
        dev = [q for q in localised if _is_dev(q.problem_id, critic.dev_fraction)]
        fit = [q for q in localised if not _is_dev(q.problem_id, critic.dev_fraction)]
        dev_ids = {q.problem_id for q in dev}
        # +2: the answer line is a step, and a loose flag (a missing answer line) one more
        max_steps = max([len(trajectory_steps(kind_of(q), t)) for q in failed
                         for t in (q.attempt, q.revision)] + [16]) + 2
        cfg = method_cfg.terms.replace(max_steps=max_steps)
        D = runtime.model_cfg.emb_dim
        # the heads' initialisation is part of the training run's randomness (the seed is the unit of
        # inference): each seed draws its own; seed 0 keeps the key 1234 that earlier runs used
        heads = CTSHeads(D, D, cfg, rngs=nnx.Rngs(params=1234 + self.seed))
        heads_def, heads_params = nnx.split(heads, nnx.Param)
        params = {**params, "heads": heads_params}
        self.cfg, self.heads_def = cfg, heads_def

        def is_psi(path) -> bool:
            return path[0].key == "heads" and path[1].key in _PSI

        # ψ gets its own optimizer (A5: none after the warm-up); θ and φ keep the loop's clipped AdamW
        critic_opt = optax.adamw(critic.learning_rate, b1=0.9, b2=0.999, weight_decay=0.0)
        labels = jax.tree_util.tree_map_with_path(
            lambda path, _: ("frozen" if cfg.energy_freeze else "critic") if is_psi(path) else "policy", params)
        optimizer = optax.multi_transform({"policy": optimizer, "critic": critic_opt,
                                           "frozen": optax.set_to_zero()}, labels)

        max_len, tok = runtime.model_cfg.max_len, runtime.tok

        def longest(pairs):
            return bucket_length(max(len(encode_prompt(tok, p)) + len(tok.encode(r)) + 1 for p, r in pairs), max_len)

        if online or not failed:  # lengths are only known per step: grow each to the longest bucket seen
            pads = dict(att=None, rev=None, crit=None, dec=None)  # (a few compiles a run; 768 made A6's update 1.6×)
        else:
            pads = dict(att=longest([(q.prompt, q.attempt) for q in failed]),
                        rev=longest([(q.prompt, q.revision) for q in failed]),
                        crit=longest([(q.prompt, q.critique) for q in failed]),
                        dec=longest([(format_decode_context(q.prompt, q.attempt, q.critique), q.revision)
                                     for q in failed]))
        n = method_cfg.batch_size
        high_water = dict(att=0, rev=0, crit=0, dec=0)  # the training steps' padded lengths so far

        def batch_of(qs, rows=None, grow=False):
            """grow (the training step's batches): pad per-step lengths to at least the high-water mark."""
            low = high_water if grow else dict(att=0, rev=0, crit=0, dec=0)
            ks = [kind_of(q) for q in qs]
            att = make_batch(tok, [q.prompt for q in qs], [q.attempt for q in qs], max_len, pad_to=pads["att"],
                             min_pad=low["att"],
                             step_spans=[trajectory_steps(k, q.attempt) for k, q in zip(ks, qs)],
                             flag_spans=[_attempt_flag(q) for q in qs], rows=rows)
            rev = make_batch(tok, [q.prompt for q in qs], [q.revision for q in qs], max_len, pad_to=pads["rev"],
                             min_pad=low["rev"],
                             step_spans=[trajectory_steps(k, q.revision) for k, q in zip(ks, qs)],
                             flag_spans=[_revision_flag(k, q) for k, q in zip(ks, qs)], rows=rows)
            att.step_ids = _flags_get_steps(att.step_ids, att.flag, att.loss_mask)
            rev.step_ids = _flags_get_steps(rev.step_ids, rev.flag, rev.loss_mask)
            crit = make_batch(tok, [q.prompt for q in qs], [q.critique for q in qs], max_len, pad_to=pads["crit"],
                              min_pad=low["crit"], rows=rows)
            dec = make_batch(tok, [format_decode_context(q.prompt, q.attempt, q.critique) for q in qs],
                             [q.revision for q in qs], max_len, pad_to=pads["dec"], min_pad=low["dec"], rows=rows)
            out = {"att": att.as_dict(), "rev": rev.as_dict(), "crit": crit.as_dict(), "dec": dec.as_dict()}
            if grow:
                high_water.update({k: out[k]["tokens"].shape[1] for k in high_water})
            pad = (rows or len(qs)) - len(qs)
            out["critique_ids"] = np.array([LABELS.index(q.error_type) if q.error_type in LABELS else 0
                                            for q in qs] + [0] * pad, np.int32)
            # L_E never trains on the critic's held-out rows; online rows are fresh, so they count
            out["critic_rows"] = np.array([float(q.problem_id not in dev_ids or online) for q in qs] + [0.0] * pad,
                                          np.float32)
            out["unlocalised"] = np.array([float(not q.attempt_correct and not _localised(q)) for q in qs]
                                          + [0.0] * pad, np.float32)
            return out

        def make_cts_batch(rng: np.random.Generator, step_quads):
            pool = [q for q in (step_quads or []) if not q.attempt_correct] if online else failed
            if not pool:  # online and every rollout was right: reuse the offline critiques
                pool = failed or [q for q in step_quads]
            idx = rng.choice(len(pool), size=n, replace=len(pool) < n)
            return batch_of([pool[i] for i in idx], grow=True)

        # THE TERMS (unweighted) and their diagnostics
        def features(policy, b):
            _, h_att = runtime.forward(policy, b["att"]["tokens"], b["att"]["segment_ids"])  # (B, T, D)
            _, h_rev = runtime.forward(policy, b["rev"]["tokens"], b["rev"]["segment_ids"])  # (B, T', D)
            if cfg.critique_embedding == "pooled":
                _, h_crit = runtime.forward(policy, b["crit"]["tokens"], b["crit"]["segment_ids"])
                m = b["crit"]["loss_mask"][..., None]
                critique = jax.lax.stop_gradient((h_crit * m).sum(1) / jnp.maximum(m.sum(1), 1.0))  # (B, D)
            else:
                critique = b["critique_ids"]
            return h_att, jax.lax.stop_gradient(h_rev), critique

        def align_energy(params, b):
            """L_align (θ, φ) and L_E (ψ) share the attempt's forward pass."""
            heads = nnx.merge(heads_def, params["heads"])
            h_att, h_rev, critique = features(params["policy"], b)
            a, r = b["att"], b["rev"]
            terms, metrics = cts_loss(heads, h_att, a["loss_mask"], a["step_ids"], a["flag"], critique, h_rev,
                                      r["loss_mask"], r["step_ids"], r["flag"], cfg, energy_rows=b["critic_rows"])
            return terms, metrics

        def decode_nll(params, b):
            logits, _ = runtime.forward(params["policy"], b["dec"]["tokens"], b["dec"]["segment_ids"])
            decode, _ = sft_loss(token_logprobs(logits, b["dec"]["tokens"]), b["dec"]["loss_mask"])
            return decode

        weights = term_weights(cfg)

        def split_psi(tree):
            """A gradient of L_align + L_E -> (its θ/φ part = L_align's, its ψ part = L_E's)."""
            psi = jax.tree_util.tree_map_with_path(lambda p, x: x if is_psi(p) else jnp.zeros_like(x), tree)
            rest = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if is_psi(p) else x, tree)
            return rest, psi

        def theta_norm(tree):
            return optax.global_norm(tree["policy"])

        def cts_step(params, b, base_loss, base_grads):
            """(L_GRPO, ∇L_GRPO) -> (L, ∇L, metrics): every value and gradient through `cts_total`."""
            values, grads = {"grpo": base_loss}, {"grpo": base_grads}
            use_align, use_energy = weights["align"] != 0, weights["energy"] != 0
            if use_align or use_energy:  # one backward of the active ones; their parameters are disjoint
                def active(p):
                    terms, m = align_energy(p, b)
                    s = (terms["align"] if use_align else 0.0) + (terms["energy"] if use_energy else 0.0)
                    return s, (terms, m)

                (_, (terms, m)), g = jax.value_and_grad(active, has_aux=True)(params)
                g_align, g_energy = split_psi(g)
                if use_align:
                    grads["align"] = g_align
                if use_energy:
                    grads["energy"] = g_energy
            else:
                terms, m = align_energy(params, b)
            values.update(align=terms["align"], energy=terms["energy"])
            if weights["decode"] != 0:
                values["decode"], grads["decode"] = jax.value_and_grad(decode_nll)(params, b)
            else:  # A4: reported, not trained on
                values["decode"] = decode_nll(params, b)
            total = cts_total(values, cfg)
            aux = {k: v for k, v in values.items() if k != "grpo"}
            metrics = {k: v for k, v in m.items() if not k.startswith("rows/")}
            metrics.update({
                "cts/decode": values["decode"],
                "cts/aux_total": cts_total(aux, cfg, base=jnp.zeros((), jnp.float32)),
                "cts/unlocalised_frac": jnp.mean(b["unlocalised"]),
                "cts/grad_norm/grpo": theta_norm(base_grads),
                # each term's gradient as the combiner adds it (λ_k ∇L_k): the weights are applied in cts_total only
                **{f"cts/grad_norm/{k}": theta_norm(cts_total({k: grads[k]}, cfg)) if k in grads else jnp.zeros(())
                   for k in ("align", "decode")},
                "cts/grad_norm/energy_psi": optax.global_norm(cts_total({"energy": grads["energy"]}, cfg))
                if "energy" in grads else jnp.zeros(()),
            })
            return total, cts_total(grads, cfg), metrics

        # THE CRITIC'S WARM-UP, AND ITS GATE
        t0 = time.perf_counter()

        @jax.jit
        def evaluate_rows(params, b):
            _, m = align_energy(params, b)
            return {k: v for k, v in m.items() if k.startswith("rows/")}

        def evaluate(params, qs):
            """Per-row diagnostics (critic pair accuracy, edit direction) over quadruples qs."""
            out: dict[str, list] = {}
            for i in range(0, len(qs), n):
                chunk = qs[i:i + n]
                rows = jax.device_get(evaluate_rows(params, jax.tree.map(jnp.asarray, batch_of(chunk, rows=n))))
                for k, v in rows.items():
                    out.setdefault(k, []).extend(np.asarray(v)[:len(chunk)].tolist())
            return summarise_rows(out)

        self._evaluate, self._dev = evaluate, dev
        before = evaluate(params, dev)  # the untrained critic: chance
        params = self._warm_up(params, critic, cfg, heads_def, fit, features, batch_of, n)
        after = evaluate(params, dev)
        self.warmup.update({
            "config": {"warmup_steps": critic.warmup_steps, "learning_rate": critic.learning_rate,
                       "dev_fraction": critic.dev_fraction, "min_dev_pair_accuracy": critic.min_dev_pair_accuracy,
                       "min_dev_quadruples": critic.min_dev_quadruples,
                       "fit_projection": critic.fit_projection, "step_pool": critic.step_pool,
                       "correct_steps": critic.correct_steps, "direction_weight": critic.direction_weight,
                       "energy_form": critic.energy_form},
            "n_failed": len(failed), "n_unlocalised": len(unlocalised), "n_fit": len(fit), "n_dev": len(dev),
            "dev_before_warmup": before, "dev_after_warmup": after, "dev_pair_accuracy": after["pair_accuracy"],
            "warmup_s": time.perf_counter() - t0,
        })
        self.log(f"critic warm-up: {critic.warmup_steps} steps on {len(fit)} quadruples; held-out pair accuracy "
                 f"{before.get('pair_accuracy')} -> {after['pair_accuracy']} on {len(dev)}; edit cos "
                 f"{after['edit_cos']['mean']}; {len(unlocalised)} of {len(failed)} failed quadruples unlocalised")
        acc = after["pair_accuracy"]
        if critic.min_dev_pair_accuracy == 0:
            self.warmup["gate"] = "off (cts.critic.min_dev_pair_accuracy = 0)"
        elif acc is None or len(dev) < max(1, critic.min_dev_quadruples):
            self.warmup["gate"] = (f"not measured: {len(dev)} held-out quadruples < cts.critic.min_dev_quadruples = "
                                   f"{critic.min_dev_quadruples} ({len(failed)} failed train attempts)")
            self.log(f"WARNING critic gate {self.warmup['gate']}: B5 runs with a critic nobody measured")
        elif acc >= critic.min_dev_pair_accuracy:
            self.warmup["gate"] = f"passed: {acc:.4f} >= {critic.min_dev_pair_accuracy} on {len(dev)}"
        else:
            raise CriticGateError(
                f"B5 refuses to start: the energy critic's held-out pair accuracy after {critic.warmup_steps} "
                f"warm-up steps is {round(acc, 4)} on {len(dev)} quadruples "
                f"(fitted on {len(fit)}), below cts.critic.min_dev_pair_accuracy = {critic.min_dev_pair_accuracy}; "
                "the latent edit would follow an untrained critic. Raise cts.critic.warmup_steps or "
                "cts.critic.learning_rate, or lower the threshold deliberately.")
        return params, cts_step, make_cts_batch, optimizer

    def _warm_up(self, params, critic: CriticConfig, cfg: CTSConfig, heads_def, fit, features, batch_of, n):
        """Fit ψ (and φ) by L_E on the base policy's features of the fit quadruples; returns params."""
        if critic.warmup_steps == 0 or not fit:
            self.warmup["fit"] = {"steps": 0}
            return params

        width0 = cfg.replace(alpha_width=0.0)

        @jax.jit
        def pooled(policy, b):
            """Pre-projection features of both flagged steps [B, D'] ×2, e_f, the pair's validity [B],
            and (with correct_steps) the trajectories' points [B, 2N, D'] and which are correct [B, 2N]."""
            h_att, h_rev, critique = features(policy, b)
            a, r = b["att"], b["rev"]
            fa, has_a = flagged_feature(h_att, a["loss_mask"], a["flag"], cfg.step_pool)
            fr, has_r = flagged_feature(h_rev, r["loss_mask"], r["flag"], cfg.step_pool)
            Fa, va = step_features(h_att, a["loss_mask"], a["step_ids"], cfg)
            Fr, vr = step_features(h_rev, r["loss_mask"], r["step_ids"], cfg)
            good = correct_step_mask(va, localisation_weights(a["flag"], a["loss_mask"], a["step_ids"], width0), vr,
                                     localisation_weights(r["flag"], r["loss_mask"], r["step_ids"], width0))
            sg = jax.lax.stop_gradient
            return sg(fa), sg(fr), critique, has_a & has_r, sg(jnp.concatenate([Fa, Fr], axis=1)), good

        names = ("att", "rev", "crit", "ok", "steps", "good")
        feats: dict[str, list] = {k: [] for k in names}
        for i in range(0, len(fit), n):
            chunk = fit[i:i + n]
            out = jax.device_get(pooled(params["policy"], jax.tree.map(jnp.asarray, batch_of(chunk, rows=n))))
            for k, v in zip(names, out):
                feats[k].append(np.asarray(v)[:len(chunk)])
        h_att, h_rev, crit, ok, steps, good = (jnp.asarray(np.concatenate(feats[k])) for k in names)

        trainable = jax.tree_util.tree_map_with_path(  # heads only: ψ, and φ with fit_projection
            lambda p, _: "fit" if p[0].key in _PSI or critic.fit_projection else "keep", params["heads"])
        opt = optax.multi_transform({"fit": optax.adamw(critic.learning_rate, b1=0.9, b2=0.999, weight_decay=0.0),
                                     "keep": optax.set_to_zero()}, trainable)

        def loss_fn(heads_params):
            heads = nnx.merge(heads_def, heads_params)
            e_f = critique_embedding(heads, crit, cfg)
            correct = ({"R_correct": heads.latents(steps), "correct_mask": good}
                       if cfg.energy_correct_steps else {})
            return energy_loss(heads, heads.latents(h_att), heads.latents(h_rev), e_f, cfg, row_mask=ok,
                               latent_grad=critic.fit_projection, **correct)

        @jax.jit
        def step(hp, state):
            (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(hp)
            updates, state = opt.update(g, state, hp)
            cos = m.get("energy/direction_cos", jnp.full((), jnp.nan))  # only with the direction term
            return optax.apply_updates(hp, updates), state, loss, m["energy/acc"], cos

        hp = params["heads"]
        state = opt.init(hp)
        first = None
        for _ in range(critic.warmup_steps):
            hp, state, loss, acc, cos = step(hp, state)
            if first is None:
                first = (float(loss), float(acc))
        params = {**params, "heads": hp}
        self.warmup["fit"] = {"steps": critic.warmup_steps, "loss_first": first[0], "loss_last": float(loss),
                              "fit_pair_accuracy_first": first[1], "fit_pair_accuracy_last": float(acc)}
        if cfg.energy_direction > 0:  # the fitted rows' direction cosine (the held-out one is the gate's report)
            self.warmup["fit"]["fit_direction_cos_last"] = float(cos)
        return params

    def report(self, params, rows: list[dict]) -> dict:
        """The critic and edit-direction block of final.json: after the warm-up, at the end of B5
        (same held-out quadruples, final θ and ψ), and the per-step means of the run."""
        end = self._evaluate(params, self._dev) if self._evaluate is not None else None
        keys = ("cts/edit_cos", "cts/edit_rel", "cts/u_decrease_frac", "cts/active_frac", "cts/unlocalised_frac",
                "energy/acc", "cts/align", "cts/decode", "cts/energy", "cts/grad_norm/grpo", "cts/grad_norm/align",
                "cts/grad_norm/decode")
        per_step = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)}
        return {"critic": {**self.warmup, "dev_at_end": end}, "cts_steps_mean": per_step}


def summarise_rows(rows: dict[str, list]) -> dict:
    """Per-row diagnostics -> pair accuracy, edit cosine (mean, 95% CI), relative edit size, U drop."""
    paired = np.asarray(rows.get("rows/paired", []), bool)
    counted = np.asarray(rows.get("rows/edit_counted", []), bool)
    active = np.asarray(rows.get("rows/active", []), bool)
    correct = np.asarray(rows.get("rows/pair_correct", []), bool)
    return {
        "n": int(paired.size), "n_paired": int(paired.sum()),
        "pair_accuracy": float(correct[paired].mean()) if paired.any() else None,
        "edit_cos": _mean_ci(np.asarray(rows.get("rows/edit_cos", []))[counted]) if counted.size else _mean_ci([]),
        "edit_rel_mean": float(np.asarray(rows["rows/edit_rel"])[counted].mean()) if counted.any() else None,
        "u_decrease_frac": float(np.asarray(rows["rows/u_decrease"])[active].mean()) if active.any() else None,
    }
