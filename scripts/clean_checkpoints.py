from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.train import clean_checkpoints

clean_checkpoints(snakemake.params.root, snakemake.params.jobs, log=log)
