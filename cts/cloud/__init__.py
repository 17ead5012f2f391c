"""Running pipeline jobs as JobSets on a GKE cluster (JobSet + Kueue) through Snakemake's
cluster-generic executor.

The `gcp_tpu/` profile's submit/status/cancel scripts are thin wrappers over `cts.cloud.executor`;
the manifest is rendered by `cts.cloud.jobset`, settings are validated in `cts.cloud.settings`.
The `kubernetes` client is imported only for real API calls (dry runs need no credentials).
"""

from cts.cloud.executor import cancel, make_job_name, parse_jobscript, status, submit
from cts.cloud.jobset import JobSpec, render_jobset
from cts.cloud.settings import CloudConfigError, ClusterSettings

__all__ = ["CloudConfigError", "ClusterSettings", "JobSpec", "cancel", "make_job_name", "parse_jobscript",
           "render_jobset", "status", "submit"]
