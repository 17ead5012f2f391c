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

__all__ = ["Cell", "ConfigError", "apply_flip", "cells", "cell_config", "check_consistency", "fairness_fields",
           "fairness_view", "method_ids",
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
    """Every (task, method, seed); ablation cells only on `ablation_tasks` (default: every task)."""
    ablation_tasks = config.get("ablation_tasks") or config["tasks"]
    return [Cell(t, m, s) for t in config["tasks"] for m in method_ids(config) for s in config["seeds"]
            if parse_method(m)[1] is None or t in ablation_tasks]


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
    # A method may override the shared budget (train_overrides); the fairness fingerprint then
    # differs from its task's other cells and the DAG stops before any training job.
    train = {**config["train"], **mcfg.get("train_overrides", {})}
    mcfg = {k: v for k, v in mcfg.items() if k != "train_overrides"}
    out = {
        "task": task, "method": method, "seed": int(seed),
        "train": train, "method_config": mcfg,
        "model": config["model"], "tokenizer": config["tokenizer"],
    }
    if config.get("parallelism"):
        out["parallelism"] = config["parallelism"]
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


class ConfigError(ValueError):
    """A config that passes the schema but is inconsistent; the message names the key."""


def check_consistency(config: dict) -> None:
    """Cross-key checks the JSON schema cannot express."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"workflow config: {msg}")

    need(config["base_method"] in config["methods"],
         f"base_method {config['base_method']!r} is not in methods {config['methods']}")
    for t in config["tasks"]:
        need(t in config["data"], f"task {t!r} has no block under data")
        block = config["data"][t]
        need("split" not in block or block.get("loader", t) not in ("synth_math", "synth_code"),
             f"data.{t}.split: a synthetic task has no source splits (generated problems only)")
    for m in config["methods"]:
        need(m in config["methods_config"], f"method {m!r} has no block under methods_config")
    if config.get("ablations"):
        base = config.get("ablation_base", "B5")
        need(base in config["methods"], f"ablation_base {base!r} is not in methods {config['methods']}")
        need(bool(config["methods_config"][base].get("cts")), f"ablation_base {base!r} has no CTS terms (cts: true)")
        for a in config["ablations"]:
            need(a in config.get("ablation_flips", {}), f"ablation {a!r} has no entry under ablation_flips")
        for t in config.get("ablation_tasks") or []:
            need(t in config["tasks"], f"ablation_tasks: {t!r} is not in tasks {config['tasks']}")
    fr = config["splits"]["fractions"]
    need(abs(sum(fr.values()) - 1) < 1e-9, f"splits.fractions must sum to 1, got {fr}")
    need(config["eval"]["split"] in config["rollouts"]["splits"],
         f"rollouts.splits {config['rollouts']['splits']} must include eval.split "
         f"{config['eval']['split']!r} (the base attempts there are the Δ_critique reference)")
    need("train" in config["rollouts"]["splits"], "rollouts.splits must include 'train' (y⁰ for the quadruples)")
    from cts.model.pretrained import check_pretrained_config  # light: no JAX, no file read

    for problem in check_pretrained_config(config):
        need(False, problem)
    for c in cells(config):  # every cell resolves (ablation flips name real keys)
        cell_config(config, c.task, c.method, c.seed)
