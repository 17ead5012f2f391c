"""Audit artifacts: the rendered DAG and a provenance record of the run.

`render_dag` renders `snakemake --dag` of a target to SVG (graphviz `dot`) and to mermaid. Without
graphviz the SVG holds the mermaid source as text (and says so), so the audit never silently
lacks a DAG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

from cts.io import atomic_write_json, atomic_write_text, read_json, sha256_file, stable_json, sha256_text

__all__ = ["render_dag", "write_provenance"]

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ott-jax", "maxtext", "google-tunix",
            "snakemake", "numpy", "scipy", "statsmodels", "scikit-learn", "pandas", "anthropic", "openai")


def _snakemake_dag(target: str, configfile: str, fmt: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--nolock", "--dag", fmt, "--configfile", configfile,
           "--", target]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def render_dag(target: str, config: dict, out_svg: str, out_mermaid: str) -> str:
    """Write the DAG of `target` as SVG (via dot) and mermaid; returns the renderer used for SVG."""
    cfg_path = out_mermaid + ".config.json"
    atomic_write_text(cfg_path, json.dumps(config, sort_keys=True))
    try:
        mermaid = _snakemake_dag(target, cfg_path, "mermaid-js")
        dot_src = _snakemake_dag(target, cfg_path, "dot")
    finally:
        os.unlink(cfg_path)
    atomic_write_text(out_mermaid, mermaid)
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=dot_src, check=True, capture_output=True, text=True).stdout
        atomic_write_text(out_svg, svg)
        return "graphviz"
    lines = "".join(f'<text x="10" y="{20 + 14 * i}" font-family="monospace" font-size="12">'
                    f"{line.replace('&', '&amp;').replace('<', '&lt;')}</text>"
                    for i, line in enumerate(mermaid.splitlines()))
    atomic_write_text(out_svg, f'<svg xmlns="http://www.w3.org/2000/svg" width="1200" '
                               f'height="{40 + 14 * len(mermaid.splitlines())}">'
                               f"<!-- graphviz not installed: mermaid source shown -->{lines}</svg>\n")
    return "mermaid"


def _git() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    commit = run("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def write_provenance(config: dict, manifests: list[str], fingerprints: str, teacher_cache: str,
                     out_path: str) -> None:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    cache = None
    if os.path.isdir(teacher_cache):
        from cts.teachers.cache import ResponseCache

        cache = ResponseCache(teacher_cache).provenance()
    atomic_write_json(out_path, {
        "git": _git(), "config_sha256": sha256_text(stable_json(config)), "config": config,
        "python": sys.version.split()[0], "packages": versions,
        "data": {m: {"sha256": sha256_file(m), "splits": {s: v["sha256"] for s, v in read_json(m)["splits"].items()}}
                 for m in sorted(manifests)},
        "fingerprints": read_json(fingerprints), "teacher_cache": cache,
    })
