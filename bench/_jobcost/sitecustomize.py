"""Per-process CPU accounting for bench/bench_pipeline.py (imported by every Python process started
with this directory on PYTHONPATH and CTS_BENCH_JOBLOG set; a no-op otherwise).

At exit, a Snakemake job process (a `script:` job: its __main__ holds the `snakemake` object) writes
one JSON line with its rule, wildcards and exact CPU-seconds (its own + every child it reaped, e.g.
the code sandbox, or the job server's child that ran the job for it); the Snakemake scheduler (the
child of the process named by CTS_BENCH_PARENT) writes its own CPU as rule "(snakemake)", the job
server (cts/jobserver.py) its own as "(job server)".
Snakemake's benchmark files sample the process tree (every 1 s, then every 30 s), so they miss the
tail of a job after the last sample; these records do not.
"""

import os

if os.environ.get("CTS_BENCH_JOBLOG"):
    import atexit
    import json
    import resource
    import sys
    import time

    _t0 = time.time()

    def _record() -> None:
        try:
            main = sys.modules.get("__main__")
            smk = getattr(main, "snakemake", None)
            if smk is not None and hasattr(smk, "rule"):
                rule, wildcards = smk.rule, dict(smk.wildcards.items())
            elif getattr(getattr(main, "__spec__", None), "name", None) == "cts.jobserver":
                rule, wildcards = "(job server)", {}  # its imports, paid once; its children are jobs
            elif str(os.getppid()) == os.environ.get("CTS_BENCH_PARENT"):
                # the scheduler itself (a snakemake a job starts, e.g. audit_dag's, is in that job's children)
                rule, wildcards = "(snakemake)", {}
            else:
                return
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            # A job run by the job server (cts/jobserver.py) did its work in a child of the server:
            # this process is its client, and that child's CPU-s count as this job's children.
            served = float(getattr(sys.modules.get("cts.jobserver"), "served_cpu_s", 0.0))
            # the server's children are jobs, already in their clients' records
            children = 0.0 if rule == "(job server)" else kids.ru_utime + kids.ru_stime + served
            row = {"rule": rule, "wildcards": wildcards, "pid": os.getpid(), "wall_s": time.time() - _t0,
                   "cpu_self_s": me.ru_utime + me.ru_stime, "cpu_children_s": children,
                   "cpu_job_server_s": served, "max_rss_mb": me.ru_maxrss / 1024}
            with open(os.path.join(os.environ["CTS_BENCH_JOBLOG"], f"{os.getpid()}.json"), "w") as f:
                json.dump(row, f)
        except Exception:  # accounting must never change a job's outcome
            pass

    atexit.register(_record)
