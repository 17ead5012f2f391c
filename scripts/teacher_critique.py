from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.teacher import teacher_critique

teacher_critique(snakemake.input[0], snakemake.params.teacher, snakemake.output.quadruples,
                 cache_dir=snakemake.params.cache_dir, workers=snakemake.threads, log=log,
                 eval_split=snakemake.params.eval_split, out_skipped=snakemake.output.skipped)
