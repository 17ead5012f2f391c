"""rules/teacher.smk: the base policy's first attempts y⁰, then the teacher's critique f and revision y¹."""

from __future__ import annotations

import jax

from cts.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from cts.tasks.schema import Problem, load_problems
from cts.teachers.configured import critique_attempts
from cts.train.artifacts import runtime_from_final

__all__ = ["teacher_critique", "teacher_rollouts"]


def teacher_rollouts(base_final: str, split_paths: dict[str, str], rollouts_cfg: dict,
                     out_attempts: str, log=print, parallelism: dict | None = None) -> None:
    """y⁰: the base policy's greedy first attempt on every problem of the given splits, sampled on
    the run's mesh (`parallelism`, as for base training; process 0 writes)."""
    runtime, params = runtime_from_final(base_final, rollouts_cfg["batch_size"], parallelism=parallelism)
    rows = []
    for split in sorted(split_paths):
        problems = load_problems(split_paths[split])
        attempts = runtime.generate(params, [p.prompt for p in problems], jax.random.key(0),
                                    max_new_tokens=rollouts_cfg["max_new_tokens"],
                                    batch_size=rollouts_cfg["batch_size"], greedy=True)
        rows += [{"problem": p.to_row(), "attempt": a} for p, a in zip(problems, attempts)]
        log(f"{split}: {len(problems)} attempts")
    atomic_write_jsonl(out_attempts, rows)


def teacher_critique(attempts_path: str, teacher_cfg: dict, out_quadruples: str, *,
                     cache_dir: str | None = None, workers: int = 1, log=print,
                     eval_split: str = "test", out_skipped: str | None = None) -> None:
    """(x, y⁰, f, y¹) for every attempt, by the teacher `teacher.kind` names (cts.teachers.configured).
    Attempts an LLM teacher skipped (teacher.on_invalid: skip) are listed in out_skipped."""
    rows = read_jsonl(attempts_path, required=("problem", "attempt"))
    items = [(Problem.from_row(r["problem"], where=f"{attempts_path}:{i + 1}"), r["attempt"])
             for i, r in enumerate(rows)]
    kind = teacher_cfg.get("kind", "programmatic")
    quads, items, skipped = critique_attempts(items, teacher_cfg, cache_dir=cache_dir, workers=workers,
                                              eval_split=eval_split, where=attempts_path, log=log)
    atomic_write_jsonl(out_quadruples, [{**q.to_row(), "split": p.split} for q, (p, _) in zip(quads, items)])
    if out_skipped:
        atomic_write_json(out_skipped, {"teacher": kind, "n_skipped": len(skipped), "skipped": sorted(skipped)})
    n_wrong = sum(not q.attempt_correct for q in quads)
    log(f"{len(quads)} attempts critiqued; {n_wrong} flagged wrong ({n_wrong / max(1, len(quads)):.1%})"
        + (f"; {len(skipped)} skipped (invalid replies)" if skipped else ""))
