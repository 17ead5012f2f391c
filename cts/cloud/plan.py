"""A dry run of the gcp_tpu profile that needs no credentials: the JobSets and the storage plan.

`snakemake --profile gcp_tpu -n` must read the bucket to know what is up to date, so it needs GCS
credentials (the storage plugin asks for them at start). This plan instead asks Snakemake for the
jobs of a run from an empty bucket (`-n --forceall` with the storage settings taken out of a copy
of the profile, so no plugin talks to GCP) and prints, per job, where it runs (here: a localrule;
there: one JobSet, its manifest) and the `gs://` URI of each output. No API, no bucket, no
kubernetes client is touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml

from cts.cloud.executor import JobProperties, job_spec, make_job_name
from cts.cloud.jobset import render_jobset
from cts.cloud.settings import ClusterSettings

__all__ = ["local_rules", "parse_dry_run", "plan"]

STORAGE_KEYS = ("default-storage-provider", "default-storage-prefix", "storage-gcs-project",
                "shared-fs-usage", "local-storage-prefix")
_JOB_RE = re.compile(r"^(local)?rule (\w+):\s*$")
_FIELD_RE = re.compile(r"^\s{4}(\w+): (.*)$")


def local_rules(project: Path) -> set[str]:
    """Rule names in the `localrules:` blocks of the Snakefile and rules/*.smk."""
    names: set[str] = set()
    for path in [project / "Snakefile", *sorted((project / "rules").glob("*.smk"))]:
        if not path.exists():
            continue
        for m in re.finditer(r"^localrules:\s*\n((?:[ \t]+[\w, ]+\n?)+)", path.read_text(), re.M):
            names |= {n.strip() for n in re.split(r"[,\s]+", m.group(1)) if n.strip()}
    return names


def _resources(text: str) -> dict:
    out = {}
    for item in text.split(", "):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.isdigit() else value.strip()
    return out


def parse_dry_run(text: str) -> list[dict]:
    """Jobs of `snakemake -n` output: rule, jobid, outputs, wildcards, resources."""
    jobs: list[dict] = []
    for line in text.splitlines():
        m = _JOB_RE.match(line)
        if m:
            jobs.append({"rule": m.group(2), "jobid": None, "output": [], "wildcards": "", "resources": {}})
            continue
        f = _FIELD_RE.match(line)
        if f and jobs:
            key, value = f.groups()
            if key == "output":
                jobs[-1]["output"] = [v.strip() for v in value.split(", ")]
            elif key == "jobid":
                jobs[-1]["jobid"] = int(value)
            elif key == "wildcards":
                jobs[-1]["wildcards"] = value
            elif key == "resources":
                jobs[-1]["resources"] = _resources(value)
    return jobs


def plan(snakemake_args: list[str], project: Path, profile: Path, env: Mapping[str, str] | None = None,
         out=sys.stdout) -> list[dict]:
    """Print the plan; returns the parsed jobs (each with `where` and, for remote jobs, `manifest`)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("DRY_RUN", "1")  # no image needed: a placeholder digest is printed
    settings = ClusterSettings.from_env(env)
    bucket = env.get("CTS_GCS_BUCKET") or "BUCKET"
    prefix = f"gs://{bucket}/cts"
    cfg = yaml.safe_load((profile / "profile.yaml").read_text())
    local_cfg = {k: v for k, v in cfg.items() if k not in STORAGE_KEYS}
    with tempfile.TemporaryDirectory(prefix="cts-plan-") as tmp:
        (Path(tmp) / "profile.yaml").write_text(yaml.safe_dump(local_cfg))
        argv = [str(Path(sys.executable).parent / "snakemake"), "--profile", tmp, "--dry-run", "--forceall",
                "--snakefile", str(project / "Snakefile"), *snakemake_args]
        res = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"snakemake -n failed (rc {res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    jobs = parse_dry_run(res.stdout)
    from cts.cloud.state import check_state_paths

    try:  # the run itself (shared-fs-usage: none) stops on this; say so in the plan too
        config_files = [a for a in snakemake_args if a.endswith((".yaml", ".yml"))]
        cfg_all: dict = {}
        for f in [project / "workflow_config.yaml", *map(Path, config_files)]:
            if f.exists():
                cfg_all.update(yaml.safe_load(f.read_text()) or {})
        check_state_paths(cfg_all, [])
    except ValueError as e:
        print(f"# PROBLEM: {e}", file=out)
    local = local_rules(project)
    print(f"# gcp_tpu plan: {len(jobs)} jobs from an empty bucket; outputs under {prefix}/ "
          f"(the bucket is not read: run `snakemake --profile gcp_tpu -n` with credentials for what is "
          f"up to date)", file=out)
    manifests = []
    for job in jobs:
        job["where"] = "local" if job["rule"] in local else "jobset"
        head = f"{job['rule']} (job {job['jobid']}{', ' + job['wildcards'] if job['wildcards'] else ''})"
        if job["where"] == "jobset":
            props = JobProperties({"rule": job["rule"], "jobid": job["jobid"], "resources": job["resources"]})
            name = make_job_name(settings.run_name, props, token="000000")
            spec = job_spec(props, f"# the Snakemake jobscript of {head}, written at submit time", settings, name)
            job["manifest"] = render_jobset(spec, settings.namespace)
            manifests.append(job["manifest"])
            print(f"{head}: JobSet {name}, {spec.slices} x {spec.tpu_type}"
                  f"{' (Spot)' if spec.spot else ''}, queue {spec.queue}", file=out)
        else:
            print(f"{head}: localrule (runs here)", file=out)
        for o in job["output"]:
            print(f"    -> {prefix}/{o}", file=out)
    if manifests:
        print("---\n" + "---\n".join(yaml.safe_dump(m, sort_keys=False) for m in manifests), file=out, end="")
    return jobs
