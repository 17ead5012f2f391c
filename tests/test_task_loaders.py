"""Tests for cts.tasks.loaders: counts, fields, the APPS fixture, bad rows and the registry."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest

from cts.io import DataError, read_jsonl, sha256_file
from cts.tasks import loaders
from cts.tasks.loaders import (
    DATA_DIR,
    LOADERS,
    count_code_statements,
    load_task,
    mbpp_entry_point,
    parse_apps_tests,
    register_loader,
)
from cts.tasks.schema import SAFE_ID, Problem
from cts.verifiers.math import is_correct

APPS_FIXTURE = Path(__file__).parent / "fixtures" / "apps_sample.jsonl"

# The sums recorded in /work/shared/data/README.md when the data was received.
EXPECTED_SHA256 = {
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "mbpp/mbpp.jsonl": "143559fa164408d45cab058238471288b0e447507ce55db3057c56113d9dccb4",
}


@pytest.fixture(scope="module")
def gsm8k():
    return load_task("gsm8k")


@pytest.fixture(scope="module")
def mbpp():
    return load_task("mbpp")


@pytest.fixture(scope="module")
def humaneval():
    return load_task("humaneval")


# --- vendored data ---------------------------------------------------------------------------


def test_vendored_files_match_recorded_sha256_and_provenance():
    provenance = (DATA_DIR / "PROVENANCE.md").read_text()
    for rel, digest in EXPECTED_SHA256.items():
        assert sha256_file(DATA_DIR / rel) == digest, rel
        assert f"{rel} {digest}" in provenance, rel
    assert "MIT" in (DATA_DIR / "gsm8k" / "LICENSE").read_text()
    assert "CC BY 4.0" in (DATA_DIR / "mbpp" / "LICENSE").read_text()


# --- row counts ------------------------------------------------------------------------------


def test_row_counts(gsm8k, mbpp, humaneval):
    assert len(load_task("gsm8k", split="train")) == 7473
    assert len(load_task("gsm8k", split="test")) == 1319
    assert len(gsm8k) == 7473 + 1319
    assert len(mbpp) == 974
    assert len(humaneval) == 164


def test_mbpp_split_ranges():
    sizes = {sp: len(load_task("mbpp", split=sp)) for sp in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    ids = [p.meta["task_id"] for p in load_task("mbpp", split="validation")]
    assert (min(ids), max(ids)) == (511, 600)


# --- fields and horizons ---------------------------------------------------------------------


def test_gsm8k_first_problem_by_hand(gsm8k):
    p = gsm8k[0]
    assert p.id == "gsm8k-train-00000" and p.task == "gsm8k" and p.kind == "math"
    assert p.prompt.startswith("Natalia sold clips to 48 of her friends")
    assert p.answer == "72" and p.horizon == 2
    assert p.meta == {"original_split": "train", "index": 0}
    assert gsm8k[7473].id == "gsm8k-test-00000" and gsm8k[7473].meta["original_split"] == "test"


def test_gsm8k_fields_all_rows(gsm8k):
    for p in gsm8k:
        body, final = p.reference.rsplit("\n#### ", 1)
        # independent horizon: the non-blank lines above the answer line
        assert p.horizon == sum(1 for line in body.split("\n") if line.strip()), p.id
        assert p.answer == final.replace(",", ""), p.id  # GSM8K finals are integers, some with commas
        assert is_correct(p.reference, p.answer), p.id
    # 93 gold finals carry thousands separators (e.g. "1,080"); all normalize to digits
    assert sum("," in p.reference.rsplit("####", 1)[1] for p in gsm8k) == 93


def test_mbpp_first_task_by_hand(mbpp):
    p = mbpp[0]
    assert p.id == "mbpp-0001" and p.kind == "code" and p.entry_point == "min_cost"
    # R=3, C=3, tc=, tc[0][0]=, for, tc[i][0]=, for, tc[0][j]=, for, for, tc[i][j]=, return
    assert p.horizon == 12
    assert "\r" not in p.reference
    assert p.tests[0] == "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8"
    assert p.prompt == (
        "You are an expert Python programmer, and here is your task: Write a function to find the minimum "
        "cost path to reach (m, n) from (0, 0) for the given cost matrix cost[][] and a position (m, n) in "
        "cost[][]. Your code should pass these tests:\n\n" + "\n".join(p.tests) + "\n")
    assert p.meta["original_split"] == "prompt"
    remove_occ = next(q for q in mbpp if q.meta["task_id"] == 11)
    assert remove_occ.entry_point == "remove_Occ" and remove_occ.meta["original_split"] == "test"


def test_mbpp_fields_all_rows(mbpp):
    with open(DATA_DIR / "mbpp" / "mbpp.jsonl", encoding="utf-8") as f:
        raw = {r["task_id"]: r for r in map(json.loads, f)}
    for p in mbpp:
        r = raw[p.meta["task_id"]]
        assert p.tests == r["test_list"] and p.test_setup == r["test_setup_code"].replace("\r\n", "\n")
        assert re.search(rf"\b{p.entry_point}\s*\(", p.tests[0]), p.id
        assert re.search(rf"def {p.entry_point}\s*\(", p.reference), p.id
        assert 1 <= p.horizon <= len(p.reference.split("\n")), p.id
        assert all(t in p.prompt for t in p.tests)
    assert sum(bool(p.test_setup) for p in mbpp) == 2


def test_mbpp_reference_passes_its_tests_on_a_sample(mbpp):
    """The wiring (setup, reference, tests) is runnable: the reference passes its own asserts."""
    for p in mbpp[:20]:
        namespace: dict = {}
        exec(p.test_setup + "\n" + p.reference + "\n" + "\n".join(p.tests), namespace)  # noqa: S102
        assert callable(namespace[p.entry_point])


def test_humaneval_fields(humaneval):
    assert [p.id for p in humaneval] == [f"humaneval-{i:03d}" for i in range(164)]
    p = humaneval[0]
    assert p.entry_point == "has_close_elements" and p.tests[1] == "check(has_close_elements)"
    # for, for, if, distance =, if, return True, return False
    assert p.horizon == 7
    for p in humaneval:
        assert p.reference.startswith(p.prompt) and len(p.reference) > len(p.prompt)
        assert p.tests[1] == f"check({p.entry_point})" and "def check(" in p.tests[0]


def test_humaneval_canonical_solutions_pass_on_a_sample(humaneval):
    for p in humaneval[:10]:
        namespace: dict = {}
        exec(p.reference + "\n" + p.tests[0] + "\n" + p.tests[1], namespace)  # noqa: S102


def test_every_problem_serializes_and_round_trips(gsm8k, mbpp, humaneval):
    apps = load_task("apps", path=APPS_FIXTURE, quarantine=None, limit=3)
    for p in (gsm8k[0], mbpp[0], humaneval[0], *apps):
        row = json.loads(json.dumps(p.to_row()))
        assert Problem.from_row(row) == p


def test_ids_unique_and_path_safe(gsm8k, mbpp, humaneval, tmp_path):
    apps = load_task("apps", path=APPS_FIXTURE, quarantine=tmp_path / "q.jsonl")
    ids = [p.id for p in (*gsm8k, *mbpp, *humaneval, *apps)]
    assert len(ids) == len(set(ids))
    assert all(SAFE_ID.match(i) and "/" not in i and not i.startswith(".") for i in ids)


# --- APPS fixture ----------------------------------------------------------------------------


def test_apps_fixture_parsing(tmp_path, caplog):
    quarantine = tmp_path / "apps_bad.jsonl"
    with caplog.at_level(logging.WARNING, logger="cts.tasks.loaders"):
        problems = load_task("apps", path=APPS_FIXTURE, quarantine=quarantine)
    assert [p.id for p in problems] == [f"apps-test-{i:05d}" for i in (0, 1, 2, 3, 5)]
    stdin, call, lines, nosol, py2 = problems
    assert stdin.tests == [{"input": "1 2\n", "output": "3\n"}, {"input": "-5 5\n", "output": "0\n"}]
    assert stdin.entry_point is None and stdin.horizon == 2
    assert stdin.prompt.endswith("Use Standard Input format\nANSWER:\n")
    assert call.entry_point == "add" and call.meta["call_based"]
    assert call.tests == [{"fn_name": "add", "inputs": [1, 2], "outputs": [3]},
                          {"fn_name": "add", "inputs": [3, 4], "outputs": [7]}]
    assert "def add(a, b):" in call.prompt and call.prompt.endswith("Use Call-Based format\nANSWER:\n")
    assert call.horizon == 2  # the docstring and the def line are not steps
    assert lines.tests == [{"input": "3\n1\n7\n2\n", "output": "7"}]  # line lists joined
    assert lines.horizon == 3 and lines.meta["n_solutions"] == 2 and lines.meta["difficulty"] == "competition"
    assert nosol.reference == "" and nosol.horizon == 1 and nosol.meta["n_solutions"] == 0
    assert py2.horizon == 2  # Python 2 source: the line-count fallback
    assert {p.meta["difficulty"] for p in problems} == {"introductory", "competition", "interview"}
    bad = read_jsonl(quarantine)
    assert len(bad) == 1 and bad[0]["where"].endswith("apps_sample.jsonl:5")
    assert "input_output" in bad[0]["reason"] and bad[0]["row"]["problem_id"] == 4
    assert "1 bad row(s) quarantined" in caplog.text


def test_apps_malformed_row_raises_with_file_line_and_field():
    with pytest.raises(DataError, match=r"apps_sample\.jsonl:5: field 'input_output' is not valid JSON"):
        load_task("apps", path=APPS_FIXTURE)


def test_apps_needs_a_path_for_the_repo_source():
    with pytest.raises(ValueError, match="not vendored"):
        load_task("apps")


@pytest.mark.parametrize(
    "input_output, message",
    [
        ('{"inputs": ["1"], "outputs": []}', "1 inputs but 0 outputs"),
        ('{"inputs": [], "outputs": []}', "no test cases"),
        ('{"inputs": "1", "outputs": ["1"]}', "needs a list 'inputs'"),
        ('{"fn_name": "f", "inputs": [1], "outputs": [[1]]}', r"inputs\[0\] of a call-based problem"),
        ('{"fn_name": "not valid", "inputs": [[1]], "outputs": [[1]]}', "fn_name must be a Python identifier"),
        ('{"inputs": [3], "outputs": ["3"]}', r"inputs\[0\] must be a string or a list of strings"),
        ('[1, 2]', "must decode to an object"),
        (None, "must be a JSON string"),
    ],
)
def test_parse_apps_tests_rejects(input_output, message):
    with pytest.raises(DataError, match=message):
        parse_apps_tests(input_output, "f.jsonl:7")


# --- malformed rows, quarantine --------------------------------------------------------------


def _write_gsm8k(folder: Path, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "test.jsonl").write_text(json.dumps({"question": "q?", "answer": "1+1=<<1+1=2>>2\n#### 2"}) + "\n")


BAD_GSM8K = [
    json.dumps({"question": "How many?", "answer": "2*3 = <<2*3=6>>6\n#### 6"}),  # line 1: good
    '{"question": "broken", ',  # line 2: invalid JSON
    json.dumps({"question": "no answer key"}),  # line 3
    json.dumps({"question": "q", "answer": "no final line"}),  # line 4
    json.dumps({"question": "q", "answer": "step\n#### many"}),  # line 5
    json.dumps({"question": "q", "answer": "#### 5"}),  # line 6: no step
]


def test_malformed_row_error_names_file_and_line(tmp_path):
    _write_gsm8k(tmp_path, BAD_GSM8K)
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'train.jsonl'))}:2: invalid JSON"):
        load_task("gsm8k", data_dir=tmp_path)
    _write_gsm8k(tmp_path, [BAD_GSM8K[0], BAD_GSM8K[3]])
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'answer' has no final '#### N' line"):
        load_task("gsm8k", data_dir=tmp_path)
    _write_gsm8k(tmp_path, [BAD_GSM8K[2]])
    with pytest.raises(DataError, match=r"train\.jsonl:1: missing field 'answer'"):
        load_task("gsm8k", data_dir=tmp_path)


def test_quarantine_writes_every_bad_row_with_reason_and_count(tmp_path, caplog):
    _write_gsm8k(tmp_path / "d", BAD_GSM8K)
    quarantine = tmp_path / "bad.jsonl"
    with caplog.at_level(logging.WARNING, logger="cts.tasks.loaders"):
        problems = load_task("gsm8k", data_dir=tmp_path / "d", quarantine=quarantine)
    # the good train row keeps its file position in the id; the test file adds one more
    assert [p.id for p in problems] == ["gsm8k-train-00000", "gsm8k-test-00000"]
    bad = read_jsonl(quarantine)
    assert [b["where"].rsplit(":", 1)[1] for b in bad] == ["2", "3", "4", "5", "6"]
    assert bad[0]["row"] == '{"question": "broken", '  # unparsable lines are kept as text
    assert "missing field 'answer'" in bad[1]["reason"] and bad[1]["row"] == {"question": "no answer key"}
    assert "'many' is not a number" in bad[3]["reason"]
    assert "gsm8k: 5 bad row(s) quarantined" in caplog.text


def test_quarantine_file_is_written_even_when_empty(tmp_path):
    load_task("humaneval", limit=2, quarantine=tmp_path / "none.jsonl")
    assert (tmp_path / "none.jsonl").read_text() == ""


def test_malformed_mbpp_rows_name_the_field(tmp_path):
    good = {"text": "t", "code": "def f(x):\n    return x", "task_id": 1, "test_setup_code": "",
            "test_list": ["assert f(1) == 1"], "challenge_test_list": []}
    rows = [good, {**good, "task_id": 2, "test_list": ["print(1)"]}, {**good, "task_id": 3, "code": "def f(:"},
            {**good, "task_id": "4"}, {**good}]  # the last duplicates task 1
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"mbpp\.jsonl:2: field 'test_list' must be a non-empty list of assert"):
        load_task("mbpp", path=path)
    problems = load_task("mbpp", path=path, quarantine=tmp_path / "q.jsonl")
    assert [p.id for p in problems] == ["mbpp-0001"]
    reasons = [b["reason"] for b in read_jsonl(tmp_path / "q.jsonl")]
    assert "field 'code' does not parse" in reasons[1]
    assert "field 'task_id' must be int" in reasons[2]
    assert "mbpp.jsonl:5: duplicate id 'mbpp-0001' (first at" in reasons[3]


def test_mbpp_sanitized_needs_hf_and_unknown_split_or_option():
    with pytest.raises(ValueError, match="sanitized.*source='hf'"):
        load_task("mbpp", subset="sanitized")
    with pytest.raises(ValueError, match=r"unknown split 'dev'; known splits: \['prompt', 'test', 'validation', 'train'\]"):
        load_task("mbpp", split="dev")
    with pytest.raises(TypeError, match="colour"):
        load_task("gsm8k", colour="red")
    with pytest.raises(ValueError, match="source must be"):
        load_task("gsm8k", source="web")


# --- registry, limit, hf path ----------------------------------------------------------------


def test_unknown_loader_name_lists_known_ones():
    with pytest.raises(LookupError, match=r"unknown task 'gsm9k'; known tasks: \['apps', 'gsm8k', 'humaneval', 'mbpp'"):
        load_task("gsm9k")


def test_register_loader_and_duplicate_names():
    @register_loader("toy_for_test")
    def _toy(*, split, source):
        for i in range(3):
            yield loaders.LoadedRow(f"toy:{i}", {}, Problem(id=f"toy-{i}", task="toy", kind="math",
                                                            prompt="p", reference="r", answer=str(i)))
    try:
        assert [p.answer for p in load_task("toy_for_test", limit=2)] == ["0", "1"]
        with pytest.raises(ValueError, match="already registered"):
            register_loader("toy_for_test")(_toy)
    finally:
        del LOADERS["toy_for_test"]


def test_limit():
    assert [p.id for p in load_task("gsm8k", split="test", limit=3)] == [f"gsm8k-test-{i:05d}" for i in range(3)]
    assert load_task("mbpp", limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_task("mbpp", limit=-1)


def test_hf_source_uses_the_same_conversion(monkeypatch):
    """The hf path with a stand-in `datasets` module (no network in tests)."""
    calls = []

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return [{"question": "Q?", "answer": "3*4=<<3*4=12>>12\n#### 12"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = load_task("gsm8k", source="hf")
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert [(p.id, p.answer, p.horizon) for p in problems] == [("gsm8k-train-00000", "12", 1),
                                                               ("gsm8k-test-00000", "12", 1)]


# --- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, first_line, count",
    [
        ("x = 1\ny = 2\n", 1, 2),
        ("def f(a):\n    '''Doc.'''\n    # comment\n\n    return (a +\n            1)\n", 1, 1),  # multi-line once
        ("import os\n@dec\ndef f():\n    if x:\n        y()\n    else:\n        z()\n", 1, 4),  # import, if, y(), z()
        ("class A:\n    def m(self):\n        return 1\n", 1, 1),
        ("def f():\n    a = 1\n    b = 2\n", 3, 1),  # from line 3 on
        ("print 'py2'\nx = raw_input()\n# c\ndef g():\n", 1, 2),  # unparsable: line fallback
    ],
)
def test_count_code_statements(source, first_line, count):
    assert count_code_statements(source, first_line=first_line) == count


def test_mbpp_entry_point_examples():
    code = "def remove_Occ(s, ch):\n    return s"
    assert mbpp_entry_point(code, 'assert remove_Occ("hello","l") == "heo"') == "remove_Occ"
    assert mbpp_entry_point("def f(x): return x", "assert set(f([1])) == set([1])") == "f"  # not `set`
    assert mbpp_entry_point("x = 1", "assert g(1) == 2") == "g"  # fallback: first call
    with pytest.raises(DataError, match="calls no function"):
        mbpp_entry_point("x = 1", "assert True")
