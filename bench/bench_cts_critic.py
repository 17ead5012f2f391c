"""The energy critic's warm-up on a real base policy (run on demand, after the teacher stage):

    .venv/bin/python bench/bench_cts_critic.py --task synth_math \
        --set critic.warmup_steps=300 --set critic.fit_projection=false --set eta=2.0

For each variant (the `cts:` block of the config with `--set key=value` overrides, `;`-separated
variants with --variants), runs B5's CTS setup on the base policy and the train quadruples exactly
as a B5 cell does (gate off) and prints, as JSON lines: the held-out pair accuracy before and after
the warm-up, the edit cosine cos(R* − R, R_rev − R_att) on the held-out quadruples [95% CI], the
edit's size relative to ‖r‖, the fraction with U(R*) < U(R), and the warm-up's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _set(block: dict, dotted: str, raw: str) -> dict:
    out = copy.deepcopy(block)
    node, parts = out, dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = json.loads(raw) if raw not in ("true", "false") else raw == "true"
    return out


def main():
    import yaml

    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="synth_math")
    ap.add_argument("--config", default="workflow_config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--variants", default="", help="';'-separated variants, each ','-separated key=value")
    args = ap.parse_args()

    from cts.io import read_jsonl
    from cts.methods.cts_terms import CTSMethod, CTSMethodConfig
    from cts.tasks.schema import Quadruple, load_problems
    from cts.train.artifacts import load_final_params
    from cts.train.loop import LoopConfig, TrainData, make_optimizer
    from cts.train.runtime import PolicyRuntime

    config = yaml.safe_load(open(args.config))
    r = args.results
    runtime = PolicyRuntime(config["model"], config["tokenizer"], seed=0, batch_size=16)
    params = load_final_params(runtime, f"{r}/base/{args.task}/final.json")
    problems = load_problems(f"{r}/splits/{args.task}/train.jsonl")
    quads = [Quadruple.from_row({k: v for k, v in row.items() if k not in ("split", "horizon")})
             for row in read_jsonl(f"{r}/taxonomy/{args.task}/tagged.jsonl") if row.get("split") == "train"]
    data = TrainData(problems=problems, quadruples=quads, problems_by_id={p.id: p for p in problems})
    for variant in (args.variants.split(";") if args.variants else [""]):
        block = copy.deepcopy(config["cts"])
        block.setdefault("critic", {})["min_dev_pair_accuracy"] = 0.0
        for kv in filter(None, variant.split(",")):
            k, v = kv.split("=", 1)
            block = _set(block, k.strip(), v.strip())
        cell = {"method_config": {"loss": "grpo", "reward": "verifier", "verifier_weight": 0.5, "cts": True},
                "train": {"group_size": config["train"]["group_size"]}, "grpo": config["grpo"], "cts": block}
        method = CTSMethod(CTSMethodConfig.from_cell(cell), runtime)
        loop = LoopConfig(steps=30, prompts_per_step=16, group_size=config["train"]["group_size"])
        t0 = time.perf_counter()
        method.setup(data, loop, {"policy": params}, make_optimizer(loop), log=lambda m: None)
        w = method.wiring.warmup
        a = w["dev_after_warmup"]
        print(json.dumps({"variant": variant or "config", "n_fit": w["n_fit"], "n_dev": w["n_dev"],
                          "n_unlocalised": w["n_unlocalised"], "n_failed": w["n_failed"],
                          "dev_acc_before": w["dev_before_warmup"]["pair_accuracy"],
                          "dev_acc_after": a["pair_accuracy"], "fit": w["fit"],
                          "edit_cos_before": w["dev_before_warmup"]["edit_cos"], "edit_cos_after": a["edit_cos"],
                          "edit_rel_after": a["edit_rel_mean"], "u_decrease_after": a["u_decrease_frac"],
                          "setup_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
