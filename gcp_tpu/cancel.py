#!/usr/bin/env python3
"""cluster-generic cancel command: `cancel.py JOB_ID...` → deletes each JobSet (and its pods)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cts.cloud.executor import cancel  # noqa: E402
from cts.cloud.settings import CloudConfigError  # noqa: E402

try:
    for line in cancel(sys.argv[1:]):
        print(line, file=sys.stderr)
except (CloudConfigError, RuntimeError) as e:
    sys.exit(f"gcp_tpu cancel: {e}")
