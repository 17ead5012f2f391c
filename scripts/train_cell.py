from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages import train_cell

i, o = snakemake.input, snakemake.output
train_cell(snakemake.params.cell, i.base, i.train, i.tagged, snakemake.params.ckpt_dir, o.final,
           o.metrics, log=log)
