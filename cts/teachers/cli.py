"""Run an LLM teacher over first attempts: `python -m cts.teachers.cli ...`.

    python -m cts.teachers.cli --task gsm8k --split train --teacher anthropic \\
        --model claude-sonnet-4-5 --attempts results/attempts/gsm8k-train.jsonl \\
        --out results/teachers/anthropic/gsm8k-train.jsonl --limit 200 \\
        --cache-dir results/teachers/cache --cost-log logs/teachers/cost.jsonl --max-reasks 2

Input rows: {"problem": <Problem row>, "attempt": str}. Output: one Quadruple row per problem, in
input order, written atomically once all are done (a rerun replays finished calls from the cache).
The API key is read from ANTHROPIC_API_KEY / OPENAI_API_KEY only; there is no flag for it.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cts.io import DataError, atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file
from cts.tasks.schema import Problem
from cts.teachers.cache import ResponseCache
from cts.teachers.llm import PROVIDERS, InvalidReplyError, LLMTeacher, LLMTeacherConfig, TeacherError

__all__ = ["load_attempts", "main", "run_teacher"]


def load_attempts(path: str | Path, task: str, split: str,
                  limit: int | None = None) -> list[tuple[Problem, str]]:
    """Read attempt rows, check they belong to (task, split), keep the first `limit`.

    Raises DataError naming file:line for a malformed row, a bad Problem, a non-string attempt,
    a task/split mismatch, or a repeated problem id.
    """
    rows = read_jsonl(path, required=("problem", "attempt"))
    out: list[tuple[Problem, str]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, 1):
        where = f"{path}: row {i}"
        if not isinstance(row["problem"], dict):
            raise DataError(f"{where}: 'problem' must be an object")
        problem = Problem.from_row(row["problem"], where=where)
        if not isinstance(row["attempt"], str):
            raise DataError(f"{where}: 'attempt' must be a string, got {type(row['attempt']).__name__}")
        if problem.task != task:
            raise DataError(f"{where}: problem {problem.id!r} has task {problem.task!r}, expected {task!r}")
        if problem.split is not None and problem.split != split:
            raise DataError(
                f"{where}: problem {problem.id!r} has split {problem.split!r}, expected {split!r}")
        if problem.id in seen:
            raise DataError(f"{where}: problem id {problem.id!r} appears twice")
        seen.add(problem.id)
        out.append((problem, row["attempt"]))
        if limit is not None and len(out) >= limit:
            break
    return out


def run_teacher(teacher: LLMTeacher, items: list[tuple[Problem, str]], workers: int = 1,
                skip_failures: bool = False, skip_invalid: bool = False) -> tuple[list[dict], list[str]]:
    """Critique every (problem, attempt); returns (Quadruple rows in input order, failed ids).

    skip_invalid leaves out problems whose reply stayed invalid (teacher.on_invalid: skip);
    skip_failures also those whose requests failed."""

    def one(item):
        problem, attempt = item
        try:
            return teacher.critique(problem, attempt).to_row(), None
        except TeacherError as e:
            if not (skip_failures or (skip_invalid and isinstance(e, InvalidReplyError))):
                raise
            print(f"skipped: {e}", file=sys.stderr)
            return None, problem.id

    if workers <= 1:
        results = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, items))
    rows = [r for r, _ in results if r is not None]
    failed = [pid for _, pid in results if pid is not None]
    return rows, failed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cts.teachers.cli", description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, help="task name every problem must have (e.g. gsm8k)")
    p.add_argument("--split", required=True, choices=("train", "dev", "test"))
    p.add_argument("--teacher", required=True, choices=PROVIDERS)
    p.add_argument("--model", required=True, help="provider model id")
    p.add_argument("--attempts", required=True, help='JSONL of {"problem": ..., "attempt": ...}')
    p.add_argument("--out", required=True, help="output JSONL of Quadruple rows")
    p.add_argument("--limit", type=int, default=None, help="cap on the number of problems")
    p.add_argument("--cache-dir", default=None, help="response cache directory (default: no cache)")
    p.add_argument("--cost-log", default=None, help="JSONL token/cost log to append to")
    p.add_argument("--max-reasks", type=int, default=2)
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; a negative value means the provider default")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    p.add_argument("--base-url", default=None,
                   help="API base URL (else $CTS_ANTHROPIC_BASE_URL / $CTS_OPENAI_BASE_URL)")
    p.add_argument("--workers", type=int, default=1, help="concurrent requests")
    p.add_argument("--skip-failures", action="store_true",
                   help="leave out problems whose critique failed instead of aborting")
    p.add_argument("--provenance", default=None,
                   help="JSON file for settings, prompt hash, cache and cost counters")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be >= 1, got {args.limit}")
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    config = LLMTeacherConfig(
        provider=args.teacher, model=args.model, max_reasks=args.max_reasks,
        max_retries=args.max_retries, max_tokens=args.max_tokens,
        temperature=None if args.temperature < 0 else args.temperature,
        timeout_s=args.timeout, base_url=args.base_url)
    items = load_attempts(args.attempts, args.task, args.split, args.limit)
    teacher = LLMTeacher(config, cache=ResponseCache(args.cache_dir) if args.cache_dir else None,
                         cost_log=args.cost_log)
    try:
        rows, failed = run_teacher(teacher, items, workers=args.workers,
                                   skip_failures=args.skip_failures)
    except TeacherError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = atomic_write_jsonl(args.out, rows)
    prov = {**teacher.provenance(), "task": args.task, "split": args.split,
            "attempts": str(args.attempts), "attempts_sha256": sha256_file(args.attempts),
            "n_problems": len(items), "n_written": n, "failed_ids": failed}
    if args.provenance:
        atomic_write_json(args.provenance, prov)
    cache = prov["cache"] or {}
    print(f"wrote {n}/{len(items)} quadruples to {args.out} "
          f"(cache hits {cache.get('hits', 0)}, misses {cache.get('misses', 0)}; "
          f"cost ${(prov['cost'] or {}).get('cost_usd', 0.0):.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
