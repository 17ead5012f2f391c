"""cts.train.runtime.limit_threads: each concurrent JAX job takes a CPU slot of its own, and a job that
finds every slot taken (another pipeline holds them) is left to the OS scheduler instead of piling
onto CPU 0."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs")

PIN = ("import os, sys\n"
       "from cts.train.runtime import limit_threads\n"
       "limit_threads(1, slot_dir=sys.argv[1])\n"
       "print(sorted(os.sched_getaffinity(0)), flush=True)\n"
       "sys.stdin.read()\n")  # holds its slot until the test closes stdin


def _start(slot_dir):
    p = subprocess.Popen([sys.executable, "-c", PIN, str(slot_dir)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return p, eval(p.stdout.readline())


def test_concurrent_jobs_get_disjoint_cpus_and_one_without_a_free_slot_is_not_pinned(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    held = [_start(tmp_path) for _ in cpus]  # one job per CPU: every slot taken
    try:
        pinned = [aff for _, aff in held]
        assert all(len(a) == 1 for a in pinned) and sorted(a[0] for a in pinned) == cpus
        held.append(_start(tmp_path))
        assert held[-1][1] == cpus  # not pinned to CPU 0 next to the job that holds it
    finally:
        for p, _ in held:
            p.communicate("")
