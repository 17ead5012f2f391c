"""rules/taxonomy.smk: the rule-based error tag of every critique, beside the teacher's own."""

from __future__ import annotations

from collections import Counter

from cts.io import DataError, atomic_write_json, atomic_write_jsonl, read_jsonl
from cts.tasks.schema import Problem
from cts.taxonomy import diagnose
from cts.verifiers.outcome import verify_many
from cts.distributed import map_once

__all__ = ["taxonomy_tag"]


def taxonomy_tag(quadruples_path: str, attempts_path: str, out_tagged: str, out_summary: str,
                 log=print) -> None:
    """Tag every critique with the rule-based tagger BESIDE the teacher's tag; overwrite nothing.

    Adds `rule_error_type` / `rule_first_error_step` (cts.taxonomy.diagnose) and fills
    `teacher_error_type` with the teacher's own tag where it is missing; every field the teacher
    wrote is kept as written. The summary counts the rule tags per split ("unlocalised" included).
    """
    qrows = read_jsonl(quadruples_path)
    problems = {r["problem"]["id"]: Problem.from_row(r["problem"]) for r in read_jsonl(attempts_path)}
    items = []
    for i, r in enumerate(qrows):
        if r["problem_id"] not in problems:
            raise DataError(f"{quadruples_path}:{i + 1}: problem_id {r['problem_id']!r} not in {attempts_path}")
        items.append((problems[r["problem_id"]], r["attempt"]))
    verdicts = map_once(verify_many, items)
    out, counts = [], Counter()
    for r, (p, a), v in zip(qrows, items, verdicts):
        d = diagnose(p, a, v.code_verdict)
        teacher_tag = r.get("teacher_error_type")
        if teacher_tag is None:
            teacher_tag = r.get("error_type")
        out.append({**r, "teacher_error_type": teacher_tag, "rule_error_type": d.label,
                    "rule_first_error_step": d.step, "horizon": p.horizon})
        counts[(r.get("split"), d.label)] += 1
    atomic_write_jsonl(out_tagged, out)
    summary = {}
    for (split, label), n in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        summary.setdefault(str(split), {})[label] = n
    atomic_write_json(out_summary, summary)
    log(f"taxonomy: {summary}")
