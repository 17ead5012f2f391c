from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.train import clean_checkpoints

clean_checkpoints(snakemake.params.root, snakemake.params.jobs, log=log)
