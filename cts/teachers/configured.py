"""The teacher the workflow config names (`teacher.kind`), run over first attempts.

`programmatic` is the rule-based teacher (cts.teachers.programmatic: no requests, deterministic);
`anthropic` / `openai` is an LLM through its official SDK (cts.teachers.llm), with the response
cache and cost log under `cache_dir`, `teacher.limit` on the number of attempts and
`teacher.on_invalid` deciding what a reply that stays invalid after the re-asks does.
"""

from __future__ import annotations

import os

from cts.io import DataError
from cts.tasks.schema import Problem, Quadruple
from cts.teachers.cache import ResponseCache
from cts.teachers.cli import run_teacher
from cts.teachers.llm import CostLog, LLMTeacher, LLMTeacherConfig
from cts.teachers.programmatic import critique_many

__all__ = ["critique_attempts", "critique_order"]


def critique_order(items: list[tuple[Problem, str]], eval_split: str, limit: int | None,
                   where: str) -> list[tuple[Problem, str]]:
    """teacher.limit spends its budget on train attempts first, then the eval split's, then the rest;
    eval needs a critique of every attempt of its split, so a limit that cuts into it is an error
    (raised before any request is made)."""
    rank = {"train": 0, eval_split: 1}
    ordered = sorted(items, key=lambda it: rank.get(it[0].split, 2))  # stable: file order within
    if not limit:
        return ordered
    kept, n_eval = ordered[:limit], sum(p.split == eval_split for p, _ in items)
    n_eval_kept = sum(p.split == eval_split for p, _ in kept)
    if n_eval_kept < n_eval:
        n_train = sum(p.split == "train" for p, _ in items)
        raise DataError(f"{where}: teacher.limit {limit} leaves {n_eval - n_eval_kept} of the {n_eval} "
                        f"{eval_split} attempts without a critique ({n_train} train attempts come first; "
                        f"eval needs every {eval_split} attempt): raise teacher.limit to at least "
                        f"{n_train + n_eval}")
    return kept


def critique_attempts(items: list[tuple[Problem, str]], teacher_cfg: dict, *, cache_dir: str | None,
                      workers: int, eval_split: str, where: str, log=print
                      ) -> tuple[list[Quadruple], list[tuple[Problem, str]], list[str]]:
    """Critique (problem, attempt) pairs with the configured teacher.

    Returns (quadruples, the items they belong to, in the same order, ids of skipped attempts).
    An LLM teacher's reply that stays invalid after the re-asks is skipped (teacher.on_invalid:
    skip) or raises (fail); the API key comes from the environment only."""
    kind = teacher_cfg.get("kind", "programmatic")
    if kind == "programmatic":
        return critique_many(items, workers=workers), items, []
    items = critique_order(items, eval_split, teacher_cfg.get("limit"), where)
    cache_dir = cache_dir or "work/teacher_cache"
    teacher = LLMTeacher(LLMTeacherConfig(provider=kind, model=teacher_cfg["model"],
                                          max_reasks=teacher_cfg["max_reasks"],
                                          max_retries=teacher_cfg["retries"],
                                          timeout_s=float(teacher_cfg["timeout_s"])),
                         cache=ResponseCache(cache_dir),
                         cost_log=CostLog(os.path.join(cache_dir, "cost.jsonl")))
    rows, skipped = run_teacher(teacher, items, workers=workers, skip_invalid=teacher_cfg["on_invalid"] == "skip")
    by_id = {r["problem_id"]: Quadruple.from_row(r) for r in rows}
    items = [(p, a) for p, a in items if p.id in by_id]
    if skipped:
        log(f"teacher.on_invalid = skip: {len(skipped)} attempt(s) skipped, the reply stayed invalid "
            f"after {teacher_cfg['max_reasks']} re-ask(s): {', '.join(skipped[:10])}"
            + (" ..." if len(skipped) > 10 else ""))
    return [by_id[p.id] for p, _ in items], items, skipped
