"""The GKE/JobSet profile (gcp_tpu/) and cts.cloud, offline.

- Golden manifests: our JobSet has the structure of xpk 1.16's for the same TPU type, slices and
  Spot setting (tests/fixtures/xpk/, recorded with `xpk workload create --dry-run`; README there).
- Fake API: the real `kubernetes` client, called by the real submit/status/cancel scripts, talks to
  an in-memory Kubernetes API (kmock) that plays the JobSet controller's part by patching status.
- Dry runs: DRY_RUN=1 prints the manifest and never imports the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cts.cloud.executor import JobProperties, job_spec, make_job_name, parse_jobscript, status_of
from cts.cloud.jobset import JOBSET_GROUP, JOBSET_VERSION, JobSpec, render_jobset
from cts.cloud.settings import CloudConfigError, ClusterSettings

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gcp_tpu"
XPK = REPO / "tests" / "fixtures" / "xpk"
IMAGE = "us-docker.pkg.dev/my-proj/cts/cts@sha256:" + "a" * 64


def jobscript(path: Path, body: str = "true", rule: str = "train_cell", jobid: int = 3, resources=None) -> Path:
    props = {"type": "single", "rule": rule, "jobid": jobid, "resources": resources or {}}
    path.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\n{body}\n")
    return path


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTS_", "DRY_RUN", "KUBECONFIG"))}
    return {**env, "CTS_IMAGE": IMAGE, **extra}


def script(name: str, *args: str, env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """gcp_tpu/<name>.py in a fresh process, as cluster-generic (or a restarted Snakemake) calls it."""
    out = subprocess.run([sys.executable, str(PROFILE / f"{name}.py"), *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"{name}.py {args}: rc {out.returncode}\n{out.stderr}")
    return out


# ------------------------------------------------------------------ golden manifests (xpk 1.16)

# xpk-only fields we leave out on purpose: a literal `imagePullSecrets: [{name: None}]`, xpk's
# PriorityClass (exists only in clusters xpk created), an empty serviceAccountName and xpk's labels.
XPK_ONLY = {"imagePullSecrets", "priorityClassName", "serviceAccountName", "xpk.google.com/workload"}
# ours only: rule/job labels for `kubectl get jobsets -l`, the Spot node selector and toleration, an
# explicit namespace, JOBSET_NAME in the environment, the pull policy and ports made explicit.
OURS_ONLY = {"namespace", "env", "app.kubernetes.io/managed-by", "cts/rule", "cts/snakemake-jobid", "cts/jobset",
             "cloud.google.com/gke-spot", "value", "effect", "imagePullPolicy", "ports", "containerPort"}


def key_paths(node, prefix="") -> set[str]:
    """Every mapping key of a manifest as a dotted path (list items share the path `[]`)."""
    if isinstance(node, dict):
        out = set()
        for k, v in node.items():
            if v is None or v == "":  # xpk's template leaves empty keys (`env:`, `annotations:`)
                continue
            out.add(f"{prefix}.{k}")
            out |= key_paths(v, f"{prefix}.{k}")
        return out
    if isinstance(node, list):
        return set().union(*(key_paths(v, prefix + "[]") for v in node)) if node else set()
    return set()


def essentials(m: dict) -> dict:
    """The values that decide where and how a workload runs."""
    rj = m["spec"]["replicatedJobs"][0]
    job = rj["template"]["spec"]
    pod = job["template"]["spec"]
    c = pod["containers"][0]
    return {
        "apiVersion": m["apiVersion"], "kind": m["kind"],
        "queue": m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
        "annotations": {k: v for k, v in m["metadata"]["annotations"].items() if v},
        "ttl": m["spec"]["ttlSecondsAfterFinished"], "failurePolicy": m["spec"]["failurePolicy"],
        "replicatedJob": rj["name"], "replicas": rj["replicas"],
        "parallelism": job["parallelism"], "completions": job["completions"], "backoffLimit": job["backoffLimit"],
        "podFailurePolicy": job["podFailurePolicy"],
        "nodeSelector": {k: v for k, v in pod["nodeSelector"].items() if k != "cloud.google.com/gke-spot"},
        "restartPolicy": pod["restartPolicy"], "hostNetwork": pod["hostNetwork"], "dnsPolicy": pod["dnsPolicy"],
        "grace": pod["terminationGracePeriodSeconds"], "scheduler": pod["schedulerName"],
        "container": c["name"], "image": c["image"], "privileged": c["securityContext"]["privileged"],
        "limits": c["resources"]["limits"], "command0": c["command"][:2],
        "tolerations": sorted(t["key"] for t in pod["tolerations"] if t["key"] != "cloud.google.com/gke-spot"),
        "shm": [(v["emptyDir"]["medium"], mnt["mountPath"]) for v, mnt in zip(pod["volumes"], c["volumeMounts"])],
    }


CASES = {  # fixture → (tpu_type, slices, spot)
    "single-host": ("v6e-4", 1, False),
    "v5e-16": ("v5litepod-16", 1, False),
    "two-slices": ("v5litepod-16", 2, False),
    "spot": ("v6e-4", 1, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_structure_matches_xpk(case):
    xpk = yaml.safe_load((XPK / f"{case}.yaml").read_text())
    tpu_type, slices, spot = CASES[case]
    ours = render_jobset(JobSpec(name=case, image=IMAGE, command="bash /job.sh", tpu_type=tpu_type,
                                 slices=slices, spot=spot, max_restarts=3))
    assert essentials(ours) == essentials(xpk)
    named = lambda p, keys: any(f".{k}" in p for k in keys)  # noqa: E731
    missing = {p for p in key_paths(xpk) - key_paths(ours) if not named(p, XPK_ONLY)}
    extra = {p for p in key_paths(ours) - key_paths(xpk) if not named(p, OURS_ONLY)}
    assert missing == set() and extra == set()
    sel = ours["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"]
    assert sel.get("cloud.google.com/gke-spot") == ("true" if spot else None)


def test_shape_follows_resources_and_settings():
    settings = ClusterSettings(image=IMAGE, tpu_type="v6e-4", queue="cts-queue", max_restarts=5)
    props = JobProperties({"rule": "train_cell", "jobid": 7,
                           "resources": {"tpu_type": "v5litepod-16", "tpu_slices": 2, "tpu_spot": "1"}})
    m = render_jobset(job_spec(props, "echo hi", settings, "cts-train-cell-7-abcdef"), "ns1")
    rj = m["spec"]["replicatedJobs"][0]
    pod = rj["template"]["spec"]["template"]["spec"]
    assert (rj["replicas"], rj["template"]["spec"]["parallelism"]) == (2, 4)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4", "cloud.google.com/gke-spot": "true"}
    assert pod["containers"][0]["command"] == ["bash", "-c", "echo hi"]
    assert (m["metadata"]["namespace"], m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
            m["spec"]["failurePolicy"]["maxRestarts"]) == ("ns1", "cts-queue", 5)
    default = render_jobset(job_spec(JobProperties({"rule": "x"}), "true", settings, "cts-x-0-abcdef"))
    assert default["spec"]["replicatedJobs"][0]["replicas"] == 1


def test_bad_values_name_their_key():
    with pytest.raises(CloudConfigError, match="resources.tpu_type"):
        JobSpec(name="a", image=IMAGE, command="x", tpu_type="v9-8;reboot")
    with pytest.raises(CloudConfigError, match="resources.tpu_slices"):
        JobSpec(name="a", image=IMAGE, command="x", slices=0)
    with pytest.raises(CloudConfigError, match="CTS_IMAGE.*digest"):
        JobSpec(name="a", image="us-docker.pkg.dev/p/cts/cts:latest", command="x")
    with pytest.raises(CloudConfigError, match="CTS_IMAGE must be set"):
        ClusterSettings.from_env({})
    for key, value in [("CTS_TPU_TYPE", "v4-8 --evil"), ("CTS_K8S_NAMESPACE", "a;b"), ("CTS_RUN_NAME", "x y"),
                       ("CTS_TPU_SPOT", "sometimes"), ("CTS_TPU_SLICES", "two"), ("CTS_KUEUE_QUEUE", "Q!"),
                       ("CTS_K8S_API", "file:///etc/passwd")]:
        with pytest.raises(CloudConfigError, match=key):
            ClusterSettings.from_env({"CTS_IMAGE": IMAGE, key: value})


def test_job_name_is_readable_unique_and_safe():
    props = JobProperties({"rule": "train_cell", "jobid": 12})
    assert make_job_name("cts", props, token="a1b2c3") == "cts-train-cell-12-a1b2c3"
    assert make_job_name("cts", props) != make_job_name("cts", props)  # retries get new JobSets
    evil = JobProperties({"rule": "x; rm -rf / $(reboot)" * 9, "jobid": "1;ls"})
    name = make_job_name("cts", evil, token="000000")
    assert len(name) <= 40 and name.endswith("-1-ls-000000")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    group = JobProperties({"type": "group", "groupid": "Train_Group", "jobid": 4})
    assert make_job_name("cts", group, token="ffffff") == "cts-group-train-group-4-ffffff"


def test_jobscript_parsing_errors_name_the_file(tmp_path):
    p = tmp_path / "job.sh"
    p.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ValueError, match="job.sh.*properties"):
        parse_jobscript(p)
    jobscript(p, resources={"tpu_type": "v6e-8"})
    assert parse_jobscript(p)[0].resources == {"tpu_type": "v6e-8"}


def test_configfiles_must_be_in_the_image():
    from cts.cloud.executor import check_configfiles

    check_configfiles("python -m snakemake --configfiles 'config/paper.yaml' 'gcp_tpu/paths.yaml' --nocolor")
    for bad in ("/home/me/c.yaml", "../c.yaml"):
        with pytest.raises(CloudConfigError, match="outside the checkout"):
            check_configfiles(f"python -m snakemake --configfiles 'config/a.yaml' '{bad}' --nocolor")


def test_status_from_jobset_conditions():
    assert status_of(None) == "failed"
    assert status_of({"status": {}}) == "running"
    suspended = {"status": {"conditions": [{"type": "Suspended", "status": "True"}]}}  # waiting in Kueue
    assert status_of(suspended) == "running"
    restarted = {"status": {"restarts": 2, "conditions": [{"type": "StartupPolicyCompleted", "status": "True"}]}}
    assert status_of(restarted) == "running"
    assert status_of({"status": {"conditions": [{"type": "Completed", "status": "True"}]}}) == "success"
    assert status_of({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"
    assert status_of({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) == "running"
    assert status_of({"status": {"terminalState": "Completed"}}) == "success"


# ------------------------------------------------------------------ dry runs: no client, no credentials

def test_dry_run_prints_the_manifest_and_never_imports_the_client(tmp_path):
    poison = tmp_path / "poison" / "kubernetes"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('a dry run imported the kubernetes client')\n")
    env = base_env(DRY_RUN="1", PYTHONPATH=f"{poison.parent}{os.pathsep}{REPO}")
    env.pop("CTS_IMAGE")  # a dry run needs no image either
    job = jobscript(tmp_path / "job.sh", "echo train", resources={"tpu_type": "v5litepod-16", "tpu_slices": 2})
    out = script("submit", str(job), env=env, cwd=tmp_path)
    name = out.stdout.splitlines()[0]
    assert name.startswith("cts-train-cell-3-")
    manifest = yaml.safe_load(out.stderr.split("(nothing submitted):\n", 1)[1])
    rj = manifest["spec"]["replicatedJobs"][0]
    assert (manifest["metadata"]["name"], rj["replicas"], rj["template"]["spec"]["parallelism"]) == (name, 2, 4)
    assert script("status", name, env=env, cwd=tmp_path).stdout == "failed\n"
    assert "would delete" in script("cancel", name, env=env, cwd=tmp_path).stderr


@pytest.mark.parametrize("job_id", ["x; touch PWNED", "../../etc/passwd", "--zone=evil", "$(touch PWNED)", ""])
def test_injection_through_job_ids_is_rejected(tmp_path, job_id):
    env = base_env(CTS_K8S_API="http://127.0.0.1:9")  # nothing listens: any call would fail loudly
    for cmd in ("status", "cancel"):
        out = script(cmd, job_id, env=env, cwd=tmp_path, check=False)
        assert out.returncode != 0 and "job id" in out.stderr and out.stdout == ""
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------ fake Kubernetes API (kmock)

@pytest.fixture
def fake_api():
    """An in-memory Kubernetes API with the JobSet resource, served from a thread: yields
    (url, objects) where objects() returns the JobSets it holds."""
    kmock = pytest.importorskip("kmock")
    box: dict = {}

    async def serve():
        async with kmock.KubernetesEmulator() as k, kmock.Server(k) as srv:
            k.resources[f"{JOBSET_GROUP}/{JOBSET_VERSION}/jobsets"] = {}
            box["url"], box["k"] = str(srv.url).rstrip("/"), k
            while not box.get("stop"):
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    t0 = time.time()
    while "url" not in box:
        assert time.time() - t0 < 20, "kmock did not start"
        time.sleep(0.02)
    yield box["url"]
    box["stop"] = True
    thread.join(timeout=10)


def _client(url: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    return client.CustomObjectsApi(client.ApiClient(cfg))


def _get(api, name):
    return api.get_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, "default", "jobsets", name)


def _controller(api, name, status: dict):
    """Play the JobSet controller: write the JobSet's status subresource."""
    api.patch_namespaced_custom_object_status(JOBSET_GROUP, JOBSET_VERSION, "default", "jobsets", name,
                                              {"status": status})


def test_fake_api_submit_status_preemption_success_cancel(tmp_path, fake_api):
    env = base_env(CTS_K8S_API=fake_api, CTS_KUEUE_QUEUE="cts-queue", CTS_MAX_RESTARTS="4")
    api = _client(fake_api)
    job = jobscript(tmp_path / "job.sh", "echo train", resources={"tpu_type": "v5litepod-16", "tpu_spot": True})
    name = script("submit", str(job), env=env, cwd=tmp_path).stdout.strip()

    created = _get(api, name)  # what the cluster got is the rendered manifest
    pod = created["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cts-queue"
    assert created["spec"]["failurePolicy"]["maxRestarts"] == 4
    assert pod["containers"][0]["image"] == IMAGE and pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert "echo train" in pod["containers"][0]["command"][2]

    st = lambda: script("status", name, env=env, cwd=tmp_path).stdout.strip()  # noqa: E731  a fresh process each time
    assert st() == "running"  # created, not yet admitted
    _controller(api, name, {"conditions": [{"type": "Suspended", "status": "True"}]})
    assert st() == "running"  # waiting in the Kueue queue (a stockout) is not a failure
    # preemption: a pod fails with SIGTERM (143, restartable); the JobSet restarts all pods
    _controller(api, name, {"restarts": 1, "conditions": [{"type": "Suspended", "status": "False"}]})
    assert st() == "running"
    _controller(api, name, {"restarts": 1, "terminalState": "Completed",
                            "conditions": [{"type": "Completed", "status": "True"}]})
    assert st() == "success"
    out = script("cancel", name, env=env, cwd=tmp_path)
    assert f"deleted JobSet {name}" in out.stderr
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as e:
        _get(api, name)
    assert e.value.status == 404
    assert st() == "failed"  # gone (or expired): never reported running forever
    assert "already gone" in script("cancel", name, env=env, cwd=tmp_path).stderr


def test_fake_api_real_failure_is_failed_and_restart_reattaches(tmp_path, fake_api):
    env = base_env(CTS_K8S_API=fake_api)
    api = _client(fake_api)
    names = [script("submit", str(jobscript(tmp_path / f"j{i}.sh", jobid=i)), env=env, cwd=tmp_path).stdout.strip()
             for i in range(2)]
    _controller(api, names[0], {"terminalState": "Failed", "conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedJobs"}]})
    # a "restarted Snakemake": nothing but the job ids, each status a new process
    assert [script("status", n, env=env, cwd=tmp_path).stdout.strip() for n in names] == ["failed", "running"]
    script("cancel", *names, env=env, cwd=tmp_path)
    assert [script("status", n, env=env, cwd=tmp_path).stdout.strip() for n in names] == ["failed", "failed"]


# ------------------------------------------------------------------ the profile itself

def test_profile_options_are_known_to_snakemake():
    from snakemake.cli import get_argument_parser

    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    known = get_argument_parser()._option_string_actions
    unknown = [k for k in profile if f"--{k}" not in known]
    assert unknown == [], f"gcp_tpu/profile.yaml: options Snakemake does not know: {unknown}"
    assert profile["executor"] == "cluster-generic" and profile["retries"] >= 1
    assert profile["default-storage-provider"] == "gcs" and profile["shared-fs-usage"] == ["none"]
    for key in ("submit", "status", "cancel"):
        path = PROFILE / profile[f"cluster-generic-{key}-cmd"]
        assert path.is_file() and os.access(path, os.X_OK), path


def test_plan_is_a_dry_run_without_credentials(tmp_path):
    """`gcp_tpu/plan.py` on the tiny config: localrules here, train_base as a JobSet, every output
    under gs://; no credentials, no kubernetes client (poisoned), no image needed."""
    poison = tmp_path / "poison" / "kubernetes"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the plan imported the kubernetes client')\n")
    env = base_env(PYTHONPATH=f"{poison.parent}{os.pathsep}{REPO}", CTS_GCS_BUCKET="my-bucket",
                   HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), CTS_TPU_SPOT="1")
    env.pop("CTS_IMAGE")
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    out = subprocess.run([sys.executable, str(PROFILE / "plan.py"), "results/base/synth_math/final.json",
                          "--configfile", str(REPO / "tests/config_tiny/config.yaml")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "data_prepare (job" in text and "localrule (runs here)" in text
    assert "train_base (job 0, task=synth_math): JobSet cts-train-base-0-000000, 1 x v6e-4 (Spot)" in text
    assert "    -> gs://my-bucket/cts/results/base/synth_math/final.json" in text
    assert "# PROBLEM: paths.checkpoints: 'work/checkpoints' is relative" in text  # the tiny config's
    manifests = [d for d in yaml.safe_load_all(text.split("\n---\n", 1)[1]) if d]
    assert [m["metadata"]["name"] for m in manifests] == ["cts-train-base-0-000000"]


def test_teacher_critique_and_cheap_rules_are_local():
    from cts.cloud.plan import local_rules

    local = local_rules(REPO)
    assert {"teacher_critique", "data_prepare", "data_split", "taxonomy_tag", "stats_table"} <= local
    assert not local & {"train_base", "train_cell", "teacher_rollouts", "eval_cell"}  # JAX jobs: TPU


def test_image_installs_everything_at_build_time():
    """The Dockerfile installs the lock and jax[tpu] at the lock's JAX version; the profile runs no
    install step (no bootstrap script; the pod runs the jobscript only)."""
    import re

    docker = (REPO / "Dockerfile").read_text()
    lock_jax = re.search(r"^jax==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    version = subprocess.run(["sed", "-n", "s/^jax==//p", str(REPO / "requirements.lock")],
                             capture_output=True, text=True).stdout.strip()
    assert version == lock_jax  # the Dockerfile's extraction reads the locked version
    assert "pip install -q -r requirements.lock" in docker and '"jax[tpu]==${JAX_VERSION}"' in docker
    build = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    assert build["images"] == ["${_REPO}/cts:${COMMIT_SHA}"]
    assert not (PROFILE / "bootstrap.sh").exists()
    m = render_jobset(JobSpec(name="a", image=IMAGE, command="echo job"))
    assert m["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "bash", "-c", "echo job"]


# ------------------------------------------------------------------ no shared filesystem, end to end

def _fake_node_run(tmp_path: Path, checkpoints: str | None, target: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Real snakemake → cluster-generic → gcp_tpu/submit.py in fake-node mode: every TPU job runs in
    its own fresh directory with only its declared inputs; only declared outputs come back."""
    work, nodes = tmp_path / "work", tmp_path / "nodes"
    work.mkdir()
    nodes.mkdir()
    cfg = yaml.safe_load((REPO / "tests/config_tiny/config.yaml").read_text())
    cfg.update(tasks=["synth_math"], methods=["B3"], ablations=[], seeds=[0])
    if checkpoints:
        cfg.setdefault("paths", {})["checkpoints"] = checkpoints
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    for key in ("default-storage-provider", "default-storage-prefix", "storage-gcs-project", "shared-fs-usage",
                "local-storage-prefix"):
        profile.pop(key)  # the fake node isolates each job; Snakemake's own side keeps its workdir
    for key in ("submit", "status", "cancel"):
        profile[f"cluster-generic-{key}-cmd"] = f"{sys.executable} {PROFILE / profile[f'cluster-generic-{key}-cmd']}"
    profile.update({"seconds-between-status-checks": 1, "latency-wait": 3, "retries": 0, "jobs": 1, "cores": 2})
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "profile.yaml").write_text(yaml.safe_dump(profile))
    env = base_env(CTS_FAKE_NODE_ROOT=str(nodes), PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(work), "--profile", str(tmp_path / "profile"), target,
         "--configfile", str(work / "config.yaml")],
        cwd=work, env=env, capture_output=True, text=True, timeout=900)
    return out, nodes


@pytest.mark.heavy
def test_no_shared_filesystem_loses_weights_kept_outside_storage(tmp_path):
    """Today's default (paths.checkpoints: work/checkpoints, on the node's disk): train_base succeeds
    on its node, the weights die with it, and teacher_rollouts on a new node cannot find them."""
    out, nodes = _fake_node_run(tmp_path, None, "results/rollouts/synth_math/attempts.jsonl")
    assert out.returncode != 0
    results = {p.name.rsplit("-", 2)[0]: (p / "result").read_text().strip() for p in nodes.iterdir()}
    assert results == {"cts-train-base": "success", "cts-teacher-rollouts": "failed"}
    log = (tmp_path / "work/logs/teacher/teacher_rollouts/synth_math.log").read_text()
    assert "FileNotFoundError: no parameters at" in log and "/work/checkpoints/synth_math/base/" in log


@pytest.mark.heavy
def test_no_shared_filesystem_runs_with_state_in_the_bucket(tmp_path):
    """paths.checkpoints in the bucket (here a local directory standing in for gs://…): every job on
    its own fresh node, and the DAG runs through base policy and rollouts."""
    bucket = tmp_path / "bucket"
    out, nodes = _fake_node_run(tmp_path, str(bucket / "checkpoints"), "results/rollouts/synth_math/attempts.jsonl")
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((tmp_path / "work/results/base/synth_math/final.json").read_text())
    assert final["params_dir"].startswith(str(bucket))
    assert sorted(p.name.rsplit("-", 2)[0] for p in nodes.iterdir()) == ["cts-teacher-rollouts", "cts-train-base"]
    assert not (tmp_path / "work" / "work").exists()  # nothing written to the workdir outside outputs


def test_checkpoints_must_be_where_every_pod_sees_them():
    from cts.cloud.state import check_state_paths

    relative = {"paths": {"checkpoints": "work/checkpoints"}}
    with pytest.raises(ValueError, match="paths.checkpoints: 'work/checkpoints' is relative"):
        check_state_paths(relative, [])  # shared-fs-usage: none
    with pytest.raises(ValueError, match="paths.checkpoints"):
        check_state_paths({}, [])  # the default is relative too
    check_state_paths(relative, ["persistence", "input-output"])  # one filesystem: fine
    check_state_paths({"paths": {"checkpoints": "/gcs/cts/checkpoints"}}, [])
    check_state_paths({"paths": {"checkpoints": "gs://b/cts/checkpoints"}}, [])


def test_bucket_mount_in_every_pod():
    settings = ClusterSettings.from_env({"CTS_IMAGE": IMAGE, "CTS_GCSFUSE_BUCKET": "my-bucket",
                                         "CTS_K8S_SERVICE_ACCOUNT": "cts-runner"})
    m = render_jobset(job_spec(JobProperties({"rule": "train_base"}), "true", settings, "cts-a-0-abcdef"))
    tmpl = m["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert tmpl["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    assert tmpl["spec"]["serviceAccountName"] == "cts-runner"
    gcs = next(v for v in tmpl["spec"]["volumes"] if v["name"] == "gcs")
    assert gcs["csi"] == {"driver": "gcsfuse.csi.storage.gke.io",
                          "volumeAttributes": {"bucketName": "my-bucket", "mountOptions": "implicit-dirs"}}
    assert {"mountPath": "/gcs", "name": "gcs"} in tmpl["spec"]["containers"][0]["volumeMounts"]
    with pytest.raises(CloudConfigError, match="CTS_GCSFUSE_BUCKET"):
        ClusterSettings.from_env({"CTS_IMAGE": IMAGE, "CTS_GCSFUSE_BUCKET": "gs://x/../y"})


def test_paper_config_with_bucket_paths_is_valid_and_passes_the_state_check():
    """The README's one command: config/paper.yaml + gcp_tpu/paths.yaml over workflow_config.yaml."""
    from cts.cloud.state import check_state_paths
    from cts.config import validate_config

    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for extra in ("config/paper.yaml", "gcp_tpu/paths.yaml"):
        for key, value in yaml.safe_load((REPO / extra).read_text()).items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    validate_config(cfg, REPO / "schemas" / "workflow_config.schema.yaml")
    check_state_paths(cfg, [])
    assert cfg["paths"]["checkpoints"] == "/gcs/cts/checkpoints"


@pytest.fixture
def fake_gcs():
    """A GCS API on localhost (gcp-storage-emulator, in memory) with bucket `cts-bucket`; the real
    google-cloud-storage client (and so Snakemake's GCS plugin) uses it via STORAGE_EMULATOR_HOST."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="cts-bucket")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_profile_stops_at_dag_time_when_checkpoints_are_off_the_bucket(tmp_path, fake_gcs):
    """The `make test` form of the test below (~5 of its ~60 CPU-s): the real profile and storage,
    today's default checkpoints, stopped before any job."""
    _profile_run_in_the_bucket(tmp_path, fake_gcs, run_through=False)


@pytest.mark.heavy  # two JAX jobs on fake nodes through the GCS emulator: ~60 CPU-s
def test_profile_runs_with_no_shared_filesystem_and_state_in_the_bucket(tmp_path, fake_gcs):
    """The real gcp_tpu profile (GCS storage, shared-fs-usage: none) from a checkout, against a fake
    GCS; every TPU job on a fresh "node" that has only the image's sources (a copy of the checkout
    made before the run). Today's default checkpoints stop the run at DAG time; with checkpoints in
    the bucket mount (a directory standing in for /gcs) base policy and rollouts run through."""
    _profile_run_in_the_bucket(tmp_path, fake_gcs, run_through=True)


def _profile_run_in_the_bucket(tmp_path: Path, fake_gcs: str, run_through: bool) -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    checkout, gcs = tmp_path / "checkout", tmp_path / "gcs"
    for f in filter(None, files):
        if (REPO / f).is_file():
            (checkout / f).parent.mkdir(parents=True, exist_ok=True)
            (checkout / f).write_bytes((REPO / f).read_bytes())
    cfg = yaml.safe_load((REPO / "tests/config_tiny/config.yaml").read_text())
    cfg.update(tasks=["synth_math"], methods=["B3"], ablations=[], seeds=[0])
    (checkout / "config/e2e.yaml").write_text(yaml.safe_dump(cfg))
    (checkout / "config/e2e_gcs.yaml").write_text(yaml.safe_dump({"paths": {"checkpoints": str(gcs / "checkpoints")}}))
    image = tmp_path / "image"
    subprocess.run(["cp", "-a", str(checkout), str(image)], check=True)  # "docker build" of this commit

    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    for key in ("submit", "status", "cancel"):
        profile[f"cluster-generic-{key}-cmd"] = f"{sys.executable} {PROFILE / profile[f'cluster-generic-{key}-cmd']}"
    profile.update({"seconds-between-status-checks": 1, "latency-wait": 3, "retries": 0, "jobs": 1, "cores": 2})
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "profile.yaml").write_text(yaml.safe_dump(profile))
    env = base_env(CTS_FAKE_NODE_ROOT=str(tmp_path / "nodes"), CTS_FAKE_NODE_IMAGE=str(image),
                   STORAGE_EMULATOR_HOST=fake_gcs, CTS_GCS_BUCKET="cts-bucket", CTS_GCP_PROJECT="test-proj",
                   PYTHONPATH=str(checkout), JAX_PLATFORMS="cpu",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the pod's `python`
    (tmp_path / "nodes").mkdir()

    def run(*configs):
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--profile", str(tmp_path / "profile"),
                               "results/rollouts/synth_math/attempts.jsonl", "--configfile", *configs],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=900)

    today = run("config/e2e.yaml")
    assert today.returncode != 0 and "paths.checkpoints: 'work/checkpoints' is relative" in today.stderr
    assert list((tmp_path / "nodes").iterdir()) == []  # stopped before any job
    if not run_through:
        return

    out = run("config/e2e.yaml", "config/e2e_gcs.yaml")
    assert out.returncode == 0, out.stderr[-4000:]
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = fake_gcs
    try:
        bucket = storage.Client(project="test-proj").bucket("cts-bucket")
        final = json.loads(bucket.blob("cts/results/base/synth_math/final.json").download_as_text())
        assert bucket.blob("cts/results/rollouts/synth_math/attempts.jsonl").exists()
    finally:
        del os.environ["STORAGE_EMULATOR_HOST"]
    assert final["params_dir"].startswith(str(gcs / "checkpoints"))
    assert sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "nodes").iterdir()) == [
        "cts-teacher-rollouts", "cts-train-base"]
    assert not (checkout / "work").exists() and not (checkout / "results" / "base").exists()
