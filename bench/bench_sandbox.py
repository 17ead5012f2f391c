"""Sandbox throughput: programs/second per isolation level and worker count.

    .venv/bin/python bench/bench_sandbox.py [--trivial N] [--mbpp N]

Two workloads: a trivial program (`print(sum(range(1000)))`, i.e. pure launch overhead), and
verifying MBPP reference solutions (harness + solution + the asserts, one process each).
Every available level is measured; when "rlimits" is unavailable only because the sandbox uid
cannot reach this interpreter (root, interpreter under /root), it is also measured with the
system interpreter, labelled as such.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cts.verifiers.sandbox as sb  # noqa: E402
from cts.tasks.schema import Problem  # noqa: E402
from cts.verifiers.code import verify_many  # noqa: E402

MBPP = Path("/work/shared/data/mbpp/mbpp.jsonl")
SYSTEM_PYTHON = "/usr/bin/python3"


def mbpp_items(n: int) -> list[tuple[Problem, str]]:
    rows = [json.loads(line) for line in MBPP.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(len(rows) // n, 1)
    return [(Problem(id=f"mbpp-{r['task_id']}", task="mbpp", kind="code", prompt=r["text"],
                     reference=r["code"], tests=r["test_list"], test_setup=r["test_setup_code"]),
             r["code"]) for r in rows[::step][:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trivial", type=int, default=40, help="trivial programs per cell")
    ap.add_argument("--mbpp", type=int, default=60, help="MBPP references per cell")
    args = ap.parse_args()

    configs = [(lvl, None) for lvl in sb.available_levels()]
    if "rlimits" not in dict(configs) and os.path.exists(SYSTEM_PYTHON):
        os.environ[sb._ENV_PYTHON] = SYSTEM_PYTHON
        if sb._probe("rlimits")[0]:
            configs.append(("rlimits", SYSTEM_PYTHON))
        del os.environ[sb._ENV_PYTHON]
    items = mbpp_items(args.mbpp) if MBPP.exists() else []

    print(f"{'level':<28} {'workers':>7} {'trivial prog/s':>15} {'MBPP verif/s':>13} {'MBPP pass':>10}")
    for level, python in configs:
        if python:
            os.environ[sb._ENV_PYTHON] = python
        label = level + (f" ({python})" if python else "")
        for workers in (1, 2):
            t = time.perf_counter()
            rs = sb.run_many(["print(sum(range(1000)))"] * args.trivial, workers=workers,
                             isolation=level)
            trivial_rate = len(rs) / (time.perf_counter() - t)
            assert all(r.stdout == "499500\n" for r in rs), [r for r in rs if r.stdout != "499500\n"][:1]
            mbpp_rate, passed = float("nan"), "-"
            if items:
                t = time.perf_counter()
                vs = verify_many(items, workers=workers, isolation=level)
                mbpp_rate = len(vs) / (time.perf_counter() - t)
                passed = f"{sum(v.all_passed for v in vs)}/{len(vs)}"
            print(f"{label:<28} {workers:>7} {trivial_rate:>15.1f} {mbpp_rate:>13.1f} {passed:>10}")
        os.environ.pop(sb._ENV_PYTHON, None)
    print(f"\n{os.cpu_count()} CPUs; trivial={args.trivial}, mbpp={len(items)} per cell")


if __name__ == "__main__":
    main()
