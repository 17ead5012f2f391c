from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.stats import stats_human_eval_export

i, o, p = snakemake.input, snakemake.output, snakemake.params
stats_human_eval_export(list(i.evals), list(i.tests), p.n_per_method, p.seed, o.sheet, o.key, log=log)
