"""Per-stage, per-job CPU-second cost of a config's DAG (issue 16's cost table), run on demand.

Runs `snakemake --cores N <targets>` for the given config(s) in a fresh working directory (the
workflow files symlinked in, as the pipeline tests do: nothing of this checkout's results/ or work/
is read or written), then builds the table from two sources per job:
- Snakemake's benchmark files (benchmarks/**.tsv; `s` and `cpu_time`, sampled by psutil every 1 s,
  then every 30 s, so a job's last seconds can go uncounted), and
- an exact at-exit record of each job process (bench/_jobcost/sitecustomize.py: getrusage of the job
  process and every child it reaped), plus the Snakemake scheduler's own CPU.
The whole run's CPU is getrusage(RUSAGE_CHILDREN) of this process around the snakemake call.

    .venv/bin/python bench/bench_pipeline.py --configfile tests/config_tiny/config.yaml \\
        --target results/table.md --cores 2 --out bench/results/pipeline_tiny.md
    # the embedded default (~1 h on 2 cores; a slice: --target results/base/synth_math/final.json):
    nice .venv/bin/python bench/bench_pipeline.py --cores 2 --out bench/results/pipeline_default.md

Pass further snakemake arguments after `--` (e.g. `-- --until train_base`). Writes a markdown report
(stage table, per-job table) to --out and to stdout; --keep keeps the working directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "schemas", "workflow_config.yaml", "report")
JOBCOST = Path(__file__).resolve().parent / "_jobcost"

# the stage rows, in its order
STAGES = ("train_base", "GRPO cells B2–B4", "GRPO cells B5 + ablations", "SFT/DPO cells", "eval",
          "rollouts, small jobs", "job server (imports, once)")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def merged_config(configfiles: list[Path]) -> dict:
    """workflow_config.yaml with each --configfile merged over it, as Snakemake merges them."""
    import yaml
    from snakemake.utils import update_config

    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for path in configfiles:
        update_config(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return cfg


def stage_of(rule: str, wildcards: dict, cfg: dict) -> str:
    """The issue's stage of one job: train_cell by its method's loss (B5 and its ablations apart)."""
    if rule == "train_base":
        return "train_base"
    if rule == "(job server)":  # resources.job_server: the server process's own CPU (cts/jobserver.py)
        return "job server (imports, once)"
    if rule == "eval_cell":
        return "eval"
    if rule == "train_cell":
        method = wildcards.get("method", "")
        block = cfg.get("methods_config", {}).get(method.split("-")[0], {})
        if block.get("loss") == "grpo":
            return "GRPO cells B5 + ablations" if block.get("cts") else "GRPO cells B2–B4"
        return "SFT/DPO cells"
    return "rollouts, small jobs"


def read_benchmarks(workdir: Path) -> dict[tuple[str, str], dict]:
    """(rule, wildcard path) → the benchmark file's row (`s`, `cpu_time`, `max_rss`; floats or None)."""
    out = {}
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        parts = path.relative_to(workdir / "benchmarks").with_suffix("").parts  # group/rule/wildcards...
        rule, key = parts[1], "/".join(parts[2:])
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue

        def num(v):
            try:
                return float(v)
            except (TypeError, ValueError):
                return None

        out[(rule, key)] = {k: num(rows[-1].get(k)) for k in ("s", "cpu_time", "max_rss")}
    return out


def read_joblog(joblog: Path) -> tuple[list[dict], float]:
    """The at-exit records of job processes, and the Snakemake scheduler's own CPU-seconds."""
    jobs, scheduler = [], 0.0
    for path in joblog.glob("*.json"):
        row = json.loads(path.read_text())
        if row["rule"] == "(snakemake)":
            scheduler += row["cpu_self_s"]
        else:
            jobs.append(row)
    return jobs, scheduler


def wildcard_key(wildcards: dict) -> tuple[str, ...]:
    """A job's wildcard values, as the benchmark path names them (rules/*.smk: `{task}/{method}/seed{seed}`;
    a job without wildcards writes all.tsv), order-free."""
    return tuple(sorted(str(v) for v in wildcards.values())) or ("all",)


def _bench_key(key: str) -> tuple[str, ...]:
    return tuple(sorted(re.sub(r"^seed(\d+)$", r"\1", part) for part in key.split("/")))


def build_rows(workdir: Path, joblog: Path, cfg: dict) -> tuple[list[dict], float]:
    bench = read_benchmarks(workdir)
    jobs, scheduler = read_joblog(joblog)
    by_key = {(rule, _bench_key(key)): (key, b) for (rule, key), b in bench.items()}
    rows, seen = [], set()
    for job in jobs:
        key = (job["rule"], wildcard_key(job["wildcards"]))
        name, b = by_key.get(key, ("/".join(map(str, job["wildcards"].values())) or "all", {}))
        seen.add(key)
        rows.append({"rule": job["rule"], "job": name, "stage": stage_of(job["rule"], job["wildcards"], cfg),
                     "wall_s": job["wall_s"], "cpu_s": job["cpu_self_s"] + job["cpu_children_s"],
                     "bench_s": b.get("s"), "bench_cpu_s": b.get("cpu_time"), "max_rss_mb": job["max_rss_mb"]})
    for (rule, key), b in bench.items():  # a job with a benchmark but no record (killed, not Python)
        if (rule, _bench_key(key)) not in seen:
            wildcards = dict(zip(("task", "method", "seed"), key.split("/"))) if key != "all" else {}
            rows.append({"rule": rule, "job": key, "stage": stage_of(rule, wildcards, cfg), "wall_s": b["s"],
                         "cpu_s": None, "bench_s": b["s"], "bench_cpu_s": b["cpu_time"], "max_rss_mb": b["max_rss"]})
    return sorted(rows, key=lambda r: (STAGES.index(r["stage"]), r["rule"], r["job"])), scheduler


def _f(x, fmt="{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def report(rows: list[dict], scheduler: float, meta: dict) -> str:
    lines = [f"# Pipeline cost: {meta['configs']}", "",
             f"`{meta['command']}`", "",
             f"- {meta['when']}, {os.cpu_count()} CPUs here, `--cores {meta['cores']}`; load average "
             f"{meta['load_before']} before, {meta['load_after']} after",
             f"- wall {meta['wall_s']:.0f} s; CPU of the whole run {meta['cpu_total_s']:.0f} s "
             f"(jobs {sum(r['cpu_s'] or 0 for r in rows):.0f}, the Snakemake scheduler {scheduler:.0f}); "
             f"{len(rows)} jobs; snakemake exit status {meta['rc']}",
             "- CPU-s: exact (getrusage at each job process's exit, children included); `bench` = "
             "Snakemake's benchmark file (sampled; with resources.job_server it sees only a job's client "
             "process, not the server child that did the work)", "",
             "| stage | per job CPU-s (mean; min–max) | jobs | total CPU-s | total bench CPU-s | total wall-s |",
             "|---|---|---|---|---|---|"]
    by_stage = defaultdict(list)
    for r in rows:
        by_stage[r["stage"]].append(r)
    grand = [0.0, 0.0, 0.0]
    for stage in STAGES:
        rs = by_stage.get(stage, [])
        if not rs:
            continue
        cpu = [r["cpu_s"] for r in rs if r["cpu_s"] is not None]
        tot = (sum(cpu), sum(r["bench_cpu_s"] or 0 for r in rs), sum(r["wall_s"] or 0 for r in rs))
        grand = [g + t for g, t in zip(grand, tot)]
        per = f"{sum(cpu) / len(cpu):.1f}; {min(cpu):.1f}–{max(cpu):.1f}" if cpu else "–"
        lines.append(f"| {stage} | {per} | {len(rs)} | {tot[0]:.0f} | {tot[1]:.0f} | {tot[2]:.0f} |")
    lines += [f"| **all jobs** | | {len(rows)} | {grand[0]:.0f} | {grand[1]:.0f} | {grand[2]:.0f} |", "",
              "## Per job", "",
              "| stage | rule | job | CPU-s | bench CPU-s | wall-s | bench s | max RSS MB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['rule']} | {r['job']} | {_f(r['cpu_s'])} | {_f(r['bench_cpu_s'])} | "
                     f"{_f(r['wall_s'])} | {_f(r['bench_s'])} | {_f(r['max_rss_mb'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", action="append", default=[], type=Path,
                    help="config file(s) merged over workflow_config.yaml (none: the embedded default)")
    ap.add_argument("--target", action="append", default=[], help="snakemake targets (default results/table.md)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="working directory (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--out", type=Path, help="write the markdown report here too")
    args = ap.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        if not (workdir / name).exists():
            os.symlink(REPO / name, workdir / name)
    joblog = workdir / ".bench_joblog"
    shutil.rmtree(joblog, ignore_errors=True)
    joblog.mkdir()
    configs = [p.resolve() for p in args.configfile]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *(args.target or ["results/table.md"])]
    if configs:
        cmd += ["--configfile", *map(str, configs)]
    cmd += extra
    env = {**os.environ, "CTS_BENCH_JOBLOG": str(joblog), "CTS_BENCH_PARENT": str(os.getpid()),
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "PYTHONPATH": os.pathsep.join([str(JOBCOST), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall, cpu_total = time.perf_counter() - t0, _children_cpu() - cpu0
    (workdir / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
    rows, scheduler = build_rows(workdir, joblog, merged_config(configs))
    meta = {"configs": ", ".join(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in configs)
            or "workflow_config.yaml (the embedded default)",
            "command": " ".join(re.sub(r"^.*/python[0-9.]*$", "python", c) for c in cmd),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": args.cores,
            "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "wall_s": wall, "cpu_total_s": cpu_total, "rc": proc.returncode}
    text = report(rows, scheduler, meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text)
    if args.keep or args.workdir:
        print(f"working directory: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
