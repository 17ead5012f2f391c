"""Blinded export → annotator CSVs → import → κ and per-method quality (cts.stats.human_eval)."""

import csv

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from cts.io import DataError
from cts.stats.human_eval import (export_blinded_sample, import_annotations, read_key,
                                  summarize_human_eval)

LABELS = {"correct": 1.0, "partly": 0.5, "wrong": 0.0}


def make_items(n=12):
    items = []
    for m in ("B3", "B5", "B5-A1"):
        for j in range(n):
            items.append({"task": "gsm8k", "method": m, "problem_id": f"gsm8k-{j:03d}", "seed": j % 2,
                          "prompt": f"What is {j} + {j}?", "response": f"{m} says {2 * j},\nwith a comma",
                          "teacher_labels": {"programmatic": "correct" if j % 3 else "wrong",
                                             "llm": "correct" if j % 4 else "wrong"}})
    return items


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_round_trip(tmp_path):
    items = make_items()
    key_rows = export_blinded_sample(items, n_per_method=5, seed=3, out_csv=tmp_path / "sheet.csv",
                                     out_key=tmp_path / "key.csv")
    # blinded: no method or seed column, and the method names do not appear in the header
    with open(tmp_path / "sheet.csv", newline="", encoding="utf-8") as f:
        sheet = list(csv.DictReader(f))
    assert set(sheet[0]) == {"item_id", "task", "prompt", "response", "label", "annotator", "comment"}
    assert len(sheet) == 15 and all(r["label"] == "" for r in sheet)
    assert "\n" in sheet[0]["response"]  # multi-line text survives the CSV round trip
    # shuffled: the methods are not in blocks
    methods_in_order = [k["method"] for k in key_rows]
    assert methods_in_order != sorted(methods_in_order)
    assert {m: methods_in_order.count(m) for m in set(methods_in_order)} == {"B3": 5, "B5": 5, "B5-A1": 5}
    # deterministic, and independent of the caller's item order
    export_blinded_sample(items[::-1], n_per_method=5, seed=3, out_csv=tmp_path / "s2.csv",
                          out_key=tmp_path / "k2.csv")
    assert (tmp_path / "s2.csv").read_bytes() == (tmp_path / "sheet.csv").read_bytes()
    assert (tmp_path / "k2.csv").read_bytes() == (tmp_path / "key.csv").read_bytes()

    key = read_key(tmp_path / "key.csv")
    assert set(key) == {r["item_id"] for r in sheet}
    by_item = {(it["method"], it["problem_id"], it["seed"]): it for it in items}
    for item_id, info in key.items():
        src = by_item[(info["method"], info["problem_id"], info["seed"])]
        assert next(r for r in sheet if r["item_id"] == item_id)["response"] == src["response"]
        assert info["teacher_labels"] == src["teacher_labels"]

    # two annotators: alice = the programmatic teacher's label; bob disagrees on B3 items
    ids = sorted(key)
    alice = {i: key[i]["teacher_labels"]["programmatic"] for i in ids}
    bob = {i: ("partly" if key[i]["method"] == "B3" else alice[i]) for i in ids}
    f1 = write_csv(tmp_path / "alice.csv", ["item_id", "label"], [[i, alice[i]] for i in ids])
    f2 = write_csv(tmp_path / "batch2.csv", ["item_id", "label", "annotator"], [[i, bob[i], "bob"] for i in ids])
    ann = import_annotations([f1, f2], key, labels=list(LABELS))
    assert ann == {"alice": alice, "bob": bob}

    summary = summarize_human_eval(ann, key, label_scores=LABELS, n_boot=500, seed=0)
    kap = {(k["rater_a"], k["rater_b"]): k for k in summary["kappa"]}
    order = list(LABELS)
    want = cohen_kappa_score([alice[i] for i in ids], [bob[i] for i in ids], labels=order)
    assert kap[("human:alice", "human:bob")]["kappa"] == pytest.approx(want)
    assert kap[("human:alice", "human:bob")]["kind"] == "human-human"
    assert kap[("human:alice", "teacher:programmatic")]["kappa"] == pytest.approx(1.0)
    assert kap[("human:alice", "teacher:programmatic")]["kind"] == "human-teacher"
    assert kap[("teacher:llm", "teacher:programmatic")]["kind"] == "teacher-teacher"
    for m in ("B3", "B5", "B5-A1"):
        its = [i for i in ids if key[i]["method"] == m]
        scores = [(LABELS[alice[i]] + LABELS[bob[i]]) / 2 for i in its]
        q = summary["methods"][m]
        assert q["n_items"] == 5 and q["mean"] == pytest.approx(np.mean(scores))
        assert q["low"] <= q["mean"] <= q["high"]


def test_import_errors_name_file_and_row(tmp_path):
    export_blinded_sample(make_items(4), n_per_method=2, seed=0, out_csv=tmp_path / "s.csv",
                          out_key=tmp_path / "k.csv")
    key = read_key(tmp_path / "k.csv")
    good = sorted(key)[0]
    cases = {
        "unknown.csv": ([["item-9999", "correct"]], r"unknown\.csv: row 2: unknown item_id 'item-9999'"),
        "badlabel.csv": ([[good, "great"]], r"badlabel\.csv: row 2: label 'great'"),
        "empty.csv": ([[good, ""]], r"empty\.csv: row 2: empty label"),
        "dup.csv": ([[good, "correct"], [good, "wrong"]], r"dup\.csv: row 3: duplicate label .*\(first at .*dup\.csv: row 2"),
    }
    for name, (rows, pattern) in cases.items():
        path = write_csv(tmp_path / name, ["item_id", "label"], rows)
        with pytest.raises(DataError, match=pattern):
            import_annotations([path], key, labels=list(LABELS))
    nocol = write_csv(tmp_path / "nocol.csv", ["item", "label"], [[good, "correct"]])
    with pytest.raises(DataError, match="needs columns item_id and label"):
        import_annotations([nocol], key, labels=list(LABELS))
    key[good]["teacher_labels"]["llm"] = "maybe"
    with pytest.raises(DataError, match=r"teacher 'llm' label 'maybe'"):
        summarize_human_eval({}, key, label_scores=LABELS)
    with pytest.raises(DataError, match="missing key"):
        export_blinded_sample([{"task": "t"}], n_per_method=1, seed=0, out_csv=tmp_path / "x.csv",
                              out_key=tmp_path / "y.csv")
