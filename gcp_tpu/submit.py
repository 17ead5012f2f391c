#!/usr/bin/env python3
"""cluster-generic submit command: `submit.py JOBSCRIPT` → creates one JobSet, prints its name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cts/ of this checkout
from cts.cloud.executor import submit  # noqa: E402
from cts.cloud.settings import CloudConfigError  # noqa: E402
from cts.io import DataError  # noqa: E402

if len(sys.argv) != 2:
    sys.exit("usage: submit.py JOBSCRIPT")
try:
    print(submit(sys.argv[1]), flush=True)
except (CloudConfigError, DataError, RuntimeError) as e:
    sys.exit(f"gcp_tpu submit: {e}")
