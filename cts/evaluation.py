"""Scoring held-out completions: one row per test problem, the input of every statistic.

A row holds the greedy completion's correctness (pass@1), how many of n sampled completions are
correct (pass@k), the first-error step of the greedy completion (cts.taxonomy) and, from the
teacher's tagged quadruples, the base policy's attempt on the same problem: whether it was
correct, its first-error step and its error label (the Δ_critique reference).
"""

from __future__ import annotations

from cts.io import DataError
from cts.tasks.schema import Problem
from cts.taxonomy import diagnose
from cts.verifiers.outcome import verify_many
from cts.distributed import map_once

__all__ = ["check_base_attempts", "score_completions", "without_skipped"]


def without_skipped(problems: list[Problem], skipped_ids: set[str], log=print) -> list[Problem]:
    """The problems the teacher did not skip (teacher.on_invalid: skip): they have no base attempt."""
    kept = [p for p in problems if p.id not in skipped_ids]
    if len(kept) < len(problems):
        log(f"{len(problems) - len(kept)} test problem(s) left out: the teacher skipped them (invalid replies)")
    return kept


def check_base_attempts(problems: list[Problem], base: dict[str, dict], where: str) -> None:
    """DataError naming the first test problem without a base attempt in `where` (checked before
    any completion is generated)."""
    for p in problems:
        if p.id not in base:
            raise DataError(f"{where}: no base attempt for test problem {p.id}")


def score_completions(problems: list[Problem], greedy: list[str], sampled: list[str], n_samples: int,
                      base: dict[str, dict], *, method: str, seed: int, where: str) -> list[dict]:
    """Per-problem eval rows.

    Args:
      problems: the test problems, in order.
      greedy: one greedy completion per problem.
      sampled: n_samples completions per problem, problem-major (problem i: [i*n, (i+1)*n)).
      base: tagged quadruple rows by problem id (the base policy's attempt on each problem).
      where: the tagged file, named when a problem has no base attempt.
    """
    if len(greedy) != len(problems) or len(sampled) != len(problems) * n_samples:
        raise ValueError(f"{len(problems)} problems need {len(problems)} greedy and {len(problems) * n_samples} "
                         f"sampled completions, got {len(greedy)} and {len(sampled)}")
    check_base_attempts(problems, base, where)
    v_greedy = map_once(verify_many, list(zip(problems, greedy)))  # each completion verified once across processes
    v_sampled = map_once(verify_many, list(zip([p for p in problems for _ in range(n_samples)], sampled)))
    task = problems[0].task if problems else ""
    rows = []
    for i, (p, g, v) in enumerate(zip(problems, greedy, v_greedy)):
        b = base[p.id]
        d = diagnose(p, g, v.code_verdict)
        rows.append({
            "problem_id": p.id, "task": task, "method": method, "seed": seed, "horizon": p.horizon,
            "correct": bool(v.correct), "n_samples": n_samples,
            "n_correct": int(sum(x.correct for x in v_sampled[i * n_samples:(i + 1) * n_samples])),
            "base_correct": bool(b["attempt_correct"]), "critiqued": not b["attempt_correct"],
            "base_first_error_step": b["first_error_step"], "first_error_step": d.step,
            "taxonomy": None if b["attempt_correct"] else b["error_type"],
            "completion": g,
        })
    return rows
