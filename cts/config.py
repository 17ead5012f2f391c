"""The experiment matrix and each cell's resolved configuration, derived from workflow_config.yaml.

A cell is (task, method, seed); method is a base id (`B3`) or an ablation of B5 (`B5-A2`).
`cell_config` returns exactly what one training job needs — and nothing else — so that editing
one method's hyperparameter changes the params (hence reruns) of that method's cells only.
All outputs are plain, sorted, JSON-able dicts: Snakemake params must be deterministic.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

__all__ = ["Cell", "apply_flip", "cells", "cell_config", "fairness_fields", "fairness_view", "method_ids",
           "parse_method"]


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"


def method_ids(config: dict) -> list[str]:
    """Base methods, then B5 ablations (`B5-A1`, ...), in config order."""
    ablations = [f"{config.get('ablation_base', 'B5')}-{a}" for a in config.get("ablations", [])]
    return list(config["methods"]) + ablations


def parse_method(method: str) -> tuple[str, str | None]:
    base, _, ablation = method.partition("-")
    return base, ablation or None


def cells(config: dict) -> list[Cell]:
    return [Cell(t, m, s) for t in config["tasks"] for m in method_ids(config) for s in config["seeds"]]


def apply_flip(cfg: dict, dotted: str, value) -> dict:
    """Return a copy of cfg with the dotted key set; the key must already exist (a typo is an error)."""
    out = copy.deepcopy(cfg)
    node, parts = out, dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node:
            raise KeyError(f"ablation flip {dotted!r}: no key {p!r} in the config")
        node = node[p]
    if parts[-1] not in node:
        raise KeyError(f"ablation flip {dotted!r}: no key {parts[-1]!r} in the config")
    node[parts[-1]] = value
    return out


def _sorted(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def cell_config(config: dict, task: str, method: str, seed: int) -> dict:
    """Everything one training job reads: the shared budget, this method's block, model, task."""
    base, ablation = parse_method(method)
    mcfg = config["methods_config"].get(base)
    if mcfg is None:
        raise KeyError(f"methods_config has no block for method {base!r}")
    out = {
        "task": task, "method": method, "seed": int(seed),
        "train": config["train"], "method_config": mcfg,
        "model": config["model"], "tokenizer": config["tokenizer"],
    }
    if mcfg["loss"] == "grpo":
        out["grpo"] = config["grpo"]
    if mcfg.get("cts"):
        out["cts"] = config["cts"]
    if ablation is not None:
        flips = config.get("ablation_flips", {}).get(ablation)
        if not flips:
            raise KeyError(f"ablation {ablation!r} has no entry under ablation_flips")
        if not mcfg.get("cts"):
            raise ValueError(f"ablation {method!r}: its base method {base!r} has no CTS terms to flip")
        for key, value in flips.items():
            out = apply_flip(out, key, value)
        out["ablation"] = {"id": ablation, "flip": flips}
    return _sorted(out)


def fairness_view(cell: dict) -> dict:
    """The part of a cell's config that must match across methods (method hyperparameters excluded,
    so that editing one method never reruns the fingerprint rule — or every cell after it)."""
    return {k: cell[k] for k in ("task", "train", "model", "tokenizer")}


def fairness_fields(config: dict, task: str) -> dict:
    """What must be equal across every cell of a task: budget, model, tokenizer, teacher, eval."""
    return _sorted({
        "budget": config["train"], "model": config["model"], "tokenizer": config["tokenizer"],
        "base_policy": config["base_policy"], "teacher": config["teacher"], "eval": config["eval"],
        "data": config["data"][task], "splits": config["splits"],
    })
