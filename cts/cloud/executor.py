"""Submit / status / cancel of one Snakemake job as one JobSet (cluster-generic executor).

  submit   parse the jobscript's `# properties` line, render a JobSet from the job's resources
           (tpu_type, tpu_slices, tpu_spot; defaults from ClusterSettings), create it in the
           Kueue-managed namespace, print its name (the external job id Snakemake keeps).
  status   read the JobSet from the API and print running|success|failed from its conditions.
           Nothing is kept on this machine, so a restarted Snakemake re-attaches by name.
  cancel   delete the JobSets (background propagation: their Jobs and pods go with them).

Preemption: a preempted host fails its pod; the JobSet restarts every pod (status.restarts += 1)
up to failurePolicy.maxRestarts, and the restarted job resumes from its latest checkpoint in the
bucket; Snakemake sees `running` throughout and retries (profile `retries`) only a JobSet that
failed for good. A stockout keeps the JobSet suspended by Kueue: `running` (queued), not failed.

The `kubernetes` client is imported only when an API call is made: DRY_RUN=1 prints the manifest
and needs neither the client nor credentials.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from cts.cloud.jobset import JOBSET_GROUP, JOBSET_VERSION, JobSpec, render_jobset, validate_k8s_name
from cts.cloud.settings import CloudConfigError, ClusterSettings, dry_run
from cts.io import DataError

__all__ = ["JobProperties", "cancel", "job_spec", "make_api", "make_job_name", "parse_jobscript",
           "status", "status_of", "submit"]

STATUSES = ("running", "success", "failed")
PLURAL = "jobsets"
_PROPS_RE = re.compile(r"^# properties = (\{.*\})\s*$", re.M)
_CONFIGFILES_RE = re.compile(r"--configfiles((?:\s+(?:'[^']*'|[^-\s]\S*))+)")


class JobProperties(dict):
    """The `# properties = {...}` JSON Snakemake writes into every jobscript."""

    @property
    def rule(self) -> str:
        if self.get("type") == "group":
            return f"group-{self.get('groupid', 'x')}"
        return str(self.get("rule") or "job")

    @property
    def jobid(self) -> str:
        return str(self.get("jobid", "0"))

    @property
    def resources(self) -> dict:
        return dict(self.get("resources") or {})


def parse_jobscript(path: str | os.PathLike) -> tuple[JobProperties, str]:
    """Return (properties, full text) of a Snakemake jobscript; DataError names the file."""
    text = Path(path).read_text(encoding="utf-8")
    m = _PROPS_RE.search(text)
    if m is None:
        raise DataError(f"{path}: no '# properties = {{...}}' line; is this a Snakemake jobscript?")
    try:
        props = json.loads(m.group(1))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: properties line: invalid JSON: {e.msg}") from e
    if not isinstance(props, dict):
        raise DataError(f"{path}: properties line: expected a JSON object")
    return JobProperties(props), text


def check_configfiles(text: str, source: str = "jobscript") -> None:
    """The pod has the image's sources only (cluster-generic ships no sources): a --configfile must
    be a file of the checkout, named relative to it — not an absolute path or one above it."""
    m = _CONFIGFILES_RE.search(text)
    for path in shlex.split(m.group(1)) if m else []:
        if os.path.isabs(path) or path.split("/")[0] == "..":
            raise CloudConfigError(f"{source}: --configfile {path!r} is outside the checkout; the pods see only "
                                   "the image's sources: put the file in the repository (e.g. config/) and rebuild")


def _slug(text: str, width: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max(width, 1)].strip("-")
    return slug or "job"


def make_job_name(run_name: str, props: JobProperties, token: str | None = None) -> str:
    """`<run>-<rule>-<jobid>-<6 hex>`, ≤ 40 characters: readable in `kubectl get jobsets`, unique
    across retries and restarts (the random token). Rule names are reduced to [a-z0-9-]."""
    token = token or secrets.token_hex(3)
    jobid = _slug(props.jobid, 8)
    width = 40 - len(run_name) - len(jobid) - len(token) - 3
    return validate_k8s_name(f"{run_name}-{_slug(props.rule, width)}-{jobid}-{token}",
                             "JobSet name derived from the jobscript")


def job_spec(props: JobProperties, command: str, settings: ClusterSettings, name: str) -> JobSpec:
    """JobSpec from the job's resources (tpu_type, tpu_slices, tpu_spot) over the settings."""
    res = props.resources
    spot = res.get("tpu_spot", settings.spot)
    if isinstance(spot, str):
        spot = spot.strip().lower() in {"1", "true", "yes"}
    slices = res.get("tpu_slices", settings.slices)
    if isinstance(slices, str) and slices.isdigit():
        slices = int(slices)
    return JobSpec(
        name=name, image=settings.image, command=command,
        tpu_type=str(res.get("tpu_type") or settings.tpu_type), slices=slices, spot=bool(spot),
        queue=settings.queue, max_restarts=settings.max_restarts,
        labels={"cts/rule": _slug(props.rule, 63), "cts/snakemake-jobid": _slug(props.jobid, 63)},
        gcsfuse_bucket=settings.gcsfuse_bucket, service_account=settings.service_account,
    )


# ---------------------------------------------------------------- the API

def make_api(settings: ClusterSettings):
    """CustomObjectsApi for the cluster: CTS_K8S_API (no credentials: `kubectl proxy`, tests) or
    the kubeconfig written by `gcloud container clusters get-credentials`."""
    from kubernetes import client, config

    if settings.api_url:
        cfg = client.Configuration()
        cfg.host = settings.api_url
        return client.CustomObjectsApi(client.ApiClient(cfg))
    try:
        config.load_kube_config(context=settings.context)
    except config.ConfigException:
        config.load_incluster_config()  # Snakemake itself running in the cluster
    return client.CustomObjectsApi()


def _api_error(e) -> str:
    return f"Kubernetes API: {getattr(e, 'status', '?')} {getattr(e, 'reason', '')}".strip()


def submit(jobscript: str | os.PathLike, env: Mapping[str, str] | None = None, api=None,
           out=sys.stderr) -> str:
    """Create the job's JobSet; returns its name. DRY_RUN=1 prints the manifest instead."""
    env = dict(os.environ if env is None else env)
    settings = ClusterSettings.from_env(env)
    props, text = parse_jobscript(jobscript)
    name = make_job_name(settings.run_name, props)
    if "--shared-fs-usage none" in text or "--shared-fs-usage 'none'" in text:
        check_configfiles(text, str(jobscript))
    manifest = render_jobset(job_spec(props, text, settings, name), settings.namespace)
    if env.get("CTS_FAKE_NODE_ROOT"):
        return _run_on_fake_node(name, props, text, Path(env["CTS_FAKE_NODE_ROOT"]), env)
    if dry_run(env):
        print(f"DRY_RUN: JobSet {name} (nothing submitted):\n" + yaml.safe_dump(manifest, sort_keys=False),
              file=out, flush=True)
        return name
    api = api or make_api(settings)
    from kubernetes.client import ApiException

    try:
        api.create_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, settings.namespace, PLURAL, manifest)
    except ApiException as e:
        raise RuntimeError(f"creating JobSet {name}: {_api_error(e)}") from e
    return name


def status_of(jobset: Mapping | None) -> str:
    """running|success|failed from a JobSet object (None: it does not exist)."""
    if not jobset:
        return "failed"  # deleted, expired (ttlSecondsAfterFinished) or never created
    st = jobset.get("status") or {}
    terminal = st.get("terminalState")
    if terminal == "Completed":
        return "success"
    if terminal == "Failed":
        return "failed"
    conditions = {c.get("type"): str(c.get("status")) == "True" for c in st.get("conditions") or []}
    if conditions.get("Completed"):
        return "success"
    if conditions.get("Failed"):
        return "failed"
    return "running"  # created, suspended in the Kueue queue, running, or restarting after a preemption


def status(name: str, env: Mapping[str, str] | None = None, api=None) -> str:
    env = os.environ if env is None else env
    validate_k8s_name(name, "job id")
    if env.get("CTS_FAKE_NODE_ROOT"):
        result = Path(env["CTS_FAKE_NODE_ROOT"]) / name / "result"
        return result.read_text().strip() if result.exists() else "failed"
    if dry_run(env):
        return "failed"  # a dry run submits nothing; failing stops Snakemake at once
    settings = ClusterSettings.from_env(env)
    api = api or make_api(settings)
    from kubernetes.client import ApiException

    try:
        obj = api.get_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, settings.namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            print(f"gcp_tpu status: JobSet {name} not found; reporting failed", file=sys.stderr)
            return "failed"
        raise RuntimeError(f"reading JobSet {name}: {_api_error(e)}") from e
    return status_of(obj)


def cancel(names: list[str], env: Mapping[str, str] | None = None, api=None) -> list[str]:
    """Delete each JobSet (its Jobs and pods follow); returns one log line per name."""
    env = os.environ if env is None else env
    for n in names:
        validate_k8s_name(n, "job id")  # all checked before any call
    if dry_run(env):
        return [f"DRY_RUN: would delete JobSet {n}" for n in names]
    settings = ClusterSettings.from_env(env)
    api = api or make_api(settings)
    from kubernetes import client

    lines = []
    for n in names:
        try:
            api.delete_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, settings.namespace, PLURAL, n,
                                                body=client.V1DeleteOptions(propagation_policy="Background"))
            lines.append(f"deleted JobSet {n}")
        except client.ApiException as e:
            if e.status != 404:
                raise RuntimeError(f"deleting JobSet {n}: {_api_error(e)}") from e
            lines.append(f"JobSet {n} already gone")
    return lines


# ---------------------------------------------------------------- fake node (tests)

def _declared(props: JobProperties) -> tuple[list[str], list[str]]:
    """(inputs, outputs + logs) the job declares, as paths relative to the workdir."""
    def paths(value):
        if isinstance(value, dict):
            value = list(value.values())
        return [str(v) for v in (value or []) if isinstance(v, str)]
    outs = paths(props.get("output")) + paths(props.get("log"))
    return paths(props.get("input")), outs


def _run_on_fake_node(name: str, props: JobProperties, text: str, root: Path, env: Mapping[str, str]) -> str:
    """CTS_FAKE_NODE_ROOT (tests): run the job like a pod with no shared filesystem would — in a fresh
    directory (a copy of CTS_FAKE_NODE_IMAGE, the image's sources, if set) holding only the job's
    declared inputs (copied from the workdir, which stands in for
    the bucket); only its declared outputs and logs come back. State kept anywhere else (say, weights
    next to the outputs but not declared) is lost, as it is with a real pod. Runs to completion
    before returning; `status` reads the result file."""
    workdir = Path.cwd()
    node = root / name / "work"
    image = env.get("CTS_FAKE_NODE_IMAGE")  # a directory standing in for the image's /workspace
    if image:
        shutil.copytree(image, node, symlinks=True)
    else:
        node.mkdir(parents=True)
    inputs, outputs = _declared(props)
    for rel in inputs:
        src = workdir / rel
        if Path(rel).is_absolute() or not src.exists():
            continue  # absolute paths (the sources, the bucket stand-in) are reachable from the pod
        (node / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, node / rel)
    # with a shared workdir the jobscript starts with `cd <workdir>`: the node's own directory instead;
    # without one (shared-fs-usage: none) it runs where it starts, fetching sources from storage
    cd_here = f"cd {shlex.quote(str(workdir))}"
    script = root / name / "job.sh"
    script.write_text(text.replace(cd_here, f"cd {shlex.quote(str(node))}"), encoding="utf-8")
    with open(root / name / "log", "w") as log:
        rc = subprocess.run(["bash", str(script)], cwd=node, env=dict(env), stdout=log, stderr=log).returncode
    # benchmark files are outputs too, but the jobscript's properties do not name them
    benchmarks = [str(p.relative_to(node)) for p in (node / "benchmarks").rglob("*") if p.is_file()]
    for rel in outputs + benchmarks:
        src = node / rel
        if not Path(rel).is_absolute() and src.exists():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, workdir / rel, dirs_exist_ok=True)
            else:
                shutil.copy2(src, workdir / rel)
    (root / name / "result").write_text("success\n" if rc == 0 else "failed\n")
    shutil.rmtree(node, ignore_errors=True)  # the pod is gone
    return name
