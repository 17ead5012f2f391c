from cts.jobserver import hand_off  # first, before any heavy import (resources.job_server)

hand_off(snakemake)
from cts.script_support import stage_logger

log = stage_logger(snakemake)
from cts.stages.audit import audit_provenance

i, o = snakemake.input, snakemake.output
audit_provenance(dict(snakemake.params.config), list(i.manifests), i.fingerprints, snakemake.params.teacher_cache,
                 o.provenance, o.fingerprints, log=log)
