"""Validated Cloud TPU settings for the `gcp_tpu` Snakemake profile.

Every value that reaches a gcloud argv or the remote shell command is checked here against a
strict pattern first. A value that does not match raises `CloudConfigError` naming the
environment variable (or job property) it came from. Quoting comes second: the gcloud calls
are argv lists (no local shell), and the one remote command string is built with shlex.quote
(cts/cloud/gcloud.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = [
    "CloudConfigError",
    "TpuSettings",
    "validate_accelerator_type",
    "validate_project",
    "validate_run_name",
    "validate_runtime_version",
    "validate_vm_name",
    "validate_zone",
]


class CloudConfigError(ValueError):
    """A setting or name failed validation; the message names where it came from."""


# Cloud TPU node names: lowercase RFC 1035 label, at most 63 characters.
VM_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# GCP project ids: 6-30 chars, lowercase letters, digits, hyphens; starts with a letter.
PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# Zones: region-location + letter, e.g. us-central2-b, europe-west4-a, us-east5-a.
ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]{1,2}-[a-z]$")
# Accelerator types: v2-8, v3-8, v4-8, v5litepod-8, v5p-8, v6e-8 ...
ACCELERATOR_RE = re.compile(r"^v[0-9][a-z0-9]{0,15}-[0-9]{1,5}$")
# Runtime (software) versions: tpu-ubuntu2204-base, v2-alpha-tpuv6e, tpu-vm-v4-base ...
RUNTIME_RE = re.compile(r"^[a-z0-9][-a-z0-9.]{0,62}$")
# Prefix of every VM name this profile creates (so `gcloud ... list --filter=name~^cts-` finds them).
RUN_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def _check(value: str, pattern: re.Pattern, what: str, example: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise CloudConfigError(
            f"{what}: {value!r} is not valid (must match {pattern.pattern}, e.g. {example!r})")
    return value


def validate_vm_name(name: str, what: str = "TPU VM name") -> str:
    return _check(name, VM_NAME_RE, what, "cts-train-cell-12-a1b2c3")


def validate_project(project: str, what: str = "CTS_GCP_PROJECT") -> str:
    return _check(project, PROJECT_RE, what, "my-project-123")


def validate_zone(zone: str, what: str = "CTS_GCP_ZONE") -> str:
    return _check(zone, ZONE_RE, what, "us-central2-b")


def validate_accelerator_type(kind: str, what: str = "CTS_TPU_TYPE") -> str:
    return _check(kind, ACCELERATOR_RE, what, "v4-8")


def validate_runtime_version(version: str, what: str = "CTS_TPU_RUNTIME") -> str:
    return _check(version, RUNTIME_RE, what, "tpu-ubuntu2204-base")


def validate_run_name(run: str, what: str = "CTS_RUN_NAME") -> str:
    return _check(run, RUN_NAME_RE, what, "cts")


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise CloudConfigError(f"{key}: {env[key]!r} is not a boolean (use 1/0, true/false)")


@dataclass(frozen=True)
class TpuSettings:
    """Where and on what each job runs. Frozen at submit time into the job's state file.

    Attributes:
      project: GCP project id (CTS_GCP_PROJECT).
      zone: TPU zone (CTS_GCP_ZONE).
      accelerator_type: slice type (CTS_TPU_TYPE, default v4-8); a rule may override it with
        `resources: tpu_type="..."`. Single-host slices only (one worker runs the job).
      runtime_version: TPU VM image (CTS_TPU_RUNTIME, default tpu-ubuntu2204-base).
      spot: create Spot VMs (CTS_TPU_SPOT=1); preemption then surfaces as a failed job that
        Snakemake retries (profile `retries`).
      run_name: prefix of every VM name (CTS_RUN_NAME, default cts).
    """

    project: str
    zone: str
    accelerator_type: str = "v4-8"
    runtime_version: str = "tpu-ubuntu2204-base"
    spot: bool = False
    run_name: str = "cts"

    def __post_init__(self):
        validate_project(self.project)
        validate_zone(self.zone)
        validate_accelerator_type(self.accelerator_type)
        validate_runtime_version(self.runtime_version)
        validate_run_name(self.run_name)
        if not isinstance(self.spot, bool):
            raise CloudConfigError(f"spot: expected a bool, got {self.spot!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TpuSettings":
        """Read CTS_GCP_PROJECT, CTS_GCP_ZONE (required), CTS_TPU_TYPE, CTS_TPU_RUNTIME,
        CTS_TPU_SPOT, CTS_RUN_NAME (optional); each is validated."""
        env = os.environ if env is None else env
        missing = [k for k in ("CTS_GCP_PROJECT", "CTS_GCP_ZONE") if not env.get(k)]
        if missing:
            raise CloudConfigError(f"environment variable(s) {missing} must be set for the gcp_tpu profile")
        defaults = cls.__dataclass_fields__
        return cls(
            project=env["CTS_GCP_PROJECT"],
            zone=env["CTS_GCP_ZONE"],
            accelerator_type=env.get("CTS_TPU_TYPE") or defaults["accelerator_type"].default,
            runtime_version=env.get("CTS_TPU_RUNTIME") or defaults["runtime_version"].default,
            spot=_flag(env, "CTS_TPU_SPOT"),
            run_name=env.get("CTS_RUN_NAME") or defaults["run_name"].default,
        )

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "state") -> "TpuSettings":
        """Rebuild (and re-validate) settings stored in a state file."""
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as e:
            raise CloudConfigError(f"{source}: settings lack key {e.args[0]!r}") from e

    def to_dict(self) -> dict:
        return asdict(self)
