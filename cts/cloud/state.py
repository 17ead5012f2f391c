"""Where state that is not a Snakemake output must live when jobs share no filesystem.

Under the gcp_tpu profile (`shared-fs-usage: none`) every job runs in its own pod; a later job
finds earlier weights only through `final.json` → `params_dir`, so `paths.checkpoints` must be a
location every pod and this machine see: a bucket mounted at the same absolute path everywhere
(GKE's Cloud Storage FUSE CSI driver, CTS_GCSFUSE_BUCKET) or a `gs://` URI once the checkpoint
code reads them (issue 18). A relative path would be the pod's own disk, lost with the pod
(tests/test_gcp_tpu_profile.py shows the run failing with "no parameters at …").
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_state_paths"]


def check_state_paths(config: dict, shared_fs_usage: Iterable) -> None:
    """Raise ValueError naming `paths.checkpoints` when jobs share no filesystem and it is relative."""
    shared = {str(getattr(u, "name", u)).lower().replace("-", "_") for u in shared_fs_usage}
    if "persistence" in shared or "input_output" in shared:
        return  # one filesystem: a relative path is the same directory for every job
    root = str((config.get("paths") or {}).get("checkpoints", "work/checkpoints"))
    if not (root.startswith("/") or "://" in root):
        raise ValueError(
            f"paths.checkpoints: {root!r} is relative, but jobs share no filesystem (shared-fs-usage: none, "
            "the gcp_tpu profile): each pod would keep the weights on its own disk and the next job would "
            "not find them. Set it to the bucket mount every pod has (e.g. /gcs/cts/checkpoints with "
            "CTS_GCSFUSE_BUCKET; gcp_tpu/README.md)")
