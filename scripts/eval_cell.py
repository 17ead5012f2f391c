from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.eval import eval_cell

eval_cell(snakemake.input.final, snakemake.input.test, snakemake.input.tagged, snakemake.params.eval,
          snakemake.params.method, int(snakemake.params.seed), snakemake.output[0], log=log,
          skipped_path=snakemake.input.skipped)
