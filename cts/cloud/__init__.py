"""Running pipeline jobs on Cloud TPU VMs through Snakemake's cluster-generic executor.

The `gcp_tpu/` profile's submit/status/cancel scripts are thin wrappers over `cts.cloud.jobs`;
settings and name validation live in `cts.cloud.settings`, the gcloud argv in `cts.cloud.gcloud`.
Standard library only, so the scripts run under any Python ≥ 3.9 that can import this package.
"""

from cts.cloud.jobs import cancel, make_vm_name, parse_jobscript, run_job, status, submit
from cts.cloud.settings import CloudConfigError, TpuSettings

__all__ = ["CloudConfigError", "TpuSettings", "cancel", "make_vm_name", "parse_jobscript",
           "run_job", "status", "submit"]
