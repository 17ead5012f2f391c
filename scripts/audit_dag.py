from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.audit import render_dag

renderer = render_dag(snakemake.params.target, dict(snakemake.params.config), snakemake.output.svg,
                      snakemake.output.mermaid)
log(f"DAG of {snakemake.params.target} rendered with {renderer}")
