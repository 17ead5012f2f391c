from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.teacher import teacher_rollouts

splits = dict(zip(snakemake.params.splits, snakemake.input.splits))
teacher_rollouts(snakemake.input.base, splits, snakemake.params.rollouts, snakemake.output[0], log=log,
                 parallelism=snakemake.params.parallelism or None)
