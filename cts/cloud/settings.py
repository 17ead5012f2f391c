"""Validated settings of the `gcp_tpu` Snakemake profile (a GKE cluster with JobSet + Kueue).

Every value that reaches a manifest or an API call is checked here against a strict pattern first;
a value that does not match raises `CloudConfigError` naming the environment variable it came from.
Nothing is ever passed through a shell: the API client takes structured objects, and the
container runs the jobscript as one argv element (`bash -c <jobscript>`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

# the manifest's own patterns and checks; CloudConfigError lives there too (jobset is the lower
# module: it validates what it renders without knowing about settings) and is re-exported here
from cts.cloud.jobset import BUCKET_RE, QUEUE_RE, CloudConfigError, tpu_shape, validate_image

__all__ = ["CloudConfigError", "ClusterSettings", "dry_run", "validate_run_name"]

RUN_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
API_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$")
# An obviously fake image for dry runs without CTS_IMAGE: the manifest still validates and prints.
DRY_RUN_IMAGE = "example.invalid/cts/cts@sha256:" + "0" * 64
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def _check(value: str, pattern: re.Pattern, what: str, example: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise CloudConfigError(f"{what}: {value!r} is not valid (expected something like {example!r})")
    return value


def validate_run_name(run: str, what: str = "CTS_RUN_NAME") -> str:
    return _check(run, RUN_NAME_RE, what, "cts")


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = str(env.get(key, "")).strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise CloudConfigError(f"{key}: {env[key]!r} is not a boolean (use 1/0, true/false)")


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise CloudConfigError(f"{key}: {raw!r} is not an integer") from None


def dry_run(env: Mapping[str, str] | None = None) -> bool:
    """DRY_RUN=1: print manifests, call no API (and need no credentials)."""
    return _flag(os.environ if env is None else env, "DRY_RUN")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and on what each job runs (environment variables of the submitting shell).

    Attributes:
      image: the job image pinned by digest (CTS_IMAGE; required unless DRY_RUN).
      namespace: Kubernetes namespace of the JobSets (CTS_K8S_NAMESPACE, default `default`).
      queue: Kueue LocalQueue (CTS_KUEUE_QUEUE, default xpk's `multislice-queue`).
      tpu_type: default slice type (CTS_TPU_TYPE, default v6e-4); a rule overrides it with
        `resources: tpu_type=...`, and likewise tpu_slices / tpu_spot.
      slices, spot: defaults for the number of slices (CTS_TPU_SLICES) and Spot (CTS_TPU_SPOT).
      max_restarts: JobSet failurePolicy.maxRestarts (CTS_MAX_RESTARTS, default 3): preemptions
        restart the pods in place; only a JobSet that exhausts them reports `failed`.
      run_name: prefix of every JobSet name (CTS_RUN_NAME, default cts).
      gcsfuse_bucket: mount this bucket at /gcs in every pod (CTS_GCSFUSE_BUCKET): where
        paths.checkpoints must point (cts.cloud.state); service_account: the pods' Kubernetes
        service account with write access to it (CTS_K8S_SERVICE_ACCOUNT, Workload Identity).
      api_url: talk to this API server without credentials (CTS_K8S_API: `kubectl proxy` or a
        test server); otherwise the current kubeconfig context (CTS_K8S_CONTEXT to pick one).
    """

    image: str
    namespace: str = "default"
    queue: str = "multislice-queue"
    tpu_type: str = "v6e-4"
    slices: int = 1
    spot: bool = False
    max_restarts: int = 3
    run_name: str = "cts"
    api_url: str | None = None
    context: str | None = None
    gcsfuse_bucket: str | None = None
    service_account: str | None = None

    def __post_init__(self):
        validate_image(self.image)
        _check(self.queue, QUEUE_RE, "CTS_KUEUE_QUEUE", "multislice-queue")
        if not 1 <= self.slices <= 64:
            raise CloudConfigError(f"CTS_TPU_SLICES: {self.slices} is not in 1..64")
        if not 0 <= self.max_restarts <= 100:
            raise CloudConfigError(f"CTS_MAX_RESTARTS: {self.max_restarts} is not in 0..100")
        _check(self.namespace, NAMESPACE_RE, "CTS_K8S_NAMESPACE", "default")
        tpu_shape(self.tpu_type, "CTS_TPU_TYPE")
        validate_run_name(self.run_name)
        if self.api_url is not None:
            _check(self.api_url, API_URL_RE, "CTS_K8S_API", "http://127.0.0.1:8001")
        if self.gcsfuse_bucket is not None and not BUCKET_RE.match(self.gcsfuse_bucket):
            raise CloudConfigError(f"CTS_GCSFUSE_BUCKET: {self.gcsfuse_bucket!r} is not a bucket name")
        if self.service_account is not None:
            _check(self.service_account, QUEUE_RE, "CTS_K8S_SERVICE_ACCOUNT", "cts-runner")
        if self.context is not None:
            _check(self.context, re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$"), "CTS_K8S_CONTEXT",
                   "gke_my-proj_us-east5_cts")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ClusterSettings":
        env = os.environ if env is None else env
        image = env.get("CTS_IMAGE") or ""
        if not image:
            if not dry_run(env):
                raise CloudConfigError("CTS_IMAGE must be set for the gcp_tpu profile (the job image "
                                       "pinned by digest; gcp_tpu/README.md: Build the image)")
            image = DRY_RUN_IMAGE
        d = cls.__dataclass_fields__
        return cls(
            image=image,
            namespace=env.get("CTS_K8S_NAMESPACE") or d["namespace"].default,
            queue=env.get("CTS_KUEUE_QUEUE") or d["queue"].default,
            tpu_type=env.get("CTS_TPU_TYPE") or d["tpu_type"].default,
            slices=_int(env, "CTS_TPU_SLICES", d["slices"].default),
            spot=_flag(env, "CTS_TPU_SPOT"),
            max_restarts=_int(env, "CTS_MAX_RESTARTS", d["max_restarts"].default),
            run_name=env.get("CTS_RUN_NAME") or d["run_name"].default,
            api_url=env.get("CTS_K8S_API") or None,
            context=env.get("CTS_K8S_CONTEXT") or None,
            gcsfuse_bucket=env.get("CTS_GCSFUSE_BUCKET") or None,
            service_account=env.get("CTS_K8S_SERVICE_ACCOUNT") or None,
        )

    def to_dict(self) -> dict:
        return asdict(self)
