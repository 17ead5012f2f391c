"""rules/train.smk: the shared base policy, the fairness check, the training cells, stale checkpoints.

Each training job keeps its checkpoints under `<ckpt_root>/<state digest>/` and leaves a
final.json naming its parameters (cts.train.artifacts).
"""

from __future__ import annotations

from cts.fingerprint import cell_fingerprint, check_fingerprints
from cts.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from cts.model.pretrained import pretrained_params
from cts.tasks.schema import Quadruple, load_problems
from cts.tasks.synthetic import base_sft_pairs
from cts.train.artifacts import (base_state, cell_state, load_final_params, project_path, states_in_use,
                                 write_final)
from cts.train.checkpoint import remove_stale_states
from cts.methods import method_from_cell
from cts.methods.sft import SFTConfig, SFTMethod
from cts.train.loop import LoopConfig, TrainData, train
from cts.train.runtime import PolicyRuntime

__all__ = ["clean_checkpoints", "train_base", "train_cell", "train_fingerprint"]


def train_base(task: str, train_path: str, model_cfg: dict, tokenizer: str, base_cfg: dict,
               ckpt_root: str, out_final: str, log=print, monitor: dict | None = None,
               parallelism: dict | None = None) -> None:
    """The shared base policy: SFT from a random init, or from pretrained weights
    (`base_cfg["pretrained"]`, cts.model.pretrained) for `steps` steps — 0 keeps them as they are.
    Either way final.json has the same form, so the rest of the DAG does not know the difference.
    Checkpoints go to `<ckpt_root>/<state digest>/` (base_state)."""
    ckpt_dir, digest, inputs = base_state(task, train_path, model_cfg, tokenizer, base_cfg, ckpt_root)
    log(f"state {digest[:16]} → {project_path(ckpt_dir)}")

    problems = load_problems(train_path)
    runtime = PolicyRuntime(model_cfg, tokenizer, seed=base_cfg["seed"], batch_size=base_cfg["batch_size"],
                            parallelism=parallelism)  # the mesh: layout only, not in the state digest
    init_params, extra = runtime.init_params, {}
    if base_cfg.get("pretrained"):
        init_params, provenance = pretrained_params(base_cfg["pretrained"], runtime, log=log)
        extra = {"pretrained": provenance}
    pairs = base_sft_pairs(problems, base_cfg["error_rate"], base_cfg["seed"])
    if base_cfg["steps"] > 0:
        loop = LoopConfig(steps=base_cfg["steps"], prompts_per_step=base_cfg["batch_size"],
                          learning_rate=base_cfg["learning_rate"], warmup_steps=base_cfg["warmup_steps"],
                          checkpoint_every=max(1, base_cfg["steps"] // 4), seed=base_cfg["seed"],
                          **_monitor_fields(monitor))
        params, rows = train(runtime=runtime, init_params=init_params, ref_params=None,
                             method=SFTMethod(SFTConfig(), runtime),
                             data=TrainData(sft_pairs=pairs), loop=loop,
                             ckpt_dir=ckpt_dir, log=log)
        params = params["policy"]
        log(f"base policy: {len(pairs)} training sequences ({len(pairs) - len(problems)} with an injected error)")
    else:  # check_consistency allows this only with pretrained weights
        params, rows = init_params, []
        log("base policy: steps = 0, the pretrained weights as they are")
    write_final(out_final, ckpt_dir=ckpt_dir, state_digest=digest, params=params,
                config={"task": task, "model": model_cfg, "tokenizer": tokenizer, "base_policy": base_cfg},
                rows=rows, inputs=inputs, extra=extra)


def _monitor_fields(monitor: dict | None) -> dict:
    """LoopConfig fields from the `monitor` block (progress lines, dead-run abort)."""
    monitor = monitor or {}
    return {k: monitor[k] for k in ("log_every", "dead_run_steps") if k in monitor}


def train_fingerprint(cells: dict, manifest_paths: dict[str, str], out_path: str, log=print) -> None:
    """Fail before any training job if two cells of a task differ in a fairness field."""
    manifests = {task: read_json(p) for task, p in manifest_paths.items()}
    prints = {name: cell_fingerprint(c["cell"], c["shared"], manifests[c["cell"]["task"]])
              for name, c in sorted(cells.items())}
    check_fingerprints(prints)  # raises naming the cells and the field
    atomic_write_json(out_path, prints)
    log(f"{len(prints)} cells share their task's fingerprint")


def train_cell(cell: dict, base_final: str, train_path: str, tagged_path: str, ckpt_root: str,
               out_final: str, out_metrics: str, log=print, monitor: dict | None = None) -> None:
    """One (task, method, seed) cell; checkpoints under `<ckpt_root>/<state digest>/` (cell_state)."""
    ckpt_dir, digest, inputs = cell_state(cell, base_final, train_path, tagged_path, ckpt_root)
    log(f"state {digest[:16]} → {project_path(ckpt_dir)}")
    t = cell["train"]
    runtime = PolicyRuntime(cell["model"], cell["tokenizer"], seed=cell["seed"], batch_size=t["prompts_per_step"],
                            parallelism=cell.get("parallelism"))
    method = method_from_cell(cell, runtime)  # the method's plug-in (cts.methods) and its config
    base_params = load_final_params(runtime, base_final)
    problems = load_problems(train_path)
    quads = [Quadruple.from_row({k: v for k, v in r.items() if k not in ("split", "horizon")},
                                where=f"{tagged_path}:{i + 1}")
             for i, r in enumerate(read_jsonl(tagged_path)) if r.get("split") == "train"]
    data = TrainData(sft_pairs=[(q.prompt, q.revision) for q in quads], problems=problems,
                     quadruples=quads, problems_by_id={p.id: p for p in problems})
    params, rows = train(runtime=runtime, init_params=base_params, ref_params=base_params, method=method,
                         data=data, loop=LoopConfig.from_cell(cell, monitor), ckpt_dir=ckpt_dir, log=log)
    atomic_write_jsonl(out_metrics, rows)
    write_final(out_final, ckpt_dir=ckpt_dir, state_digest=digest, params=params["policy"], config=cell,
                rows=rows, inputs=inputs, extra=method.report(params, rows))  # B5: critic, edit direction


def clean_checkpoints(ckpt_root: str, jobs: list[dict], log=print) -> None:
    """Delete every checkpoint state under ckpt_root that no current job names.

    jobs: {"kind": "base"|"cell", plus the arguments of base_state / cell_state}
    (cts.train.artifacts.states_in_use)."""
    keep = states_in_use(jobs)
    removed = remove_stale_states(ckpt_root, keep, log=log)
    log(f"clean-checkpoints: kept {len(set(keep))} state(s), removed {len(removed)} under {ckpt_root}")
