from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.taxonomy import taxonomy_tag

taxonomy_tag(snakemake.input.quadruples, snakemake.input.attempts, snakemake.output.tagged,
             snakemake.output.summary, log=log)
