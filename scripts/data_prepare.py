from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.data import data_prepare

data_prepare(snakemake.wildcards.task, snakemake.params.data, snakemake.output[0], log=log)
