"""Submit / run / status / cancel of one Snakemake job on one Cloud TPU VM (cluster-generic).

Lifecycle, one state file per job at `<state_dir>/<name>.json` (default `.snakemake/gcp_tpu/`):

  submit   parse the jobscript, pick a validated VM name, copy the jobscript into the state dir,
           write state {phase: submitted}, start a detached runner, print the name (the
           external job id Snakemake stores and later passes to status/cancel).
  runner   create → scp → ssh (runs the job) → delete, recording each phase; writes
           `result` (success|failed) only after the VM is deleted.
  status   prints exactly one of running|success|failed from the state file, so a restarted
           Snakemake re-attaches: a live runner → running; a finished one → its result; a dead
           runner without result (machine rebooted) → failed, and the VM is deleted (async).
  cancel   SIGTERM to the runner, which stops ssh and deletes the VM; without a live runner the
           VM is deleted directly (async; cluster-generic gives cancel 2 s).

A preempted Spot VM fails the ssh step; the runner then sees state PREEMPTED and reports
`failed` (reason "preempted"), so Snakemake retries the job (profile `retries`) on a new VM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

from cts.cloud import gcloud as gc
from cts.cloud.settings import CloudConfigError, TpuSettings, validate_accelerator_type, validate_vm_name
from cts.io import DataError, atomic_write_json, read_json

__all__ = [
    "JobProperties",
    "cancel",
    "default_state_dir",
    "make_vm_name",
    "parse_jobscript",
    "run_job",
    "status",
    "submit",
]

STATUSES = ("running", "success", "failed")
_PROPS_RE = re.compile(r"^# properties = (\{.*\})\s*$", re.M)
_SHARED_FS_RE = re.compile(r"--shared-fs-usage((?:\s+'?[a-z-]+'?)+)")
_SNAKEFILE_RE = re.compile(r"--snakefile\s+(?:'([^']+)'|(\S+))")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CTS_TPU_STATE_DIR") or ".snakemake/gcp_tpu")


def _dry_run(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("DRY_RUN", "").strip().lower() in {"1", "true", "yes"}


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
    def tpu_type(self) -> str | None:
        kind = (self.get("resources") or {}).get("tpu_type")
        return None if kind in (None, "") else validate_accelerator_type(str(kind), "resources.tpu_type")


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


def _slug(text: str, width: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:width].strip("-")
    return slug or "job"


def make_vm_name(run_name: str, props: JobProperties, token: str | None = None) -> str:
    """`<run>-<rule>-<jobid>-<6 hex>`: readable in the console, unique across retries/restarts.

    The rule name is reduced to [a-z0-9-] (Snakemake rule names allow `_`); the random token
    keeps retries of one job on distinct VMs. The result is validated as a TPU node name.
    """
    token = token or secrets.token_hex(3)
    jobid = _slug(props.jobid, 8)
    name = f"{run_name}-{_slug(props.rule, 63 - len(run_name) - len(jobid) - len(token) - 3)}-{jobid}-{token}"
    return validate_vm_name(name, "VM name derived from the jobscript")


def _needs_source(jobscript_text: str) -> bool:
    """True when Snakemake told the job it shares no sources with us (e.g. GCS storage)."""
    m = _SHARED_FS_RE.search(jobscript_text)
    if m is None:  # an old jobscript without the flag shares everything
        return False
    values = {v.strip("'") for v in m.group(1).split()}
    return "sources" not in values


def _source_root(jobscript_text: str) -> Path:
    m = _SNAKEFILE_RE.search(jobscript_text)
    snakefile = Path(m.group(1) or m.group(2)) if m else Path("Snakefile")
    folder = snakefile.resolve().parent
    out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 else folder


def _pack_source(root: Path, archive: Path) -> int:
    """Tar the files git tracks or would track (no .venv, results, work/) under root."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{root}: not a git checkout; cannot ship sources ({out.stderr.strip()})")
    files = [f for f in out.stdout.split("\0") if f and (root / f).is_file()]
    tmp = archive.with_suffix(".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(files):
            tar.add(root / f, arcname=f, recursive=False)
    os.replace(tmp, archive)
    return len(files)


# ---------------------------------------------------------------- state files

def _state_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / f"{validate_vm_name(name, 'job id')}.json"


def _load(state_dir: Path, name: str) -> dict:
    path = _state_path(state_dir, name)
    state = read_json(path)
    if not isinstance(state, dict) or state.get("name") != name:
        raise DataError(f"{path}: not a gcp_tpu state file for {name!r}")
    return state


def _update(path: Path, **changes) -> dict:
    state = read_json(path)
    state.update(changes)
    state.setdefault("events", []).append([round(time.time(), 3), changes.get("phase", "update")])
    atomic_write_json(path, state)
    return state


# ---------------------------------------------------------------- submit

def submit(jobscript: str | os.PathLike, env: Mapping[str, str] | None = None,
           detach: bool = True) -> str:
    """Register a job and start its runner; returns the VM name (the external job id)."""
    env = dict(os.environ if env is None else env)
    settings = TpuSettings.from_env(env)
    props, text = parse_jobscript(jobscript)
    tpu_type = props.tpu_type or settings.accelerator_type
    name = make_vm_name(settings.run_name, props)
    state_dir = default_state_dir(env)
    state_dir.mkdir(parents=True, exist_ok=True)
    job_copy = state_dir / f"{name}.sh"  # Snakemake may clean its tmpdir before we re-attach
    job_copy.write_text(text, encoding="utf-8")
    state = {
        "name": name, "rule": props.rule, "snakemake_jobid": props.jobid,
        "settings": settings.to_dict(), "tpu_type": tpu_type,
        "jobscript": job_copy.name, "source_root": None, "source_archive": None,
        "phase": "submitted", "result": None, "reason": None, "runner_pid": None,
        "submitted_at": time.time(), "events": [],
    }
    if _needs_source(text):
        root = _source_root(text)
        archive = state_dir / f"{name}-src.tar.gz"
        state["n_source_files"] = _pack_source(root, archive)
        state["source_root"], state["source_archive"] = str(root), archive.name
    path = _state_path(state_dir, name)
    atomic_write_json(path, state)
    if _dry_run(env) or not detach:
        run_job(path, dry_run=_dry_run(env))
        return name
    log = open(state_dir / f"{name}.log", "a")
    runner = subprocess.Popen(
        [sys.executable, "-m", "cts.cloud.runner", str(path.resolve())],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                 env.get("PYTHONPATH")]))})
    log.close()
    del runner  # detached: it records its own pid and outlives this process and Snakemake
    return name


# ---------------------------------------------------------------- runner

class _Cancelled(Exception):
    pass


def run_job(state_path: str | os.PathLike, dry_run: bool = False) -> str:
    """create → scp → ssh → delete for one state file; returns and records the result."""
    path = Path(state_path)
    state = read_json(path)
    s = TpuSettings.from_dict(state["settings"], source=str(path))
    name, state_dir = validate_vm_name(state["name"], "job id"), path.parent
    log = sys.stderr  # the runner's own log file; the terminal under DRY_RUN (stdout is the job id)
    _update(path, runner_pid=os.getpid(), phase="runner")
    child: dict = {"proc": None, "cancelled": False}

    def on_term(signum, frame):  # cancel: stop the job, but let create/delete finish
        child["cancelled"] = True
        if child["proc"] is not None and child.get("step") == "ssh":
            child["proc"].terminate()

    if not dry_run:
        signal.signal(signal.SIGTERM, on_term)

    def call(argv, step, capture=False):
        if child["cancelled"] and step not in ("delete", "describe"):
            raise _Cancelled()
        child["step"] = step
        _update(path, phase=step)
        return gc.run_gcloud(argv, dry_run=dry_run, capture=capture, log=log,
                             popen_hook=lambda p: child.__setitem__("proc", p))

    result, reason = "failed", None
    try:
        if call(gc.create_argv(s, name, state["tpu_type"]), "create").returncode != 0:
            reason = "create failed (quota, stockout or bad settings; see the log)"
        else:
            files = [str(state_dir / state["jobscript"])]
            if state.get("source_archive"):
                files.append(str(state_dir / state["source_archive"]))
            if call(gc.scp_argv(s, name, files), "scp").returncode != 0:
                reason = "scp failed"
            else:
                cmd = gc.remote_job_command(name, state["jobscript"], state.get("source_root"),
                                            state.get("source_archive"))
                rc = call(gc.ssh_argv(s, name, cmd), "ssh").returncode
                if child["cancelled"]:
                    reason = "cancelled"
                elif rc == 0:
                    result = "success"
                else:
                    vm_state = call(gc.describe_argv(s, name), "describe", capture=True).stdout.strip()
                    reason = "preempted" if vm_state == "PREEMPTED" else f"job exited {rc} (VM {vm_state or '?'})"
    except _Cancelled:
        reason = "cancelled"
    finally:
        deleted = call(gc.delete_argv(s, name), "delete").returncode == 0
        if dry_run:
            result, reason = "failed", "DRY_RUN: no gcloud call was made"
        _update(path, phase="done", result=result, reason=reason, vm_deleted=deleted)
    print(f"{name}: {result}" + (f" ({reason})" if reason else ""), file=log, flush=True)
    return result


# ---------------------------------------------------------------- status / cancel

def _runner_alive(state: dict, state_path: Path) -> bool:
    pid = state.get("runner_pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # guard against pid reuse after a reboot
        return str(state_path.resolve()).encode() in cmdline.read_bytes()
    return True


def status(name: str, env: Mapping[str, str] | None = None) -> str:
    """running|success|failed for one job id, from its state file (works after a restart)."""
    env = os.environ if env is None else env
    state_dir = default_state_dir(env)
    path = _state_path(state_dir, name)
    if not path.exists():
        print(f"gcp_tpu status: no state file {path}; reporting failed", file=sys.stderr)
        return "failed"
    state = _load(state_dir, name)
    if state.get("result") in ("success", "failed"):
        return state["result"]
    if _runner_alive(state, path):
        return "running"
    if state.get("phase") == "submitted" and time.time() - state.get("submitted_at", 0) < 30:
        return "running"  # submit is still starting the runner
    # orphan: the runner died without a result (reboot, OOM kill); free the VM and rerun the job
    s = TpuSettings.from_dict(state["settings"], source=str(path))
    gc.run_gcloud(gc.delete_argv(s, name, wait=False), dry_run=_dry_run(env))
    _update(path, phase="done", result="failed", reason="runner died; VM deleted (async)")
    return "failed"


def cancel(names: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Stop each job and delete its VM; returns what was done per job (for the log)."""
    env = os.environ if env is None else env
    state_dir = default_state_dir(env)
    done = []
    for name in names:
        path = _state_path(state_dir, name)
        if not path.exists():
            done.append(f"{name}: no state file")
            continue
        state = _load(state_dir, name)
        if state.get("result") is not None:
            done.append(f"{name}: already {state['result']}")
        elif _runner_alive(state, path):
            os.kill(int(state["runner_pid"]), signal.SIGTERM)  # the runner deletes the VM
            done.append(f"{name}: runner signalled")
        else:
            s = TpuSettings.from_dict(state["settings"], source=str(path))
            gc.run_gcloud(gc.delete_argv(s, name, wait=False), dry_run=_dry_run(env))
            _update(path, phase="done", result="failed", reason="cancelled; VM deleted (async)")
            done.append(f"{name}: VM delete requested")
    return done
