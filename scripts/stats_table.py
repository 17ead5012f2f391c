from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.stats import stats_table

i, o, p = snakemake.input, snakemake.output, snakemake.params
stats_table(list(i.evals), list(i.metrics), p.plan, dict(zip(p.tasks, i.manifests)), p.eval_split,
            p.stats, o.md, o.json, o.figures, tagged_files=list(i.tagged), log=log)
