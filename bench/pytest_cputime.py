"""pytest plugin: per-test CPU-seconds (this process + every reaped child process), for sizing `make test`.

Wall-clock `--durations` lies on a shared machine; CPU-seconds do not (to within scheduler noise).
Use: `python -m pytest -p bench.pytest_cputime -m "not heavy" tests/...`; writes one line per test to
$CTS_CPUTIME_OUT (default cputime.tsv): nodeid, wall s, CPU s (self + children), outcome.
Fixture set-up cost lands on the first test that requests the fixture (pytest runs it in that test's setup).
"""

import os
import resource
import time

_rows = []
_start = {}


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def pytest_runtest_logstart(nodeid, location):
    _start[nodeid] = (time.perf_counter(), _cpu())


def pytest_runtest_logfinish(nodeid, location):
    t0, c0 = _start.pop(nodeid)
    _rows.append((nodeid, time.perf_counter() - t0, _cpu() - c0))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CTS_CPUTIME_OUT", "cputime.tsv")
    with open(path + ".tmp", "w") as f:
        for nodeid, wall, cpu in _rows:
            f.write(f"{nodeid}\t{wall:.2f}\t{cpu:.2f}\n")
    os.replace(path + ".tmp", path)


def pytest_terminal_summary(terminalreporter):
    rows = sorted(_rows, key=lambda r: -r[2])[:40]
    terminalreporter.write_line(f"CPU-seconds (self + children) of the {len(rows)} costliest tests:")
    for nodeid, wall, cpu in rows:
        terminalreporter.write_line(f"{cpu:8.1f} cpu {wall:8.1f} wall  {nodeid}")
    total = sum(r[2] for r in _rows)
    wall = sum(r[1] for r in _rows)
    terminalreporter.write_line(f"total {total:.1f} CPU-s, {wall:.1f} wall-s over {len(_rows)} tests")
