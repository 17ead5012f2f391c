#!/usr/bin/env python3
"""A credential-free dry run: `gcp_tpu/plan.py TARGETS... [--configfile F ...]` prints each job's
JobSet manifest (or "localrule") and the gs:// URI of each output, touching nothing in GCP."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cts.cloud.plan import plan  # noqa: E402
from cts.cloud.settings import CloudConfigError  # noqa: E402

try:
    plan(sys.argv[1:], project=Path.cwd(), profile=ROOT / "gcp_tpu")
except (CloudConfigError, RuntimeError) as e:
    sys.exit(f"gcp_tpu plan: {e}")
