"""The gcloud calls of one job: argv builders (pure) and one executor that can dry-run them.

One job = one Cloud TPU VM: `tpu-vm create` → `tpu-vm scp` (jobscript, and the source tarball
when the VM shares no filesystem with the submitter) → `tpu-vm ssh --command` (run the job) →
`tpu-vm delete`. Every call is an argv list run without a local shell; the only string a shell
parses is the remote command, and each value in it is shlex-quoted.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cts.cloud.settings import TpuSettings, validate_vm_name

__all__ = [
    "GcloudResult",
    "JOB_DIR",
    "create_argv",
    "delete_argv",
    "describe_argv",
    "remote_job_command",
    "run_gcloud",
    "scp_argv",
    "ssh_argv",
]

# Folder under the VM user's home that receives the jobscript (and source tarball).
JOB_DIR = "cts-job"


def _tpu_vm(gcloud: str, verb: str, name: str, s: TpuSettings) -> list[str]:
    validate_vm_name(name)
    return [gcloud, "compute", "tpus", "tpu-vm", verb, name, f"--project={s.project}", f"--zone={s.zone}"]


def create_argv(s: TpuSettings, name: str, accelerator_type: str | None = None,
                gcloud: str = "gcloud") -> list[str]:
    """`tpu-vm create`; `accelerator_type` overrides s.accelerator_type (a rule's tpu_type)."""
    from cts.cloud.settings import validate_accelerator_type

    kind = validate_accelerator_type(accelerator_type or s.accelerator_type, "tpu_type")
    argv = _tpu_vm(gcloud, "create", name, s) + [
        f"--accelerator-type={kind}", f"--version={s.runtime_version}"]
    if s.spot:
        argv.append("--spot")
    return argv + ["--quiet"]


def scp_argv(s: TpuSettings, name: str, local_paths: Sequence[str], gcloud: str = "gcloud") -> list[str]:
    """Copy local files into ~/cts-job/ on worker 0. Paths are argv elements, never shell text."""
    if not local_paths:
        raise ValueError("scp_argv: no files to copy")
    for p in local_paths:
        if p.startswith("-") or ":" in p:
            raise ValueError(f"scp_argv: refusing local path {p!r} (looks like a flag or a remote spec)")
    validate_vm_name(name)
    return ([gcloud, "compute", "tpus", "tpu-vm", "scp", *local_paths, f"{name}:{JOB_DIR}/",
             f"--project={s.project}", f"--zone={s.zone}", "--worker=0", "--quiet"])


def ssh_argv(s: TpuSettings, name: str, remote_command: str, gcloud: str = "gcloud") -> list[str]:
    return _tpu_vm(gcloud, "ssh", name, s) + ["--worker=0", "--quiet", "--command", remote_command]


def describe_argv(s: TpuSettings, name: str, gcloud: str = "gcloud") -> list[str]:
    """Prints the node state alone: READY, CREATING, PREEMPTED, TERMINATED, ..."""
    return _tpu_vm(gcloud, "describe", name, s) + ["--format=value(state)"]


def delete_argv(s: TpuSettings, name: str, wait: bool = True, gcloud: str = "gcloud") -> list[str]:
    """`--async` when `wait` is False: returns at once (cancel has a 2 s budget in cluster-generic)."""
    return _tpu_vm(gcloud, "delete", name, s) + ["--quiet"] + ([] if wait else ["--async"])


def remote_job_command(name: str, jobscript_file: str, source_root: str | None = None,
                       source_archive: str | None = None) -> str:
    """The shell command run on the VM by `tpu-vm ssh --command`.

    Without a source archive the VM is assumed to share the workdir with the submitter
    (the jobscript then starts with its own `cd`). With one, the archive is unpacked at
    `source_root` — the same absolute path as on the submitting machine, because the jobscript
    names the Snakefile by absolute path — gcp_tpu/bootstrap.sh installs the environment, and
    the jobscript runs from there.
    """
    validate_vm_name(name)
    home = '"$HOME"/' + shlex.quote(f"{JOB_DIR}/")
    job = home + shlex.quote(jobscript_file)
    if source_archive is None:
        return f"set -e; sh {job}"
    if source_root is None or not source_root.startswith("/"):
        raise ValueError(f"remote_job_command: source_root must be absolute, got {source_root!r}")
    root, archive = shlex.quote(source_root), home + shlex.quote(source_archive)
    return "; ".join([
        "set -e",
        # mkdir as the ssh user where allowed, otherwise through sudo (TPU VM users have it)
        f'mkdir -p {root} 2>/dev/null || {{ sudo mkdir -p {root} && sudo chown "$(id -u):$(id -g)" {root}; }}',
        f"tar -xzf {archive} -C {root}",
        f"cd {root}",
        "sh gcp_tpu/bootstrap.sh",
        ". .venv/bin/activate",
        # the stage scripts default JAX_PLATFORMS to cpu (laptops); on the VM JAX must use the TPU
        "export JAX_PLATFORMS=tpu",
        f"sh {job}",
    ])


@dataclass(frozen=True)
class GcloudResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str


def run_gcloud(argv: Sequence[str], dry_run: bool = False, capture: bool = False,
               log=None, popen_hook=None) -> GcloudResult:
    """Run one gcloud argv (no shell). With dry_run, print it to stderr and pretend success.

    `log` (a text file) receives the command line and, unless `capture`, the output.
    `popen_hook(proc)` is told about the child so a signal handler can stop it (ssh).
    """
    line = shlex.join(argv)
    if dry_run:
        print(f"DRY_RUN: {line}", file=sys.stderr, flush=True)
        return GcloudResult(tuple(argv), 0, "")
    if log is not None:
        print(f"$ {line}", file=log, flush=True)
    out = subprocess.PIPE if capture else (log or subprocess.DEVNULL)
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=log or subprocess.DEVNULL, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"gcloud executable {argv[0]!r} not found on PATH") from e
    if popen_hook is not None:
        popen_hook(proc)
    try:
        stdout, _ = proc.communicate()
    finally:
        if popen_hook is not None:
            popen_hook(None)
    return GcloudResult(tuple(argv), proc.returncode, stdout or "")
