"""rules/stats.smk: the power plan (before training), the results table, the human-eval export."""

from __future__ import annotations

import os

from cts.io import DataError, read_json, read_jsonl
from cts.stats.human_eval import export_blinded_sample
from cts.stats.power import write_power_report
from cts.stats.table import build_table
from cts.stats.teacher_quality import teacher_section, teacher_skips_section
from cts.tasks.schema import load_problems

__all__ = ["stats_human_eval_export", "stats_power", "stats_table"]


def _power_plan(config_subset: dict, manifest_paths: dict[str, str], eval_split: str) -> dict:
    return {**config_subset,
            "n_test_problems": {t: read_json(p)["splits"][eval_split]["n"] for t, p in sorted(manifest_paths.items())}}


def stats_power(plan_cfg: dict, manifest_paths: dict[str, str], eval_split: str, out_md: str,
                log=print) -> None:
    """MDE of every planned comparison, from the config and split sizes alone (before training)."""
    rows = write_power_report(_power_plan(plan_cfg, manifest_paths, eval_split), out_md)
    log(f"power: {len(rows)} planned comparisons")


def stats_table(eval_files: list[str], metrics_files: list[str], plan_cfg: dict,
                manifest_paths: dict[str, str], eval_split: str, stats_cfg: dict, out_md: str,
                out_json: str, fig_dir: str, tagged_files: list[str] = (), log=print) -> None:
    os.makedirs(fig_dir, exist_ok=True)
    build_table(sorted(eval_files), base=plan_cfg["base"], ablation_base=plan_cfg.get("ablation_base"),
                metrics_files=sorted(metrics_files),
                power_plan=_power_plan(plan_cfg, manifest_paths, eval_split),
                seed=stats_cfg["seed"], n_boot=stats_cfg["n_boot"], alpha=stats_cfg["alpha"],
                out_md=out_md, out_json=out_json, fig_dir=fig_dir,
                primary=stats_cfg.get("primary_metric", "greedy"),
                extra_sections=[teacher_section(tagged_files), teacher_skips_section(manifest_paths, log)])
    log(f"table from {len(eval_files)} eval files → {out_md}")


def stats_human_eval_export(eval_files: list[str], test_paths: list[str], n_per_method: int, seed: int,
                            out_csv: str, out_key: str, log=print) -> None:
    """A blinded annotation sheet (method hidden, rows shuffled) and its key, kept apart."""
    prompts = {p.id: p.prompt for path in test_paths for p in load_problems(path)}
    items = []
    for path in sorted(eval_files):
        for i, r in enumerate(read_jsonl(path, required=("problem_id", "task", "method", "seed", "completion"))):
            if r["problem_id"] not in prompts:
                raise DataError(f"{path}:{i + 1}: problem {r['problem_id']!r} is not in the test split")
            items.append({"task": r["task"], "method": r["method"], "problem_id": r["problem_id"],
                          "seed": r["seed"], "prompt": prompts[r["problem_id"]], "response": r["completion"]})
    key = export_blinded_sample(items, n_per_method=n_per_method, seed=seed, out_csv=out_csv, out_key=out_key)
    log(f"human eval: {len(key)} blinded items → {out_csv} (key: {out_key})")
