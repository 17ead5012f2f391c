#!/usr/bin/env python3
"""cluster-generic status command: `status.py JOB_ID` → prints running, success or failed."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cts.cloud.executor import status  # noqa: E402
from cts.cloud.settings import CloudConfigError  # noqa: E402

if len(sys.argv) != 2:
    sys.exit("usage: status.py JOB_ID")
try:
    print(status(sys.argv[1]), flush=True)
except (CloudConfigError, RuntimeError) as e:
    sys.exit(f"gcp_tpu status: {e}")
