from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
import os

from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.data import data_split

data_split(snakemake.input[0], snakemake.params.splits, os.path.dirname(snakemake.output.manifest), log=log,
           required_splits=tuple(snakemake.params.required_splits))
