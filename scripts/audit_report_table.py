from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages import render_table_html

render_table_html(snakemake.input[0], snakemake.output[0], log=log)
