"""The whole DAG on a tiny config, for real, then Snakemake's incrementality.

One real run (every stage), then dry runs: a second run executes no job; changing one method's
hyperparameter reruns only that method's cells and what depends on them; deleting one eval output
reruns only that eval and the stats. Also: `snakemake --lint` is clean and the DAG renders.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "config_pipeline" / "config.yaml"
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.slow


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _planned_jobs(workdir: Path, *configfiles: Path, target: str = "all") -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run of `target` would execute."""
    out = _snakemake(workdir, "--dry-run", target, "--configfile", *map(str, configfiles))
    return jobs_in_log(out.stdout + out.stderr)


def jobs_in_log(text: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a Snakemake log announces, sorted."""
    jobs, rule = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            if rule is not None:
                jobs.append((rule, ""))
            rule = m.group(1)
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule is not None:
            jobs.append((rule, m.group(1)))
            rule = None
    if rule is not None:
        jobs.append((rule, ""))
    return sorted(jobs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipeline")
    for name in WORKFLOW_FILES:
        os.symlink(REPO / name, wd / name)
    _snakemake(wd, "all", "--configfile", str(CONFIG))
    return wd


def test_full_run_writes_the_table(workdir):
    table = (workdir / "results" / "table.md").read_text()
    assert "B2" in table and "B3" in table


def test_jobs_ran_in_children_of_the_job_server(workdir):
    """resources.job_server is on by default: each job's script ran in a child of one server
    (cts/jobserver.py), and its log says so with that child's CPU-s."""
    logs = [workdir / "logs/train/train_base/synth_math.log", workdir / "logs/train/train_cell/synth_math/B3/seed0.log",
            workdir / "logs/eval/eval_cell/synth_math/B2/seed0.log"]
    for log in logs:
        assert re.search(r"job server: ran in server child \d+, rc 0, [0-9.]+ CPU-s", log.read_text()), log
    assert not list((workdir / ".snakemake").glob("cts-jobserver-*.sock")), "the server outlived its run"
    for path in ("results/power.md", "results/table.json", "results/audit/provenance.json",
                 "results/audit/dag.svg", "results/fingerprint/fingerprints.json",
                 "results/eval/synth_math/B2/seed0/problems.jsonl"):
        assert (workdir / path).stat().st_size > 0, path


def test_second_run_executes_no_job(workdir):
    assert _planned_jobs(workdir, CONFIG) == []
    assert _planned_jobs(workdir, CONFIG, target="results/table.md") == []


def test_changing_one_method_reruns_only_its_cells(workdir, tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("methods_config:\n  B3: {loss: grpo, reward: verifier, verifier_weight: 0.25}\n")
    jobs = _planned_jobs(workdir, CONFIG, override)
    cells = {(r, w) for r, w in jobs if r in ("train_cell", "eval_cell")}
    assert cells == {("train_cell", "task=synth_math, method=B3, seed=0"),
                     ("eval_cell", "task=synth_math, method=B3, seed=0")}, jobs
    assert {r for r, _ in jobs} <= {"train_cell", "eval_cell", "stats_table", "audit_provenance",
                                    "audit_dag", "audit_report_table", "all"}, jobs


def test_deleting_one_eval_reruns_only_that_eval_and_the_stats(workdir):
    target = workdir / "results/eval/synth_math/B2/seed0/problems.jsonl"
    backup = target.read_bytes()
    stat = target.stat()
    target.unlink()
    try:
        jobs = _planned_jobs(workdir, CONFIG)
    finally:
        target.write_bytes(backup)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert {r for r, _ in jobs} - {"all"} == {"eval_cell", "stats_table", "audit_report_table"}, jobs
    assert [w for r, w in jobs if r == "eval_cell"] == ["task=synth_math, method=B2, seed=0"]


def test_lint_is_clean(workdir):
    out = _snakemake(workdir, "--lint", "--configfile", str(CONFIG), check=False)
    text = out.stdout + out.stderr
    assert "Lints for" not in text, text[-3000:]


def _make(workdir: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    """`make <target>` of the repo's Makefile in workdir, with the existing venv (never reinstalled)."""
    venv = REPO / ".venv"
    return subprocess.run(["make", "-f", str(REPO / "Makefile"), "-o", str(venv / ".installed"),
                           f"VENV={venv}", target, *args], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.skipif(shutil.which("dot") is None or shutil.which("make") is None, reason="needs graphviz and make")
def test_make_dag_writes_an_svg_and_fails_instead_of_an_empty_one(workdir, tmp_path):
    out = _make(workdir, "dag", f"CONFIG=--configfile {CONFIG}")
    assert out.returncode == 0, out.stdout + out.stderr
    svg = (workdir / "dag.svg").read_text()
    assert "<svg" in svg and "train_cell" in svg
    (workdir / "dag.svg").unlink()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n")
    out = _make(workdir, "dag", f"CONFIG=--configfile {CONFIG} {bad}")
    assert out.returncode != 0 and "stepz" in out.stderr
    assert not (workdir / "dag.svg").exists()


def test_human_eval_sheet_is_blinded(workdir):
    _snakemake(workdir, "results/human_eval/sheet.csv", "--configfile", str(CONFIG))
    sheet = (workdir / "results/human_eval/sheet.csv").read_text()
    key = (workdir / "results/human_eval/key.csv").read_text()
    header = sheet.splitlines()[0].lower()
    assert "method" not in header and "seed" not in header
    assert "B2" in key and "B3" in key
    assert len(sheet.splitlines()) == len(key.splitlines())  # one blinded row per key row


def test_report_includes_the_figures(workdir):
    _snakemake(workdir, "--report", "results/report.html", "--configfile", str(CONFIG))
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert "Figures" in html and ".png" in html
    # the table, rendered, and a caption per figure naming its metric (report/figures.rst)
    assert "table.html" in html and "Table" in html
    # (one seed here: no Δ has an interval, so no forest plot is drawn — the table warns instead)
    assert "against the horizon H" in html and "Learning curve of synth_math: metric" in html
