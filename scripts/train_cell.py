from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.train import train_cell

i, o, p = snakemake.input, snakemake.output, snakemake.params
train_cell(p.cell, i.base, i.train, i.tagged, p.ckpt_root, o.final, o.metrics, monitor=p.monitor, log=log)
