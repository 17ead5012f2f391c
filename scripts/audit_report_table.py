from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.audit import audit_report_table

audit_report_table(snakemake.input[0], snakemake.output[0], log=log)
