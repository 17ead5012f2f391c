from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.train import train_fingerprint

manifests = dict(zip(snakemake.params.tasks, snakemake.input.manifests))
train_fingerprint(snakemake.params.cells, manifests, snakemake.output[0], log=log)
