from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.audit import audit_dag

audit_dag(snakemake.params.target, dict(snakemake.params.config), snakemake.output.svg, snakemake.output.mermaid,
          log=log)
