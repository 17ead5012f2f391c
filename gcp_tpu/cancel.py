#!/usr/bin/env python3
"""cluster-generic cancel command: `cancel.py JOB_ID...` → stops each job and deletes its VM."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cts.cloud.jobs import cancel  # noqa: E402
from cts.cloud.settings import CloudConfigError  # noqa: E402
from cts.io import DataError  # noqa: E402

try:
    for line in cancel(sys.argv[1:]):
        print(line, file=sys.stderr)
except (CloudConfigError, DataError, RuntimeError) as e:
    sys.exit(f"gcp_tpu cancel: {e}")
