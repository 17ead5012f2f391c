"""rules/eval.smk: a trained policy's completions on the held-out split, scored per problem."""

from __future__ import annotations

import os

import jax

from cts.evaluation import check_base_attempts, score_completions, without_skipped
from cts.io import atomic_write_jsonl, read_json, read_jsonl
from cts.tasks.schema import load_problems
from cts.train.artifacts import runtime_from_final

__all__ = ["eval_cell"]


def eval_cell(final_path: str, test_path: str, tagged_path: str, eval_cfg: dict, method: str,
              seed: int, out_problems: str, log=print, skipped_path: str | None = None) -> None:
    """Per-problem held-out results (cts.evaluation): greedy pass@1, n samples for pass@k,
    first-error step. Problems the teacher skipped (teacher.on_invalid: skip) have no base attempt
    and are left out."""
    problems = load_problems(test_path)
    if skipped_path and os.path.exists(skipped_path):
        problems = without_skipped(problems, set(read_json(skipped_path)["skipped"]), log)
    base = {r["problem_id"]: r for r in read_jsonl(tagged_path)}
    check_base_attempts(problems, base, tagged_path)  # before any generation
    batch = eval_cfg.get("batch_size", 64)  # a big model on a few problems wants fewer filler rows
    runtime, params = runtime_from_final(final_path, batch_size=batch)
    prompts = [p.prompt for p in problems]
    greedy = runtime.generate(params, prompts, jax.random.key(seed), max_new_tokens=eval_cfg["max_new_tokens"],
                              batch_size=batch, greedy=True)
    n = eval_cfg["n_samples"]
    sampled = runtime.generate(params, [q for q in prompts for _ in range(n)], jax.random.key(10_000 + seed),
                               max_new_tokens=eval_cfg["max_new_tokens"], batch_size=batch,
                               temperature=eval_cfg["temperature"])
    rows = score_completions(problems, greedy, sampled, n, base, method=method, seed=seed, where=tagged_path)
    atomic_write_jsonl(out_problems, rows)
    acc = sum(r["correct"] for r in rows) / max(1, len(rows))
    log(f"{method} seed {seed}: greedy accuracy {acc:.3f} on {len(rows)} problems")
