"""One JobSet per Snakemake job: the manifest a GKE cluster with JobSet + Kueue runs (xpk's shape).

`render_jobset(spec)` returns the manifest as a plain dict; its structure follows what
`xpk workload create --dry-run --output-manifest-file` writes for the same TPU type, slice count and
Spot setting (tests/fixtures/xpk/*.yaml, compared in tests/test_gcp_tpu_profile.py):

  metadata.labels   kueue.x-k8s.io/queue-name  Kueue admits the JobSet when the quota (chips) is free,
                                               so a stockout waits in the queue instead of failing
  spec.failurePolicy.maxRestarts               a preempted or failed pod restarts the whole JobSet
                                               (all slices); the job resumes from its GCS checkpoint
  replicatedJobs[0].replicas                   slices (multislice: one Job per slice)
  template.spec.parallelism = completions      hosts (TPU VMs) per slice, one pod per host
  nodeSelector gke-tpu-accelerator / topology  the node pool's TPU generation and slice shape
  resources.limits google.com/tpu              chips per host
  exclusive-topology annotation                one slice per node pool (xpk's placement)

Pure functions over validated values: nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["CloudConfigError", "JOBSET_GROUP", "JOBSET_VERSION", "JobSpec", "TPU_TYPES", "TpuShape", "render_jobset",
           "tpu_shape", "validate_image", "validate_k8s_name"]


class CloudConfigError(ValueError):
    """A setting or name failed validation; the message names where it came from."""


JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# RFC 1123 label, ≤ 40 characters: JobSet names child Jobs `<name>-slice-job-<i>` and pods after them,
# and pod host names must stay ≤ 63 characters.
K8S_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
# An image pinned by digest: registry/path@sha256:<64 hex>. A tag can move; a digest cannot.
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.:-]*(/[a-z0-9][a-z0-9._-]*)+@sha256:[0-9a-f]{64}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
GCSFUSE_MOUNT = "/gcs"  # where the bucket appears in every pod (paths.checkpoints: /gcs/...)
QUEUE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class TpuShape:
    """A TPU slice type as GKE names it: node-pool accelerator, topology, hosts and chips per host."""

    accelerator: str  # cloud.google.com/gke-tpu-accelerator
    topology: str  # cloud.google.com/gke-tpu-topology
    hosts: int  # TPU VMs (pods) per slice
    chips_per_host: int  # google.com/tpu limit per pod


# The TPU type names this profile knows, with the shapes xpk 1.16 gives them (measured with
# `xpk workload create --tpu-type T --dry-run`): v4/v5p names count TensorCores (2 per chip), v5e/v6e
# names count chips; xpk's v5litepod-8 and v6e-8 are 2 hosts x 4 chips (ct*-hightpu-4t node pools).
TPU_TYPES: dict[str, TpuShape] = {
    "v4-8": TpuShape("tpu-v4-podslice", "2x2x1", 1, 4),
    "v4-16": TpuShape("tpu-v4-podslice", "2x2x2", 2, 4),
    "v4-32": TpuShape("tpu-v4-podslice", "2x2x4", 4, 4),
    "v5p-8": TpuShape("tpu-v5p-slice", "2x2x1", 1, 4),
    "v5p-16": TpuShape("tpu-v5p-slice", "2x2x2", 2, 4),
    "v5litepod-8": TpuShape("tpu-v5-lite-podslice", "2x4", 2, 4),
    "v5litepod-16": TpuShape("tpu-v5-lite-podslice", "4x4", 4, 4),
    "v5litepod-32": TpuShape("tpu-v5-lite-podslice", "4x8", 8, 4),
    "v6e-1": TpuShape("tpu-v6e-slice", "1x1", 1, 1),
    "v6e-4": TpuShape("tpu-v6e-slice", "2x2", 1, 4),
    "v6e-8": TpuShape("tpu-v6e-slice", "2x4", 2, 4),
    "v6e-16": TpuShape("tpu-v6e-slice", "4x4", 4, 4),
    "v6e-32": TpuShape("tpu-v6e-slice", "4x8", 8, 4),
}


def tpu_shape(tpu_type: str, what: str = "resources.tpu_type") -> TpuShape:
    try:
        return TPU_TYPES[tpu_type]
    except (KeyError, TypeError):
        raise CloudConfigError(f"{what}: unknown TPU type {tpu_type!r}; known: {', '.join(TPU_TYPES)}") from None


def validate_k8s_name(name: str, what: str = "job id") -> str:
    if not isinstance(name, str) or not K8S_NAME_RE.match(name):
        raise CloudConfigError(f"{what}: {name!r} is not a JobSet name ([a-z][-a-z0-9]*, ≤ 40 characters, "
                               "e.g. cts-train-cell-12-a1b2c3)")
    return name


def validate_image(image: str, what: str = "CTS_IMAGE") -> str:
    if not isinstance(image, str) or not IMAGE_RE.match(image):
        raise CloudConfigError(f"{what}: {image!r} is not an image pinned by digest "
                               "(e.g. us-docker.pkg.dev/my-proj/cts/cts@sha256:<64 hex>; "
                               "gcp_tpu/README.md: build it with Cloud Build)")
    return image


@dataclass(frozen=True)
class JobSpec:
    """Everything one JobSet needs; validated on construction (bad values name their key)."""

    name: str
    image: str
    command: str  # the Snakemake jobscript; the container runs it with bash -c (argv, no local shell)
    tpu_type: str = "v6e-4"
    slices: int = 1
    spot: bool = False
    queue: str = "multislice-queue"
    max_restarts: int = 3
    env: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    gcsfuse_bucket: str | None = None  # mount gs://<bucket> at /gcs (Cloud Storage FUSE CSI driver)
    service_account: str | None = None  # Kubernetes SA bound by Workload Identity to a GCS writer

    def __post_init__(self):
        validate_k8s_name(self.name, "JobSet name")
        validate_image(self.image)
        tpu_shape(self.tpu_type)
        if not isinstance(self.slices, int) or isinstance(self.slices, bool) or not 1 <= self.slices <= 64:
            raise CloudConfigError(f"resources.tpu_slices: {self.slices!r} is not an integer in 1..64")
        if not isinstance(self.max_restarts, int) or not 0 <= self.max_restarts <= 100:
            raise CloudConfigError(f"CTS_MAX_RESTARTS: {self.max_restarts!r} is not an integer in 0..100")
        if not QUEUE_RE.match(self.queue or ""):
            raise CloudConfigError(f"CTS_KUEUE_QUEUE: {self.queue!r} is not a Kueue LocalQueue name")
        if self.gcsfuse_bucket is not None and not BUCKET_RE.match(self.gcsfuse_bucket):
            raise CloudConfigError(f"CTS_GCSFUSE_BUCKET: {self.gcsfuse_bucket!r} is not a bucket name")
        if self.service_account is not None and not QUEUE_RE.match(self.service_account):
            raise CloudConfigError(f"CTS_K8S_SERVICE_ACCOUNT: {self.service_account!r} is not a service account name")
        for key in self.env:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
                raise CloudConfigError(f"container env: {key!r} is not an environment variable name")

    @property
    def shape(self) -> TpuShape:
        return tpu_shape(self.tpu_type)


def render_jobset(spec: JobSpec, namespace: str = "default") -> dict:
    """The JobSet manifest for one job (xpk's structure; see the module docstring)."""
    shape = spec.shape
    node_selector = {
        "cloud.google.com/gke-tpu-accelerator": shape.accelerator,
        "cloud.google.com/gke-tpu-topology": shape.topology,
    }
    tolerations = [{"key": "google.com/tpu", "operator": "Exists"}]
    if spec.spot:
        node_selector["cloud.google.com/gke-spot"] = "true"
        tolerations.append({"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                            "effect": "NoSchedule"})
    env = [{"name": k, "value": str(v)} for k, v in sorted(spec.env.items())]
    env.append({"name": "JOBSET_NAME", "value": spec.name})
    # Exit codes that mean "the host went away" (42: a job's own restart request, 127+: killed by a
    # signal, e.g. SIGTERM on preemption) fail only the Job, which the JobSet restarts; any other
    # non-zero exit is a real failure and fails the JobSet at once, without burning restarts.
    restartable = [42, *range(127, 256)]
    mounts = [{"mountPath": "/dev/shm", "name": "dshm"}]
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    pod_annotations = {}
    if spec.gcsfuse_bucket:  # checkpoints and final weights live in the bucket, seen by every pod
        pod_annotations["gke-gcsfuse/volumes"] = "true"
        mounts.append({"mountPath": GCSFUSE_MOUNT, "name": "gcs"})
        volumes.append({"name": "gcs", "csi": {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {
            "bucketName": spec.gcsfuse_bucket, "mountOptions": "implicit-dirs"}}})
    pod_spec_extra = {"serviceAccountName": spec.service_account} if spec.service_account else {}
    labels = {QUEUE_LABEL: spec.queue, "app.kubernetes.io/managed-by": "cts-gcp-tpu", **spec.labels}
    return {
        "apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}",
        "kind": "JobSet",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"},
        },
        "spec": {
            "ttlSecondsAfterFinished": 43200,  # 12 h: status can still be read after a Snakemake restart
            "failurePolicy": {
                "rules": [{"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
                "maxRestarts": spec.max_restarts,
            },
            "replicatedJobs": [{
                "name": "slice-job",
                "replicas": spec.slices,
                "template": {"spec": {
                    "parallelism": shape.hosts,
                    "completions": shape.hosts,
                    "backoffLimit": 0,  # a pod failure fails the Job; the JobSet decides on restarts
                    "podFailurePolicy": {"rules": [{
                        "action": "FailJob", "onPodConditions": [],
                        "onExitCodes": {"containerName": "jax-tpu", "operator": "NotIn", "values": restartable},
                    }]},
                    "template": {
                        "metadata": {"labels": {"cts/jobset": spec.name},
                                     **({"annotations": pod_annotations} if pod_annotations else {})},
                        "spec": {
                            "schedulerName": "default-scheduler",
                            "restartPolicy": "Never",
                            "nodeSelector": node_selector,
                            "tolerations": tolerations,
                            "hostNetwork": True,
                            "dnsPolicy": "ClusterFirstWithHostNet",
                            "terminationGracePeriodSeconds": 30,
                            **pod_spec_extra,
                            "containers": [{
                                "name": "jax-tpu",
                                "image": spec.image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["bash", "-c", spec.command],
                                "env": env,
                                "ports": [{"containerPort": 8471}, {"containerPort": 8080}],
                                "securityContext": {"privileged": True},
                                "resources": {"limits": {"google.com/tpu": shape.chips_per_host}},
                                "volumeMounts": mounts,
                            }],
                            "volumes": volumes,
                        },
                    },
                }},
            }],
        },
    }
