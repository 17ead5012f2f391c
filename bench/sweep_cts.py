"""Run the λ₁/λ₂/η sweep of config/sweeps/cts.yaml (on demand; see that file) and print its table."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(sweep_path: str, config_path: str = "workflow_config.yaml", results: str = "results") -> None:
    import yaml

    from cts.config import cell_config
    from cts.io import read_json, read_jsonl
    from cts.stages.eval import eval_cell
    from cts.stages.train import train_cell

    config, sweep = yaml.safe_load(open(config_path)), yaml.safe_load(open(sweep_path))
    task, seed = sweep["task"], sweep["seed"]
    config["train"]["steps"] = sweep["steps"]
    inputs = dict(base_final=f"{results}/base/{task}/final.json", train_path=f"{results}/splits/{task}/train.jsonl",
                  tagged_path=f"{results}/taxonomy/{task}/tagged.jsonl")
    rows = []
    for name, changes in [("B3", None), *sweep["points"].items()]:
        method = "B3" if changes is None else "B5"
        cell = cell_config(config, task, method, seed)
        if changes:
            cell["cts"] = {**cell["cts"], **changes}
        out = f"{results}/sweep/{task}/{name}/seed{seed}"
        os.makedirs(out, exist_ok=True)
        if not os.path.exists(f"{out}/problems.jsonl"):
            train_cell(cell, inputs["base_final"], inputs["train_path"], inputs["tagged_path"],
                       f"work/checkpoints/sweep/{task}/{name}/seed{seed}", f"{out}/final.json", f"{out}/metrics.jsonl")
            eval_cell(f"{out}/final.json", f"{results}/splits/{task}/{config['eval']['split']}.jsonl",
                      inputs["tagged_path"], config["eval"], f"{method}:{name}", seed, f"{out}/problems.jsonl")
        ev = read_jsonl(f"{out}/problems.jsonl")
        fin = read_json(f"{out}/final.json")
        critic = fin.get("critic") or {}
        after = critic.get("dev_after_warmup") or {}
        rows.append({"point": name, **(changes or {}),
                     "sampled_pass1": sum(r["n_correct"] for r in ev) / sum(r["n_samples"] for r in ev),
                     "greedy_pass1": sum(r["correct"] for r in ev) / len(ev),
                     "dev_pair_acc": after.get("pair_accuracy"), "edit_cos_dev": (after.get("edit_cos") or {}).get("mean"),
                     "edit_cos_steps": (fin.get("cts_steps_mean") or {}).get("cts/edit_cos")})
        print(json.dumps(rows[-1]), flush=True)
    print("| point | sampled pass@1 | greedy pass@1 | critic dev acc | edit cos (dev) | edit cos (steps) |")
    print("|---|---:|---:|---:|---:|---:|")
    f = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['point']} | {f(r['sampled_pass1'])} | {f(r['greedy_pass1'])} | {f(r['dev_pair_acc'])} | "
              f"{f(r['edit_cos_dev'])} | {f(r['edit_cos_steps'])} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
