"""What every scripts/*.py adapter does first: pin threads before JAX loads, log to the rule's log."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["stage_logger"]


def stage_logger(smk, jax_threads_cap: int | None = None):
    """Send stdout/stderr to the rule's log file and return a `log(msg)` function.

    Pins the process to `jax_threads` CPUs of its own (params.jax_threads; 1 for rules without
    JAX), so XLA sizes its thread pool to them; must run before anything imports JAX.
    """
    from cts.train.runtime import limit_threads

    n = limit_threads(jax_threads_cap or int(smk.params.get("jax_threads", 0) or 1))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if smk.log:
        f = open(smk.log[0], "a", buffering=1)
        sys.stdout = sys.stderr = f
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    log(f"rule {smk.rule}: {n} thread(s)")
    return log
