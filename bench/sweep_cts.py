"""Run the λ₁/λ₂/η sweep of config/sweeps/cts.yaml (on demand; see that file) and print its table.

    .venv/bin/python bench/sweep_cts.py config/sweeps/cts.yaml              # every seed of the file
    .venv/bin/python bench/sweep_cts.py config/sweeps/cts.yaml --seeds 1    # one seed (run seeds in parallel)
    .venv/bin/python bench/sweep_cts.py config/sweeps/cts.yaml --report     # the table from what exists

`--points align_1,eta_05` runs only those points (B3 is one). The B3 and `default` rows equal the
default run's own cells of that seed (same cell config, same stage functions), so a sweep next to a
finished `make table` may copy those cells' final.json / metrics.jsonl / problems.jsonl into
results/sweep/<task>/{B3,default}/seed<k>/ instead of training them again.

A (point, seed) whose problems.jsonl exists is not rerun; the table averages each point over the seeds
that exist and gives the per-seed sampled pass@1, since one seed's difference is mostly run noise
(results/power.md's sd_run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run_point(config: dict, sweep: dict, name: str, changes: dict | None, seed: int, results: str) -> None:
    """Train and evaluate one (point, seed) with the pipeline's own stage functions (B3 when changes is None)."""
    from cts.config import cell_config
    from cts.stages.eval import eval_cell
    from cts.stages.train import train_cell

    task = sweep["task"]
    method = "B3" if changes is None else "B5"
    cell = cell_config(config, task, method, seed)
    if changes:
        cell["cts"] = {**cell["cts"], **changes}
    out = f"{results}/sweep/{task}/{name}/seed{seed}"
    if os.path.exists(f"{out}/problems.jsonl"):
        return
    os.makedirs(out, exist_ok=True)
    tagged = f"{results}/taxonomy/{task}/tagged.jsonl"
    train_cell(cell, f"{results}/base/{task}/final.json", f"{results}/splits/{task}/train.jsonl", tagged,
               f"work/checkpoints/sweep/{task}/{name}/seed{seed}", f"{out}/final.json", f"{out}/metrics.jsonl")
    eval_cell(f"{out}/final.json", f"{results}/splits/{task}/{config['eval']['split']}.jsonl", tagged,
              config["eval"], f"{method}:{name}", seed, f"{out}/problems.jsonl")


def point_row(sweep: dict, name: str, seed: int, results: str) -> dict | None:
    from cts.io import read_json, read_jsonl

    out = f"{results}/sweep/{sweep['task']}/{name}/seed{seed}"
    if not os.path.exists(f"{out}/problems.jsonl"):
        return None
    ev, fin = read_jsonl(f"{out}/problems.jsonl"), read_json(f"{out}/final.json")
    critic = fin.get("critic") or {}
    after = critic.get("dev_after_warmup") or {}
    return {"sampled_pass1": sum(r["n_correct"] for r in ev) / sum(r["n_samples"] for r in ev),
            "greedy_pass1": sum(r["correct"] for r in ev) / len(ev),
            "dev_pair_acc": after.get("pair_accuracy"), "edit_cos_dev": (after.get("edit_cos") or {}).get("mean"),
            "edit_cos_steps": (fin.get("cts_steps_mean") or {}).get("cts/edit_cos")}


def report(sweep: dict, seeds: list[int], results: str) -> str:
    f = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| point | change | seeds | sampled pass@1 (mean) | per seed | greedy pass@1 | critic dev acc | "
             "edit cos (dev) | edit cos (steps) |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, changes in [("B3", None), *sweep["points"].items()]:
        got = {s: r for s in seeds if (r := point_row(sweep, name, s, results))}
        if not got:
            continue
        mean = lambda k: (statistics.fmean(v) if (v := [r[k] for r in got.values() if r[k] is not None]) else None)  # noqa: E731
        change = "B3 (reference)" if changes is None else (", ".join(f"{k}={v}" for k, v in changes.items()) or "B5 default")
        per_seed = " / ".join(f"{r['sampled_pass1']:.3f}" for r in got.values())
        lines.append(f"| {name} | {change} | {len(got)} | {f(mean('sampled_pass1'))} | {per_seed} | "
                     f"{f(mean('greedy_pass1'))} | {f(mean('dev_pair_acc'))} | {f(mean('edit_cos_dev'))} | "
                     f"{f(mean('edit_cos_steps'))} |")
    return "\n".join(lines)


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep")
    ap.add_argument("--config", default="workflow_config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--seeds", help="comma-separated; default: the sweep file's seeds")
    ap.add_argument("--points", help="comma-separated point names to run (B3 is one); default: all")
    ap.add_argument("--report", action="store_true", help="only print the table of what exists")
    args = ap.parse_args()
    config, sweep = yaml.safe_load(open(args.config)), yaml.safe_load(open(args.sweep))
    config["train"]["steps"] = sweep["steps"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(sweep["seeds"])
    names = ["B3", *sweep["points"]]
    chosen = args.points.split(",") if args.points else names
    if unknown := [n for n in chosen if n not in names]:
        raise SystemExit(f"--points: {', '.join(unknown)} not in {args.sweep} (points: {', '.join(names)})")
    if not args.report:
        for seed in seeds:
            for name, changes in [("B3", None), *sweep["points"].items()]:
                if name not in chosen:
                    continue
                run_point(config, sweep, name, changes, seed, args.results)
                print(json.dumps({"point": name, "seed": seed, **(point_row(sweep, name, seed, args.results) or {})}),
                      flush=True)
    print(report(sweep, seeds, args.results))


if __name__ == "__main__":
    main()
