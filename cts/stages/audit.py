"""rules/audit.smk: the rendered DAG, the provenance record, the table as HTML for the report."""

from __future__ import annotations

import shutil

from cts.audit import render_dag, render_table_html, write_provenance
from cts.io import atomic_open

__all__ = ["audit_dag", "audit_provenance", "audit_report_table"]


def audit_dag(target: str, config: dict, out_svg: str, out_mermaid: str, log=print) -> None:
    renderer = render_dag(target, config, out_svg, out_mermaid)
    log(f"DAG of {target} rendered with {renderer}")


def audit_provenance(config: dict, manifest_paths: list[str], fingerprints: str, teacher_cache: str,
                     out_provenance: str, out_fingerprints: str, log=print) -> None:
    """The provenance record, and the fairness fingerprints copied beside it."""
    write_provenance(config, manifest_paths, fingerprints, teacher_cache, out_provenance)
    with open(fingerprints, "rb") as src, atomic_open(out_fingerprints, "wb") as dst:
        shutil.copyfileobj(src, dst)
    log("provenance written")


def audit_report_table(md_path: str, out_html: str, log=print) -> None:
    render_table_html(md_path, out_html, log=log)
