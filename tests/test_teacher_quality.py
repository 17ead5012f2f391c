"""Issue 13 item 5 and the unlocalised notes: the taxonomy stage keeps the teacher's own tag beside
the rule-based one, and the table reports their agreement (Cohen's κ) and the unlocalised count."""

from __future__ import annotations

import json

from cts.io import atomic_write_jsonl, read_jsonl
from cts.stages.taxonomy import taxonomy_tag
from cts.stats.kappa import cohen_kappa
from cts.stats.teacher_quality import teacher_quality
from cts.tasks.schema import Problem, Quadruple
from cts.teachers.programmatic import critique

GSM = Problem(id="g2", task="gsm8k", kind="math", prompt="Tom has 3 bags of 4 apples. He eats 2. How many are left?",
              reference="He has 3*4=<<3*4=12>>12 apples.\nHe has 12-2=<<12-2=10>>10 left.\n#### 10",
              answer="10", horizon=2, split="train")
ATTEMPTS = {
    "slip": "He has 3*4=<<3*4=12>>12 apples.\nHe has 12-2=<<12-2=9>>9 left.\n#### 9",
    "noevidence": "He has 3+4=<<3+4=7>>7 apples.\nHe has 7-2=<<7-2=5>>5 left.\n#### 5",
    "right": GSM.reference,
}


def _files(tmp_path, llm_tag: str):
    problems, quads = [], []
    for name, attempt in ATTEMPTS.items():
        p = Problem(**{**GSM.to_row(), "id": f"g-{name}"})
        problems.append({"problem": p.to_row(), "attempt": attempt})
        q = critique(p, attempt)
        row = {**q.to_row(), "split": "train"}
        if name == "slip":  # as an LLM teacher would write it: its own tag, differing from the rules
            row.update(teacher="openai:some-model", error_type=llm_tag, teacher_error_type=llm_tag)
        quads.append(row)
    atomic_write_jsonl(tmp_path / "attempts.jsonl", problems)
    atomic_write_jsonl(tmp_path / "quads.jsonl", quads)
    return quads


def test_taxonomy_stage_writes_the_rule_tag_beside_the_teachers_and_overwrites_nothing(tmp_path):
    quads = _files(tmp_path, "wrong_operation")
    out = tmp_path / "taxonomy" / "gsm8k" / "tagged.jsonl"
    out.parent.mkdir(parents=True)
    taxonomy_tag(str(tmp_path / "quads.jsonl"), str(tmp_path / "attempts.jsonl"), str(out),
                 str(tmp_path / "summary.json"), log=lambda *_: None)
    tagged = read_jsonl(str(out))
    for before, after in zip(quads, tagged):
        for k, v in before.items():  # every field the teacher wrote is still there, unchanged
            if v is not None:
                assert after[k] == v, k
    by_id = {r["problem_id"]: r for r in tagged}
    assert by_id["g-slip"]["teacher_error_type"] == "wrong_operation"
    assert by_id["g-slip"]["rule_error_type"] == "arithmetic_slip"
    assert by_id["g-noevidence"]["rule_error_type"] == "unlocalised" and by_id["g-noevidence"]["unlocalised"]
    assert by_id["g-right"]["rule_error_type"] == "none"
    # tagged rows still load as quadruples (the training stage reads them)
    assert all(Quadruple.from_row({k: v for k, v in r.items() if k not in ("split", "horizon")}) for r in tagged)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train"]["unlocalised"] == 1


def test_teacher_quality_reports_kappa_per_task_and_unlocalised(tmp_path):
    rows = []
    pairs = [("arithmetic_slip", "arithmetic_slip")] * 6 + [("wrong_operation", "arithmetic_slip")] * 2 \
        + [("misread_quantity", "misread_quantity")] * 4
    for i, (teacher, rule) in enumerate(pairs):
        rows.append({"problem_id": f"p{i}", "attempt_correct": False, "unlocalised": False,
                     "teacher_error_type": teacher, "rule_error_type": rule, "error_type": teacher})
    rows += [{"problem_id": "u", "attempt_correct": False, "unlocalised": True, "teacher_error_type": "unlocalised",
              "rule_error_type": "unlocalised", "error_type": "unlocalised"},
             {"problem_id": "c", "attempt_correct": True, "unlocalised": False, "teacher_error_type": "none",
              "rule_error_type": "none", "error_type": "none"}]
    (tmp_path / "gsm8k").mkdir()
    atomic_write_jsonl(tmp_path / "gsm8k" / "tagged.jsonl", rows)
    tq = teacher_quality([tmp_path / "gsm8k" / "tagged.jsonl"])
    t = tq["tasks"]["gsm8k"]
    pairs.append(("unlocalised", "unlocalised"))  # every wrong attempt with both tags counts
    want = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs]).kappa
    assert abs(t["kappa"]["kappa"] - want) < 1e-12 and t["kappa"]["n"] == 13
    assert (t["n"], t["n_wrong"], t["n_unlocalised"]) == (14, 13, 1)
    text = "\n".join(tq["markdown"])
    assert "κ" in text and "unlocalised" in text and f"{want:.3f}" in text
    assert teacher_quality([]) == {"markdown": [], "tasks": {}}


def test_table_notes_show_unlocalised_and_kappa(tmp_path):
    from tests.test_stats_table import make_eval_files

    from cts.stats.table import build_table
    from cts.stats.teacher_quality import teacher_section

    ev = make_eval_files(tmp_path / "evals", methods={"B3": 0.0, "B5": 1.0}, tasks=("gsm8k",), seeds=(0, 1))
    rows = [{"problem_id": f"p{i}", "attempt_correct": False, "unlocalised": i == 0,
             "teacher_error_type": "arithmetic_slip" if i % 2 else "misread_quantity",
             "rule_error_type": "arithmetic_slip" if i % 3 else "misread_quantity", "error_type": "x"}
            for i in range(10)]
    (tmp_path / "taxonomy" / "gsm8k").mkdir(parents=True)
    atomic_write_jsonl(tmp_path / "taxonomy" / "gsm8k" / "tagged.jsonl", rows)
    doc = build_table(ev, base="B3", ablation_base=None, seed=0, n_boot=50,
                      out_md=str(tmp_path / "table.md"), out_json=str(tmp_path / "table.json"),
                      extra_sections=[teacher_section([tmp_path / "taxonomy" / "gsm8k" / "tagged.jsonl"])])
    text = (tmp_path / "table.md").read_text()
    assert "## Teacher critiques" in text and "| gsm8k | 10 | 10 | 1 (10.0%) |" in text
    assert doc["extra"]["teacher_quality"]["gsm8k"]["n_unlocalised"] == 1
