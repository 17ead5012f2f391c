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
    if smk.params.get("compile_cache"):  # paths.compile_cache, read by cts.model.policy.maxtext_config
        os.environ["CTS_JAX_CACHE_DIR"] = os.path.abspath(smk.params.get("compile_cache"))
    quiet = _quiet_third_party()
    if smk.log:
        f = open(smk.log[0], "a", buffering=1)
        sys.stdout = sys.stderr = f
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    log(f"rule {smk.rule}: {n} thread(s)"
        + ("; third-party warnings off (CTS_THIRD_PARTY_LOGS=1 shows them)" if quiet else ""))
    from cts.distributed import initialize

    initialize(log)  # several hosts (a JobSet pod per host): jax.distributed before any device use
    return log


def _quiet_third_party() -> bool:
    """Keep the job log to the job's own lines: transformers' "PyTorch was not found" and config
    notes, MaxText's "no config file" and absl INFO lines say nothing about the run (each import
    repeats them), nor do deprecation notices from inside flax/optax. Errors still show, and so
    does every warning raised by cts itself."""
    if os.environ.get("CTS_THIRD_PARTY_LOGS") == "1":
        return False
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("maxtext", "MaxText", "absl", "transformers", "jax._src.xla_bridge", "orbax", "tunix"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!cts\b)")
    return True
