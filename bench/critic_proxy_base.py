"""A proxy base for the critic bench when the full base cannot finish in time (issue 14 note):
the synth_math base's own loop checkpoint at step S, then its greedy train attempts, the
programmatic critiques and the taxonomy tags — the teacher-stage chain of the pipeline, on S.

    .venv/bin/python bench/critic_proxy_base.py work/checkpoints/synth_math/base/<digest> 600 results/proxy600
    .venv/bin/python bench/bench_cts_critic.py --results results/proxy600 --variants ...

Writes <out>/base/synth_math/final.json, <out>/rollouts|teacher|taxonomy/synth_math/..., and links
<out>/splits to results/splits. Not part of the pipeline.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(state_dir: str, step: str, out: str, task: str = "synth_math", config_path: str = "workflow_config.yaml"):
    import yaml

    from cts.stages.taxonomy import taxonomy_tag
    from cts.stages.teacher import teacher_critique, teacher_rollouts
    from cts.train.artifacts import write_final
    from cts.train.checkpoint import CheckpointStore
    from cts.train.loop import LoopConfig, make_optimizer
    from cts.train.runtime import PolicyRuntime

    config = yaml.safe_load(open(config_path))
    base = config["base_policy"]
    runtime = PolicyRuntime(config["model"], config["tokenizer"], seed=base["seed"], batch_size=base["batch_size"])
    params = {"policy": runtime.init_params}
    opt = make_optimizer(LoopConfig(steps=base["steps"], prompts_per_step=base["batch_size"],
                                    learning_rate=base["learning_rate"], warmup_steps=base["warmup_steps"]))
    state = CheckpointStore(state_dir).restore(int(step), {"params": params, "opt_state": opt.init(params)})
    final = f"{out}/base/{task}/final.json"
    os.makedirs(os.path.dirname(final), exist_ok=True)
    write_final(final, ckpt_dir=f"work/proxy/{task}/base_step{step}", state_digest=f"proxy-step{step}",
                 params=state["params"]["policy"],
                 config={"task": task, "model": config["model"], "tokenizer": config["tokenizer"],
                         "base_policy": {**base, "proxy_of_step": int(step)}}, rows=[], inputs={})
    if not os.path.exists(f"{out}/splits"):
        os.symlink(os.path.abspath("results/splits"), f"{out}/splits")
    attempts = f"{out}/rollouts/{task}/attempts.jsonl"
    teacher_rollouts(final, {"train": f"results/splits/{task}/train.jsonl"}, config["rollouts"], attempts)
    quads = f"{out}/teacher/{task}/quadruples.jsonl"
    teacher_critique(attempts, config["teacher"], quads)
    taxonomy_tag(quads, attempts, f"{out}/taxonomy/{task}/tagged.jsonl", f"{out}/taxonomy/{task}/summary.json")


if __name__ == "__main__":
    main(*sys.argv[1:])
