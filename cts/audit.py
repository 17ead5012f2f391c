"""Audit artifacts: the rendered DAG, a provenance record of the run, the table as HTML for the report.

`render_dag` renders `snakemake --dag` of a target to SVG (graphviz `dot`) and to mermaid. Without
graphviz the SVG holds the mermaid source as text (and says so), so the audit never silently
lacks a DAG.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

from cts.io import atomic_write_json, atomic_write_text, read_json, sha256_file, stable_json, sha256_text

__all__ = ["render_dag", "render_table_html", "write_provenance"]

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


def render_table_html(md_path: str, out_html: str, log=print) -> None:
    """results/table.md as an HTML fragment for `snakemake --report`: headings, pipe tables,
    paragraphs, **bold** and `code` — the subset build_table writes (no markdown package needed)."""
    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<i>\1</i>", text)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    with open(md_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, para, i = [], [], 0

    def flush():
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            flush()
            level = min(6, len(line) - len(line.lstrip("#")))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(line)) + "</tr>"]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(lines[i])) + "</tr>")
                i += 1
            out.append("<table border='1' cellpadding='3' style='border-collapse:collapse'>" + "".join(rows) + "</table>")
            continue
        elif line.strip().startswith(("- ", "* ")):
            flush()
            out.append(f"<ul><li>{inline(line.strip()[2:])}</li></ul>")
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    atomic_write_text(out_html, "<html><body>\n" + "\n".join(out) + "\n</body></html>\n")
    log(f"rendered {md_path} → {out_html}")
