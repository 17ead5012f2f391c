"""Wires the CTS terms (cts.losses.cts_objective) into the one loop: B5 = B3 + CTS.

Per step, besides the GRPO batch, a CTS batch of failed quadruples (x, y⁰, f, y¹):
  attempt   x ⊕ y⁰, with the step map of y⁰ and the flagged step's tokens   → R_θ, α
  revision  x ⊕ y¹, with the step map of y¹ and its step at the flagged index → E_ψ's positive
  critique  x ⊕ f                                                          → e_f (pooled, stop-grad)
  decode    DECODE_TEMPLATE(x, y⁰, f) ⊕ y¹                                   → L_decode = NLL(y¹ | x, y⁰, f)
Quadruples come from the teacher stage (the base policy's attempts), or — ablation A6 — from this
step's own GRPO rollouts critiqued by the programmatic teacher (deterministic, so it is its own cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cts.losses.alignment import AlignmentConfig
from cts.losses.cts_objective import CTSConfig, CTSHeads, cts_loss, format_decode_context
from cts.losses.sft import sft_loss
from cts.model.policy import token_logprobs
from cts.taxonomy import LABELS, code_steps, math_steps
from cts.train.batching import bucket_length, encode_prompt, make_batch

__all__ = ["cts_config_from_dict", "setup_cts"]

_PSI = ("critique_proj", "energy_in", "energy_out", "critique_table")  # E_ψ's parameters


def cts_config_from_dict(d: dict, max_steps: int) -> CTSConfig:
    keys = ("latent_dim", "trajectory", "eta", "edit_steps", "alpha_width", "energy_hidden",
            "critique_embedding", "lam_align", "lam_decode", "lam_energy", "energy_margin",
            "energy_freeze", "online_critique")
    return CTSConfig(**{k: d[k] for k in keys if k in d}, max_steps=max_steps,
                     num_critique_ids=len(LABELS) if d.get("critique_embedding") == "learned" else 0,
                     alignment=AlignmentConfig(**d.get("alignment", {})))


def _steps(kind: str, text: str):
    return math_steps(text) if kind == "math" else code_steps(text)


def _revision_flag(kind: str, q) -> tuple[int, int] | None:
    """The revision's step at the attempt's flagged index (the corrected step)."""
    spans = _steps(kind, q.revision)
    if q.first_error_step is None:
        return None
    if q.first_error_step < len(spans):
        return spans[q.first_error_step]
    return (max(0, len(q.revision) - 1), len(q.revision))  # the answer line: last characters


def setup_cts(data):
    """Returns cts_setup(runtime, spec, params, optimizer) for cts.train.loop.train."""

    def cts_setup(runtime, spec, params, optimizer):
        offline = [q for q in data.quadruples if not q.attempt_correct]
        online = bool(spec.cts.get("online_critique"))
        if not offline and not online:
            raise ValueError("B5 needs failed quadruples from the teacher stage; none in the train split")
        kinds = {p.id: p.kind for p in data.problems_by_id.values()}
        max_steps = max([len(_steps(kinds.get(q.problem_id, "math"), t)) for q in offline
                         for t in (q.attempt, q.revision)] + [16]) + 1
        cfg = cts_config_from_dict(spec.cts, max_steps)
        D = runtime.model_cfg.emb_dim
        heads = CTSHeads(D, D, cfg, rngs=nnx.Rngs(params=1234))
        heads_def, heads_params = nnx.split(heads, nnx.Param)
        params = {**params, "heads": heads_params}
        if cfg.energy_freeze:  # A5: ψ frozen at init — out of the optimizer (weight decay too)
            labels = jax.tree_util.tree_map_with_path(
                lambda path, _: "frozen" if path[0].key == "heads" and path[1].key in _PSI else "train", params)
            optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)

        max_len = runtime.model_cfg.max_len
        tok = runtime.tok

        def longest(pairs):
            return bucket_length(max(len(encode_prompt(tok, p)) + len(tok.encode(r)) + 1 for p, r in pairs), max_len)

        if online:  # lengths are only known per step: pad to the model's limit
            pads = dict(att=max_len, rev=max_len, crit=max_len, dec=max_len)
        else:
            pads = dict(att=longest([(q.prompt, q.attempt) for q in offline]),
                        rev=longest([(q.prompt, q.revision) for q in offline]),
                        crit=longest([(q.prompt, q.critique) for q in offline]),
                        dec=longest([(format_decode_context(q.prompt, q.attempt, q.critique), q.revision)
                                     for q in offline]))
        n = spec.cts.get("cts_batch_size", 8)

        def make_cts_batch(rng: np.random.Generator, step_quads):
            pool = [q for q in (step_quads or []) if not q.attempt_correct] if online else offline
            if not pool:  # online and every rollout was right: reuse the offline critiques
                pool = offline or [q for q in step_quads]
            idx = rng.choice(len(pool), size=n, replace=len(pool) < n)
            qs = [pool[i] for i in idx]
            ks = [kinds.get(q.problem_id, "math") for q in qs]
            att = make_batch(tok, [q.prompt for q in qs], [q.attempt for q in qs], max_len, pad_to=pads["att"],
                             step_spans=[_steps(k, q.attempt) for k, q in zip(ks, qs)],
                             flag_spans=[q.error_span for q in qs])
            rev = make_batch(tok, [q.prompt for q in qs], [q.revision for q in qs], max_len, pad_to=pads["rev"],
                             step_spans=[_steps(k, q.revision) for k, q in zip(ks, qs)],
                             flag_spans=[_revision_flag(k, q) for k, q in zip(ks, qs)])
            crit = make_batch(tok, [q.prompt for q in qs], [q.critique for q in qs], max_len, pad_to=pads["crit"])
            dec = make_batch(tok, [format_decode_context(q.prompt, q.attempt, q.critique) for q in qs],
                             [q.revision for q in qs], max_len, pad_to=pads["dec"])
            out = {"att": att.as_dict(), "rev": rev.as_dict(), "crit": crit.as_dict(), "dec": dec.as_dict()}
            out["critique_ids"] = np.array([LABELS.index(q.error_type) if q.error_type in LABELS else 0
                                            for q in qs], np.int32)
            return out

        def cts_terms(params, b):
            policy = params["policy"]
            heads = nnx.merge(heads_def, params["heads"])
            _, h_att = runtime.forward(policy, b["att"]["tokens"], b["att"]["segment_ids"])  # (B, T, D)
            # L_E trains only ψ on stop-gradient latents: no backward pass through the policy here
            _, h_rev = runtime.forward(policy, b["rev"]["tokens"], b["rev"]["segment_ids"])  # (B, T', D)
            h_rev = jax.lax.stop_gradient(h_rev)
            if cfg.critique_embedding == "pooled":
                _, h_crit = runtime.forward(policy, b["crit"]["tokens"], b["crit"]["segment_ids"])
                m = b["crit"]["loss_mask"][..., None]
                critique = jax.lax.stop_gradient((h_crit * m).sum(1) / jnp.maximum(m.sum(1), 1.0))  # (B, D)
            else:
                critique = b["critique_ids"]
            aux, metrics = cts_loss(heads, h_att, b["att"]["loss_mask"], b["att"]["step_ids"], b["att"]["flag"],
                                    critique, h_rev, b["rev"]["loss_mask"], b["rev"]["step_ids"],
                                    b["rev"]["flag"], cfg)
            # L_DECODE: NLL of y¹ given (x, y⁰, f)
            logits, _ = runtime.forward(policy, b["dec"]["tokens"], b["dec"]["segment_ids"])
            decode, _ = sft_loss(token_logprobs(logits, b["dec"]["tokens"]), b["dec"]["loss_mask"])
            if cfg.lam_decode != 0:  # skipped, not multiplied by 0: A4 is bit-identical
                aux = aux + cfg.lam_decode * decode
            return aux, {**metrics, "cts/decode": decode}

        return params, cts_terms, make_cts_batch, optimizer

    return cts_setup
