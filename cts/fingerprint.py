"""Fairness fingerprints: what must be identical across the cells of a task before training.

A cell's fingerprint holds its compute budget (the train block it actually receives), the model
config and tokenizer, the prompt-template hashes (policy prompt, teacher prompt, CTS decode
template), the verifier version, the teacher, the eval protocol and the content hashes of the data
splits. Method-specific hyperparameters (β, λ, rewards) are deliberately not in it.
"""

from __future__ import annotations

import hashlib

from cts.answer_format import decode_template_hash
from cts.io import stable_json
from cts.teachers.prompts import prompt_template_hash
from cts.verifiers.math import VERIFIER_VERSION

__all__ = ["FairnessError", "cell_fingerprint", "check_fingerprints", "template_hashes"]

# The policy sees `BOS prompt \n` (cts.train.batching.encode_prompt); bump with any change there.
POLICY_PROMPT_TEMPLATE = "{bos}{prompt}\n{response}{eos}"


# What "the same budget" means across methods; B5's extra critic compute is stated, not hidden.
BUDGET_RULE = ("every cell of a task: the same policy optimizer steps, prompts per step, group size and "
               "rollouts (`budget`); B5 adds an energy-critic warm-up (cts.critic.warmup_steps full-batch "
               "steps of a small MLP on base-policy features of the failed train quadruples, one forward "
               "pass each) and one critic update per step — no policy update and no rollout; its steps and "
               "seconds are in the B5 cell's final.json (critic.config, critic.warmup_s)")


class FairnessError(RuntimeError):
    pass


def template_hashes() -> dict:
    return {"policy_prompt": hashlib.sha256(POLICY_PROMPT_TEMPLATE.encode()).hexdigest()[:16],
            "teacher_prompt": prompt_template_hash(), "cts_decode": decode_template_hash()}


def cell_fingerprint(cell: dict, shared: dict, manifest: dict) -> dict:
    fields = {
        "budget": cell["train"], "model": cell["model"], "tokenizer": cell["tokenizer"],
        "base_policy": shared["base_policy"], "teacher": shared["teacher"], "eval": shared["eval"],
        "templates": template_hashes(), "verifier_version": VERIFIER_VERSION,
        "data": {s: manifest["splits"][s]["sha256"] for s in sorted(manifest["splits"])},
        "budget_rule": BUDGET_RULE,
    }
    return {"task": cell["task"], "fields": fields,
            "digest": hashlib.sha256(stable_json(fields).encode()).hexdigest()}


def check_fingerprints(prints: dict[str, dict]) -> None:
    """Raise FairnessError naming the first differing field between two cells of one task."""
    by_task: dict[str, tuple[str, dict]] = {}
    for name, fp in sorted(prints.items()):
        ref = by_task.setdefault(fp["task"], (name, fp))
        if fp["digest"] == ref[1]["digest"]:
            continue
        diff = sorted(k for k in fp["fields"] if stable_json(fp["fields"][k]) != stable_json(ref[1]["fields"].get(k)))
        raise FairnessError(f"cells {ref[0]!r} and {name!r} differ in {diff}: the comparison would "
                            f"not be fair; make these fields equal across methods")
