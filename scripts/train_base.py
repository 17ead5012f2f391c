from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.train import train_base

p = snakemake.params
train_base(snakemake.wildcards.task, snakemake.input.train, p.model, p.tokenizer, p.base_policy,
           p.ckpt_root, snakemake.output[0], monitor=p.monitor, log=log, parallelism=p.parallelism or None)
