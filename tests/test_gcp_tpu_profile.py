"""The Cloud TPU profile (gcp_tpu/) and cts.cloud, against a fake `gcloud` on PATH.

tests/fake_gcloud/gcloud records every call (argv JSONL) and runs `tpu-vm ssh --command` locally,
so the whole create → scp → ssh → delete lifecycle, status after a restart, cancel, preemption and
dry runs are checked end to end without a cloud. The slow test drives the real `snakemake` with a
copy of the profile (local storage instead of GCS) on a tiny config.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from cts.cloud import gcloud as gc
from cts.cloud.jobs import JobProperties, make_vm_name, parse_jobscript
from cts.cloud.settings import CloudConfigError, TpuSettings

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gcp_tpu"
FAKE_DIR = REPO / "tests" / "fake_gcloud"
SETTINGS = TpuSettings(project="my-proj", zone="us-central2-b")


# ------------------------------------------------------------------ helpers

@pytest.fixture
def env(tmp_path):
    root = tmp_path / "fake"
    root.mkdir()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CTS_", "FAKE_GCLOUD", "DRY_RUN"))},
        "PATH": f"{FAKE_DIR}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GCLOUD_ROOT": str(root),
        "CTS_GCP_PROJECT": "my-proj",
        "CTS_GCP_ZONE": "us-central2-b",
        "CTS_TPU_STATE_DIR": str(tmp_path / "state"),
        "JAX_PLATFORMS": "cpu",
    }


def script(name: str, *args: str, env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run gcp_tpu/<name>.py in a fresh process (a 'restarted' Snakemake calls it the same way)."""
    out = subprocess.run([sys.executable, str(PROFILE / f"{name}.py"), *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"{name}.py {args}: rc {out.returncode}\n{out.stderr}")
    return out


def calls(env: dict) -> list[list[str]]:
    path = Path(env["FAKE_GCLOUD_ROOT"]) / "calls.jsonl"
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()] if path.exists() else []


def verbs(env: dict, name: str | None = None) -> list[str]:
    return [a[3] for a in calls(env) if name is None or name in " ".join(a[4:])]


def state(env: dict, name: str) -> dict:
    return json.loads((Path(env["CTS_TPU_STATE_DIR"]) / f"{name}.json").read_text())


def wait_done(env: dict, name: str, timeout: float = 30.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = state(env, name)
        if st.get("result") is not None:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{name} did not finish in {timeout}s: {state(env, name)}")


def wait_phase(env: dict, name: str, phase: str, timeout: float = 30.0) -> None:
    t0 = time.time()
    while state(env, name).get("phase") != phase:
        assert time.time() - t0 < timeout, state(env, name)
        time.sleep(0.05)


def jobscript(path: Path, body: str, rule: str = "train_cell", jobid: int = 3, resources=None) -> Path:
    props = {"type": "single", "rule": rule, "jobid": jobid, "resources": resources or {}}
    path.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\n{body}\n")
    return path


# ------------------------------------------------------------------ settings and names

def test_settings_from_env_defaults_and_validation():
    s = TpuSettings.from_env({"CTS_GCP_PROJECT": "my-proj", "CTS_GCP_ZONE": "europe-west4-a",
                              "CTS_TPU_TYPE": "v5litepod-8", "CTS_TPU_SPOT": "1"})
    assert (s.accelerator_type, s.runtime_version, s.spot, s.run_name) == (
        "v5litepod-8", "tpu-ubuntu2204-base", True, "cts")
    with pytest.raises(CloudConfigError, match="CTS_GCP_ZONE"):
        TpuSettings.from_env({"CTS_GCP_PROJECT": "my-proj"})
    bad = {
        "CTS_GCP_ZONE": "us-central2-b; rm -rf ~",
        "CTS_GCP_PROJECT": "--impersonate-service-account=x",
        "CTS_TPU_TYPE": "v4-8 --metadata=startup-script=evil",
        "CTS_TPU_RUNTIME": "$(reboot)",
        "CTS_RUN_NAME": "cts`id`",
        "CTS_TPU_SPOT": "sometimes",
    }
    for key, value in bad.items():
        good = {"CTS_GCP_PROJECT": "my-proj", "CTS_GCP_ZONE": "us-central2-b", key: value}
        with pytest.raises(CloudConfigError, match=key):
            TpuSettings.from_env(good)


def test_vm_name_is_readable_unique_and_safe():
    props = JobProperties({"rule": "train_cell", "jobid": 12})
    assert make_vm_name("cts", props, token="a1b2c3") == "cts-train-cell-12-a1b2c3"
    assert make_vm_name("cts", props) != make_vm_name("cts", props)  # retries get new VMs
    evil = JobProperties({"rule": "x; rm -rf / $(reboot)" * 9, "jobid": "1;ls"})
    name = make_vm_name("cts", evil, token="000000")
    assert len(name) <= 63 and name.endswith("-1-ls-000000")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    group = JobProperties({"type": "group", "groupid": "Train_Group", "jobid": 4})
    assert make_vm_name("cts", group, token="ffffff") == "cts-group-train-group-4-ffffff"


def test_jobscript_parsing_errors_name_the_file(tmp_path):
    p = tmp_path / "job.sh"
    p.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ValueError, match="job.sh.*properties"):
        parse_jobscript(p)
    jobscript(p, "true", resources={"tpu_type": "v6e-8"})
    assert parse_jobscript(p)[0].tpu_type == "v6e-8"
    jobscript(p, "true", resources={"tpu_type": "v4-8;reboot"})
    with pytest.raises(CloudConfigError, match="resources.tpu_type"):
        parse_jobscript(p)[0].tpu_type


def test_gcloud_argv_exact():
    spot = TpuSettings(project="my-proj", zone="us-central2-b", spot=True)
    assert gc.create_argv(spot, "cts-a-1-abcdef", "v6e-8") == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "cts-a-1-abcdef", "--project=my-proj",
        "--zone=us-central2-b", "--accelerator-type=v6e-8", "--version=tpu-ubuntu2204-base",
        "--spot", "--quiet"]
    assert gc.delete_argv(SETTINGS, "cts-a-1-abcdef", wait=False)[-2:] == ["--quiet", "--async"]
    assert gc.ssh_argv(SETTINGS, "cts-a-1-abcdef", "echo hi")[-2:] == ["--command", "echo hi"]
    with pytest.raises(CloudConfigError):
        gc.delete_argv(SETTINGS, "cts; reboot")
    with pytest.raises(ValueError, match="flag"):
        gc.scp_argv(SETTINGS, "cts-a-1-abcdef", ["--recurse"])


def test_remote_command_quotes_every_value(tmp_path):
    root = "/srv/a b;touch PWNED$(id)"
    cmd = gc.remote_job_command("cts-a-1-abcdef", "cts-a-1-abcdef.sh", root, "cts-a-1-abcdef-src.tar.gz")
    assert shlex.quote(root) in cmd and cmd.count(root) == cmd.count(shlex.quote(root))
    # bash parses it without running it: the hostile root stays one word
    assert subprocess.run(["bash", "-n", "-c", cmd]).returncode == 0
    words = next(shlex.split(p) for p in cmd.split("; ") if p.startswith("cd "))
    assert words == ["cd", root]
    with pytest.raises(ValueError, match="absolute"):
        gc.remote_job_command("cts-a-1-abcdef", "j.sh", "rel/path", "a.tar.gz")


# ------------------------------------------------------------------ lifecycle with the fake gcloud

def test_submit_runs_job_and_status_reports_success(tmp_path, env):
    job = jobscript(tmp_path / "job.sh", f"cd {shlex.quote(str(tmp_path))} && echo ran > out.txt")
    name = script("submit", str(job), env=env, cwd=tmp_path).stdout.strip()
    assert name.startswith("cts-train-cell-3-")
    first = script("status", name, env=env, cwd=tmp_path).stdout
    assert first in ("running\n", "success\n")
    wait_done(env, name)
    assert script("status", name, env=env, cwd=tmp_path).stdout == "success\n"
    assert (tmp_path / "out.txt").read_text() == "ran\n"
    assert verbs(env, name) == ["create", "scp", "ssh", "delete"]
    assert not (Path(env["FAKE_GCLOUD_ROOT"]) / "vms" / name).exists()  # the VM is gone


def test_status_after_restart_reads_state_from_disk(tmp_path, env):
    env = {**env, "FAKE_GCLOUD_SSH_SLEEP": "2"}
    job = jobscript(tmp_path / "job.sh", "true")
    name = script("submit", str(job), env=env, cwd=tmp_path).stdout.strip()
    wait_phase(env, name, "ssh")
    # a new process with nothing but the job id and the state dir: the runner is still alive
    assert script("status", name, env=env, cwd=tmp_path).stdout == "running\n"
    wait_done(env, name)
    assert script("status", name, env=env, cwd=tmp_path).stdout == "success\n"


def test_failed_job_is_failed_and_vm_deleted(tmp_path, env):
    name = script("submit", str(jobscript(tmp_path / "job.sh", "exit 3")), env=env, cwd=tmp_path).stdout.strip()
    st = wait_done(env, name)
    assert (st["result"], st["reason"]) == ("failed", "job exited 3 (VM READY)")
    assert script("status", name, env=env, cwd=tmp_path).stdout == "failed\n"
    assert verbs(env, name) == ["create", "scp", "ssh", "describe", "delete"]


def test_preempted_vm_reports_failed_so_snakemake_retries(tmp_path, env):
    env = {**env, "FAKE_GCLOUD_PREEMPT": "1", "CTS_TPU_SPOT": "1"}
    name = script("submit", str(jobscript(tmp_path / "job.sh", "true")), env=env, cwd=tmp_path).stdout.strip()
    st = wait_done(env, name)
    assert (st["result"], st["reason"]) == ("failed", "preempted")
    assert "--spot" in calls(env)[0]
    assert verbs(env, name)[-2:] == ["describe", "delete"]


def test_create_failure_is_failed(tmp_path, env):
    env = {**env, "FAKE_GCLOUD_CREATE_FAIL": "1"}
    name = script("submit", str(jobscript(tmp_path / "job.sh", "true")), env=env, cwd=tmp_path).stdout.strip()
    st = wait_done(env, name)
    assert st["result"] == "failed" and st["reason"].startswith("create failed")
    assert verbs(env, name) == ["create", "delete"]  # delete is tried: a timed-out create may exist


def test_cancel_stops_the_job_and_deletes_the_vm(tmp_path, env):
    env = {**env, "FAKE_GCLOUD_SSH_SLEEP": "30"}
    job = jobscript(tmp_path / "job.sh", f"touch {shlex.quote(str(tmp_path / 'ran'))}")
    name = script("submit", str(job), env=env, cwd=tmp_path).stdout.strip()
    wait_phase(env, name, "ssh")
    t0 = time.time()
    script("cancel", name, env=env, cwd=tmp_path)
    assert time.time() - t0 < 2.0  # cluster-generic gives cancel 2 s
    st = wait_done(env, name, timeout=10)
    assert (st["result"], st["reason"], st["vm_deleted"]) == ("failed", "cancelled", True)
    assert verbs(env, name)[-1] == "delete" and not (tmp_path / "ran").exists()


def test_orphaned_job_fails_and_frees_its_vm(tmp_path, env):
    """The runner died without a result (machine reboot): status says failed and deletes the VM."""
    name = "cts-train-cell-3-0a0a0a"
    dead = subprocess.Popen(["true"])
    dead.wait()
    state_dir = Path(env["CTS_TPU_STATE_DIR"])
    state_dir.mkdir(parents=True)
    (state_dir / f"{name}.json").write_text(json.dumps({
        "name": name, "settings": SETTINGS.to_dict(), "phase": "ssh", "result": None,
        "runner_pid": dead.pid, "submitted_at": 0, "events": []}))
    assert script("status", name, env=env, cwd=tmp_path).stdout == "failed\n"
    assert calls(env)[-1][3:] == ["delete", name, "--project=my-proj", "--zone=us-central2-b",
                                  "--quiet", "--async"]
    assert state(env, name)["result"] == "failed"


def test_dry_run_prints_every_call_and_makes_none(tmp_path, env):
    env = {**env, "DRY_RUN": "1"}
    out = script("submit", str(jobscript(tmp_path / "job.sh", "true")), env=env, cwd=tmp_path)
    name = out.stdout.splitlines()[0]  # cluster-generic reads the job id from the first line
    printed = [line for line in out.stderr.splitlines() if line.startswith("DRY_RUN: gcloud ")]
    assert [shlex.split(line)[5] for line in printed] == ["create", "scp", "ssh", "delete"]
    assert all(name in line for line in printed)
    assert calls(env) == []
    assert script("status", name, env=env, cwd=tmp_path).stdout == "failed\n"


@pytest.mark.parametrize("job_id", ["x; touch PWNED", "../../etc/passwd", "--zone=evil", "$(touch PWNED)", ""])
def test_injection_through_job_ids_is_rejected(tmp_path, env, job_id):
    for cmd in ("status", "cancel"):
        out = script(cmd, job_id, env=env, cwd=tmp_path, check=False)
        assert out.returncode != 0 and "job id" in out.stderr and out.stdout == ""
    assert calls(env) == [] and not (tmp_path / "PWNED").exists()


def test_injection_through_settings_is_rejected_before_any_call(tmp_path, env):
    job = jobscript(tmp_path / "job.sh", "true")
    for key, value in [("CTS_GCP_ZONE", "us-central2-b --impersonate-service-account=a@b"),
                       ("CTS_RUN_NAME", "x;touch PWNED"), ("CTS_TPU_TYPE", "v4-8`touch PWNED`")]:
        out = script("submit", str(job), env={**env, key: value}, cwd=tmp_path, check=False)
        assert out.returncode != 0 and key in out.stderr
    assert calls(env) == [] and not (tmp_path / "PWNED").exists()


def test_ship_sources_when_no_shared_filesystem(tmp_path, env):
    """--shared-fs-usage none (GCS storage): the checkout travels as a tarball and is unpacked at the
    same absolute path, bootstrap.sh runs, then the jobscript runs there with JAX on the TPU."""
    repo = tmp_path / "checkout"
    (repo / "gcp_tpu").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "activate").write_text("export VENV_ON=1\n")
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "Snakefile").write_text("# empty\n")
    (repo / "gcp_tpu" / "bootstrap.sh").write_text("echo boot >> bootstrapped\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    body = (f"python -m snakemake --snakefile {shlex.quote(str(repo / 'Snakefile'))} --shared-fs-usage 'none' "
            "|| true; echo \"$PWD $JAX_PLATFORMS $VENV_ON\" > shipped.txt")
    name = script("submit", str(jobscript(tmp_path / "job.sh", body)), env=env, cwd=tmp_path).stdout.strip()
    assert wait_done(env, name)["result"] == "success"
    assert (repo / "shipped.txt").read_text().split() == [str(repo), "tpu", "1"]
    assert (repo / "bootstrapped").read_text() == "boot\n"
    scp = next(a for a in calls(env) if a[3] == "scp")
    archive = Path(scp[5])
    assert archive.name == f"{name}-src.tar.gz"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [".gitignore", "Snakefile", "gcp_tpu/bootstrap.sh"]


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


# ------------------------------------------------------------------ end to end with real snakemake

def _tiny_config() -> dict:
    """The embedded config shrunk to one task, one method, one seed, a 1-layer model."""
    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    cfg.update(run_name="tpu_e2e", tasks=["synth_math"], methods=["B3"], ablations=[], seeds=[0])
    cfg["data"] = {"synth_math": {**cfg["data"]["synth_math"], "n_problems": 40}}
    cfg["model"] = {"emb_dim": 32, "num_heads": 2, "num_kv_heads": 2, "head_dim": 16, "mlp_dim": 64,
                    "num_layers": 1, "max_len": 512}
    cfg["base_policy"]["steps"] = 2
    cfg["train"]["steps"] = 2
    cfg["eval"].update(n_samples=1, pass_k=[1])
    return cfg


def _local_profile(dest: Path) -> Path:
    """gcp_tpu/profile.yaml with local storage (no bucket) and fast polling, scripts by absolute path."""
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    for key in ("default-storage-provider", "default-storage-prefix", "storage-gcs-project", "shared-fs-usage"):
        profile.pop(key)
    for key in ("submit", "status", "cancel"):
        profile[f"cluster-generic-{key}-cmd"] = str(PROFILE / profile[f"cluster-generic-{key}-cmd"])
    profile.update({"seconds-between-status-checks": 1, "latency-wait": 5, "retries": 0, "jobs": 2})
    dest.mkdir(parents=True)
    (dest / "profile.yaml").write_text(yaml.safe_dump(profile))
    return dest


def _snakemake_with_fake_tpus(tmp_path, env, targets: list[str], timeout: int) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir()
    (work / "workflow_config.yaml").write_text(yaml.safe_dump(_tiny_config()))
    profile = _local_profile(tmp_path / "profile_local")
    env = {**env, "CTS_TPU_STATE_DIR": str(work / ".snakemake" / "gcp_tpu")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(work), "--profile", str(profile), *targets,
         "--configfile", str(work / "workflow_config.yaml")],
        cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _assert_one_vm_per_job(env: dict, state_dir: Path) -> list[str]:
    names = sorted(p.stem for p in state_dir.glob("*.json"))
    assert names, "no job went through the gcp_tpu submit script"
    for name in names:
        assert json.loads((state_dir / f"{name}.json").read_text())["result"] == "success"
        assert verbs(env, name) == ["create", "scp", "ssh", "delete"], name
    assert sorted(a[4] for a in calls(env) if a[3] == "create") == names
    assert list((Path(env["FAKE_GCLOUD_ROOT"]) / "vms").iterdir()) == []  # every VM deleted
    return names


@pytest.mark.slow
def test_snakemake_profile_end_to_end_base_policy(tmp_path, env):
    """Real snakemake → cluster-generic → our scripts → fake gcloud → train_base on a "TPU VM";
    the data rules are localrules and must not take a VM."""
    _snakemake_with_fake_tpus(tmp_path, env, ["results/base/synth_math/final.json"], timeout=600)
    work = tmp_path / "work"
    assert json.loads((work / "results/base/synth_math/final.json").read_text())["steps"] >= 1
    names = _assert_one_vm_per_job(env, work / ".snakemake" / "gcp_tpu")
    rules = sorted(json.loads((work / ".snakemake/gcp_tpu" / f"{n}.json").read_text())["rule"] for n in names)
    assert rules == ["train_base"]


@pytest.mark.heavy
def test_snakemake_profile_end_to_end_train_cell(tmp_path, env):
    """Through base-policy SFT, rollouts, teacher, taxonomy, fingerprint to one training cell."""
    _snakemake_with_fake_tpus(tmp_path, env, ["results/train/synth_math/B3/seed0/final.json"], timeout=1800)
    work = tmp_path / "work"
    assert (work / "results/train/synth_math/B3/seed0/metrics.jsonl").exists()
    names = _assert_one_vm_per_job(env, work / ".snakemake" / "gcp_tpu")
    assert any("-train-cell-" in n for n in names) and any("-train-base-" in n for n in names)
