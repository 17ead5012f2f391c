"""The experiment matrix, per-cell configs, consistency checks and fairness fingerprints."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cts.config import (ConfigError, apply_flip, cell_config, cells, check_consistency, fairness_fields,
                        fairness_view, method_ids)
from cts.fingerprint import FairnessError, cell_fingerprint, check_fingerprints

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
MANIFEST = {"splits": {s: {"sha256": s * 8, "n": 10} for s in ("train", "dev", "test")}}


def test_default_config_is_consistent_and_every_cell_resolves():
    check_consistency(CONFIG)
    names = [c.name for c in cells(CONFIG)]
    assert len(names) == len(set(names))
    assert "synth_math/B5-A2/seed0" in names
    for task in CONFIG["tasks"]:
        if task not in (CONFIG.get("ablation_tasks") or CONFIG["tasks"]):
            assert not any(n.startswith(f"{task}/B5-") for n in names)


def test_cell_config_holds_only_its_method_block():
    b1 = cell_config(CONFIG, "synth_math", "B1", 0)
    b3 = cell_config(CONFIG, "synth_math", "B3", 0)
    assert b1["method_config"]["loss"] == "dpo" and "grpo" not in b1 and "cts" not in b1
    changed = copy.deepcopy(CONFIG)
    changed["methods_config"]["B1"]["beta"] = 0.5
    assert cell_config(changed, "synth_math", "B3", 0) == b3  # B3 unaffected by B1's β
    assert cell_config(changed, "synth_math", "B1", 0) != b1


def test_ablations_flip_exactly_one_key():
    b5 = cell_config(CONFIG, "synth_math", "B5", 0)
    for a, flip in CONFIG["ablation_flips"].items():
        cell = cell_config(CONFIG, "synth_math", f"B5-{a}", 0)
        (key, value), = flip.items()
        node = cell
        for part in key.split("."):
            node = node[part]
        assert node == value
        cell.pop("ablation")
        cell["method"] = "B5"
        assert cell == apply_flip(b5, key, value)


def test_a_typo_in_a_flip_is_an_error():
    with pytest.raises(KeyError, match="lam_algn"):
        apply_flip({"cts": {"lam_align": 0.1}}, "cts.lam_algn", 0.0)


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.update(base_method="B4", methods=["B0", "B3"]), "base_method"),
    (lambda c: c["data"].pop("synth_code"), "no block under data"),
    (lambda c: c["rollouts"].update(splits=["train"]), "eval.split"),
    (lambda c: c.update(ablation_tasks=["gsm8k"]), "ablation_tasks"),
    (lambda c: c["methods_config"]["B5"].update(cts=False), "no CTS terms"),
])
def test_inconsistent_configs_name_the_key(mutate, match):
    cfg = copy.deepcopy(CONFIG)
    mutate(cfg)
    with pytest.raises(ConfigError, match=match):
        check_consistency(cfg)


def _prints(config):
    return {c.name: cell_fingerprint(fairness_view(cell_config(config, c.task, c.method, c.seed)),
                                     fairness_fields(config, c.task), MANIFEST) for c in cells(config)}


def test_fingerprints_equal_across_methods_and_a_perturbed_cell_fails():
    prints = _prints(CONFIG)
    check_fingerprints(prints)
    digests = {p["digest"] for n, p in prints.items() if n.startswith("synth_math/")}
    assert len(digests) == 1
    victim = "synth_math/B2/seed1"
    bad = copy.deepcopy(prints)
    bad[victim]["fields"]["budget"]["steps"] += 1
    bad[victim]["digest"] = cell_fingerprint({**fairness_view(cell_config(CONFIG, "synth_math", "B2", 1)),
                                              "train": bad[victim]["fields"]["budget"]},
                                             fairness_fields(CONFIG, "synth_math"), MANIFEST)["digest"]
    with pytest.raises(FairnessError, match=r"B2/seed1.*budget"):
        check_fingerprints(bad)


def test_method_hyperparameters_are_not_in_the_fingerprint():
    changed = copy.deepcopy(CONFIG)
    changed["methods_config"]["B3"]["verifier_weight"] = 0.9
    changed["cts"]["lam_align"] = 0.7
    assert _prints(changed) == _prints(CONFIG)


def test_schema_rejects_unsafe_names_and_unknown_keys(tmp_path):
    from snakemake.utils import validate

    schema = str(REPO / "schemas" / "workflow_config.schema.yaml")
    bad = copy.deepcopy(CONFIG)
    bad["run_name"] = "x; rm -rf /"
    with pytest.raises(Exception, match="run_name|pattern"):
        validate(bad, schema=schema)
    bad = copy.deepcopy(CONFIG)
    bad["train"]["stepz"] = 3
    with pytest.raises(Exception, match="stepz|additional"):
        validate(bad, schema=schema)
    validate(copy.deepcopy(CONFIG), schema=schema)


def test_method_ids_order():
    assert method_ids({"methods": ["B0", "B5"], "ablations": ["A1"], "ablation_base": "B5"}) == ["B0", "B5", "B5-A1"]


def test_snakefmt_is_clean():
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- issue 11: one source of defaults

def _schema():
    return yaml.safe_load((REPO / "schemas" / "workflow_config.schema.yaml").read_text())


def _schema_defaults(node, schema, path=()):
    """(dotted path, default) of every schema default; `*` stands for any key of a map."""
    from cts.config import _resolve

    node = _resolve(node, schema)
    out = []
    if "default" in node and path:
        out.append((path, node["default"]))
    for k, sub in node.get("properties", {}).items():
        out += _schema_defaults(sub, schema, path + (k,))
    if isinstance(node.get("additionalProperties"), dict):
        out += _schema_defaults(node["additionalProperties"], schema, path + ("*",))
    return out


def _lookup(cfg, path):
    """Values at a path in workflow_config.yaml (every map entry for `*`); [] where the key is absent."""
    nodes = [cfg]
    for part in path:
        nxt = []
        for n in nodes:
            if not isinstance(n, dict):
                continue
            if part == "*":
                nxt += list(n.values())
            elif part in n:
                nxt.append(n[part])
        nodes = nxt
    return nodes


def test_schema_defaults_equal_workflow_config_key_by_key():
    """The schema's defaults are the embedded default's values: filling a missing key never gives
    another experiment than workflow_config.yaml (before issue 11: train.steps 40 vs 30, emb_dim
    128 vs 64, cts_batch_size 8 vs 4, primary_metric greedy vs sampled)."""
    schema = _schema()
    problems = []
    for path, default in _schema_defaults(schema, schema):
        if "*" in path:  # a per-task or per-method block is written out whole: no default to disagree
            problems.append(f"{'.'.join(path)}: a default inside a per-entry block ({default!r})")
            continue
        values = _lookup(CONFIG, path)
        if not values and _lookup(CONFIG, path[:-1]):
            problems.append(f"{'.'.join(path)}: schema default {default!r}, not in workflow_config.yaml")
        for v in values:
            if v != default:
                problems.append(f"{'.'.join(path)}: schema default {default!r} != workflow_config.yaml {v!r}")
    assert not problems, "\n".join(problems)
