"""How far the table can trust its critiques: unlocalised quadruples and teacher-vs-rule tag agreement.

`teacher_quality(tagged_files)` reads the taxonomy stage's outputs
(`results/taxonomy/<task>/tagged.jsonl`, the files the rule declares) and returns, per task, the counts of quadruples, wrong attempts and `unlocalised` ones
(wrong, but the teacher had no evidence of where: kept, counted, and left out of every term that
needs a location), and Cohen's κ between the teacher's own tag and the rule-based tag over the
wrong attempts — plus the Markdown notes the results table prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from cts.io import read_json, read_jsonl
from cts.stats.kappa import cohen_kappa

__all__ = ["teacher_quality", "teacher_section", "teacher_skips_section"]


def teacher_quality(tagged_files: list[str | os.PathLike]) -> dict:
    """{"markdown": [lines], "tasks": {task: {...}}}; the task is each file's folder name."""
    files = sorted(Path(f) for f in tagged_files)
    tasks, md = {}, []
    for path in files:
        rows = read_jsonl(str(path))
        wrong = [r for r in rows if not r.get("attempt_correct")]
        pairs = [(r.get("teacher_error_type"), r.get("rule_error_type")) for r in wrong
                 if r.get("teacher_error_type") is not None and r.get("rule_error_type") is not None]
        k = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])
        tasks[path.parent.name] = {
            "n": len(rows), "n_wrong": len(wrong),
            "n_unlocalised": sum(bool(r.get("unlocalised")) for r in wrong),
            "kappa": k.to_dict(),
        }
    if tasks:
        md += ["", "## Teacher critiques", "",
               "Unlocalised: wrong attempts where the teacher found no evidence of the first error "
               "(kept and counted; excluded from the terms that need a location). κ: Cohen's κ between "
               "the teacher's own error tag and the rule-based tag, over the wrong attempts.", "",
               "| Task | quadruples | wrong | unlocalised | κ teacher vs rules (n) |", "|---|---|---|---|---|"]
        for task, t in tasks.items():
            kd = t["kappa"]
            kappa = f"{kd['kappa']:.3f}" if kd["kappa"] is not None else f"— ({kd['reason']})"
            md.append(f"| {task} | {t['n']} | {t['n_wrong']} | {t['n_unlocalised']} "
                      f"({t['n_unlocalised'] / max(t['n_wrong'], 1):.1%}) | {kappa} ({kd['n']}) |")
    return {"markdown": md, "tasks": tasks}


def teacher_section(tagged_files: list[str | os.PathLike]):
    """A results-table section builder (cts.stats.table.SECTIONS protocol) for these files."""

    def section(ctx) -> list[str]:
        quality = teacher_quality(tagged_files)
        if quality["tasks"]:
            ctx.extra_json["teacher_quality"] = quality["tasks"]
        return quality["markdown"]

    return section


def teacher_skips_section(manifest_paths: dict[str, str], log=print):
    """A table section (cts.stats.table protocol): how many attempts the LLM teacher skipped
    (teacher.on_invalid: skip). results/teacher/<task>/skipped.json is an input of every eval
    cell, so the table is rebuilt whenever it changes."""

    def section(ctx) -> list[str]:
        counts = {}
        for task, manifest in sorted(manifest_paths.items()):  # results/splits/<task>/manifest.json
            results = os.path.dirname(os.path.dirname(os.path.dirname(manifest)))
            path = os.path.join(results, "teacher", task, "skipped.json")
            if os.path.exists(path) and read_json(path)["n_skipped"]:
                counts[task] = read_json(path)["n_skipped"]
        if not counts:
            return []
        ctx.extra_json["teacher_skips"] = counts
        log(f"teacher skips noted in the table: {counts}")
        return ["", "**Teacher skips** (`teacher.on_invalid: skip`): the LLM teacher's reply stayed invalid "
                "after the re-asks for " + ", ".join(f"{n} attempt(s) of {t}" for t, n in counts.items())
                + "; those problems are left out of training quadruples and of eval "
                "(`results/teacher/<task>/skipped.json`)."]

    return section
