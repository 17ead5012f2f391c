from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.stats import stats_power

p = snakemake.params
stats_power(p.plan, dict(zip(p.tasks, snakemake.input.manifests)), p.eval_split, snakemake.output[0], log=log)
