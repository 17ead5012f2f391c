"""bench/bench_pipeline.py's bookkeeping (the run itself is on demand): jobs go to the issue-16
stage rows by rule and method loss, and each job's exact at-exit record joins its benchmark file."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_pipeline as bp  # noqa: E402

TINY = REPO / "tests" / "config_tiny" / "config.yaml"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_stages_follow_rule_and_method_loss():
    cfg = bp.merged_config([TINY])
    stage = {m: bp.stage_of("train_cell", {"task": "synth_math", "method": m, "seed": "0"}, cfg)
             for m in ("B0", "B1", "B2", "B3", "B4", "B5", "B5-A2")}
    assert stage == {"B0": "SFT/DPO cells", "B1": "SFT/DPO cells", "B2": "GRPO cells B2–B4",
                     "B3": "GRPO cells B2–B4", "B4": "GRPO cells B2–B4", "B5": "GRPO cells B5 + ablations",
                     "B5-A2": "GRPO cells B5 + ablations"}
    assert bp.stage_of("train_base", {"task": "synth_math"}, cfg) == "train_base"
    assert bp.stage_of("eval_cell", {"task": "synth_math", "method": "base", "seed": "0"}, cfg) == "eval"
    assert bp.stage_of("teacher_rollouts", {"task": "synth_math"}, cfg) == "rollouts, small jobs"
    assert bp.stage_of("(job server)", {}, cfg) == "job server (imports, once)"  # resources.job_server


def test_records_join_benchmark_files_and_the_scheduler_is_apart(tmp_path):
    def bench(rel, s, cpu):
        p = tmp_path / "benchmarks" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(HEADER + f"{s}\t0:00:{int(s):02d}\t500\t0\t0\t0\t0\t0\t50\t{cpu}\n")

    bench("train/train_cell/synth_math/B5-A2/seed1.tsv", 30.0, 25.0)
    bench("stats/stats_table/all.tsv", 4.0, 3.0)
    bench("eval/eval_cell/synth_math/B2/seed0.tsv", 9.0, 8.0)  # no record: e.g. a killed job
    log = tmp_path / "joblog"
    log.mkdir()
    records = [("train_cell", {"task": "synth_math", "method": "B5-A2", "seed": "1"}, 27.5),
               ("stats_table", {}, 3.5), ("(snakemake)", {}, 6.0)]
    for i, (rule, wc, cpu) in enumerate(records):
        row = {"rule": rule, "wildcards": wc, "wall_s": 31.0, "cpu_self_s": cpu - 0.5, "cpu_children_s": 0.5,
               "max_rss_mb": 512.0}
        (log / f"{i}.json").write_text(json.dumps(row))
    rows, scheduler = bp.build_rows(tmp_path, log, bp.merged_config([TINY]))
    assert scheduler == 5.5
    got = {(r["rule"], r["job"]): (r["stage"], r["cpu_s"], r["bench_cpu_s"]) for r in rows}
    assert got == {("train_cell", "synth_math/B5-A2/seed1"): ("GRPO cells B5 + ablations", 27.5, 25.0),
                   ("stats_table", "all"): ("rollouts, small jobs", 3.5, 3.0),
                   ("eval_cell", "synth_math/B2/seed0"): ("eval", None, 8.0)}
    text = bp.report(rows, scheduler, {"configs": "tiny", "command": "snakemake", "when": "now", "cores": 2,
                                       "load_before": "0", "load_after": "0", "wall_s": 40.0, "cpu_total_s": 45.0,
                                       "rc": 0})
    assert "| GRPO cells B5 + ablations | 27.5; 27.5–27.5 | 1 | 28 | 25 | 31 |" in text
    assert "| eval | – | 1 | 0 | 8 | 9 |" in text
