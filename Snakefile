# CTS pipeline. Path grammar:
#   results/data/<task>/problems.jsonl            normalized problems
#   results/splits/<task>/<split>.jsonl           deterministic splits + manifest.json
#   results/base/<task>/final.json                the shared base policy (checkpoint under paths.checkpoints)
#   results/rollouts/<task>/attempts.jsonl        y⁰: base-policy first attempts
#   results/teacher/<task>/quadruples.jsonl       (x, y⁰, f, y¹) with the flagged step
#   results/taxonomy/<task>/tagged.jsonl          rule-based error tags (+ the teacher's own)
#   results/fingerprint/fingerprints.json         fairness check across cells (fails before training)
#   results/train/<task>/<method>/seed<k>/final.json  one training cell (metrics.jsonl beside it)
#   results/eval/<task>/<method>/seed<k>/problems.jsonl  per-problem held-out results
#   results/table.md, results/figures/, results/power.md, results/audit/
import os

from snakemake.utils import min_version

min_version("9.0")


# Always this workflow's own defaults, whatever --directory is (a relative name would be looked up
# in the working directory, and silently skipped there when --configfile is given).
configfile: os.path.join(workflow.basedir, "workflow_config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/taxonomy.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/stats.smk"
include: "rules/audit.smk"


onstart:
    start_job_server()


onsuccess:
    stop_job_server()


onerror:
    stop_job_server()


rule all:
    input:
        get_final_outputs(),
