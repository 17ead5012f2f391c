"""What a training job leaves behind, and how later jobs find it.

A job's checkpoint state lives in `<ckpt_root>/<state digest>/` (base_state, cell_state: the digest
of its config and its inputs' content), so a job resumes only from a state of the same config and
inputs. Its `final.json` names the saved parameters (`<state>/final`) with their digest, the
config, the inputs and the package versions; later jobs load the parameters through it
(load_final_params), checked against that digest.
"""

from __future__ import annotations

import os
from importlib.metadata import version

from cts.io import DataError, atomic_write_json, read_json, sha256_file
from cts.train.checkpoint import PARAMS_DIGEST_SCHEME, load_params, params_digest, save_params, state_dir
from cts.train.runtime import PolicyRuntime

__all__ = ["base_state", "cell_state", "load_final_params", "project_path", "runtime_from_final",
           "states_in_use", "write_final"]

_VERSIONED = ("jax", "flax", "optax", "orbax-checkpoint", "ott-jax", "maxtext")


def project_path(path: str) -> str:
    """A path relative to the project root (the working directory Snakemake runs jobs in), so a
    copied or moved project reads its own weights; a storage URI or a path outside stays as is."""
    if "://" in path:
        return path
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


def base_state(task: str, train_path: str, model_cfg: dict, tokenizer: str, base_cfg: dict,
               ckpt_root: str) -> tuple[str, str, dict]:
    """(checkpoint dir, digest, inputs) of a base policy: its config and its train split's content."""
    inputs = {"train": sha256_file(train_path)}
    cfg = {"stage": "train_base", "task": task, "model": model_cfg, "tokenizer": tokenizer,
           "base_policy": base_cfg}
    return (*state_dir(ckpt_root, cfg, inputs), inputs)


def cell_state(cell: dict, base_final: str, train_path: str, tagged_path: str,
               ckpt_root: str) -> tuple[str, str, dict]:
    """(checkpoint dir, digest, inputs) of a training cell: its resolved config, the base policy's
    parameters and the content of the train split and the teacher's tagged quadruples."""
    inputs = {"base_params": read_json(base_final)["params_sha256"], "train": sha256_file(train_path),
              "tagged": sha256_file(tagged_path)}
    return (*state_dir(ckpt_root, {"stage": "train_cell", **cell}, inputs), inputs)


def states_in_use(jobs: list[dict]) -> list[str]:
    """The checkpoint state dirs the given jobs name.

    jobs: {"kind": "base"|"cell", "final": its final.json path (optional), plus the arguments of
    base_state / cell_state}. A job whose inputs do not exist yet names no state; an existing
    final.json keeps the state it points at."""
    keep = []
    for j in jobs:
        args = {k: v for k, v in j.items() if k not in ("kind", "final")}
        paths = [v for k, v in args.items() if k.endswith(("_path", "_final"))]
        if all(os.path.exists(p) for p in paths):
            fn = base_state if j["kind"] == "base" else cell_state
            keep.append(fn(**args)[0])
        if j.get("final") and os.path.exists(j["final"]):
            keep.append(os.path.dirname(read_json(j["final"])["params_dir"]))
    return keep


def write_final(out_final: str, *, ckpt_dir: str, state_digest: str, params, config: dict,
                rows: list[dict], inputs: dict, extra: dict | None = None) -> None:
    """Save the policy parameters to `<ckpt_dir>/final` and write final.json pointing at them."""
    final_dir = os.path.join(ckpt_dir, "final")
    save_params(final_dir, params)
    atomic_write_json(out_final, {
        "params_dir": project_path(final_dir), "params_sha256": params_digest(params),
        "params_digest_scheme": PARAMS_DIGEST_SCHEME,
        "state_digest": state_digest, "inputs": inputs,
        "steps": len(rows), "final_metrics": rows[-1] if rows else {}, "config": config,
        "versions": {p: version(p) for p in _VERSIONED}, **(extra or {}),
    })


def load_final_params(runtime: PolicyRuntime, final_path: str):
    """The policy parameters a final.json points at, checked against its digest."""
    final = read_json(final_path)
    scheme = final.get("params_digest_scheme", "host-sha256-0")  # final.json files before the scheme was recorded
    if scheme != PARAMS_DIGEST_SCHEME:
        raise DataError(f"{final_path}: written by an older cts whose parameter digest ({scheme}) this "
                        f"version ({PARAMS_DIGEST_SCHEME}) cannot check; rerun the job that wrote it "
                        "(snakemake --forcerun <its rule>, or delete the file)")
    params = load_params(final["params_dir"], runtime.init_params)
    if params_digest(params) != final["params_sha256"]:
        raise DataError(f"{final_path}: the parameters in {final['params_dir']} do not match its "
                        "params_sha256 (they were overwritten); rerun the job")
    return params


def runtime_from_final(final_path: str, batch_size: int,
                       parallelism: dict | None = None) -> tuple[PolicyRuntime, object]:
    """(runtime, params) of the policy a final.json describes (its model and tokenizer config), on
    the mesh `parallelism` names, else the one its config recorded (a cell's; the base records none).
    The mesh is layout only: it changes no value, so it is not part of any digest."""
    cfg = read_json(final_path)["config"]
    runtime = PolicyRuntime(cfg["model"], cfg["tokenizer"], seed=0, batch_size=batch_size,
                            parallelism=parallelism or cfg.get("parallelism"))
    return runtime, load_final_params(runtime, final_path)
