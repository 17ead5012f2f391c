# Validation and input functions only; logic lives in cts/ (cts.config).
import os

from snakemake.exceptions import WorkflowError

from cts import jobserver
from cts.cloud.state import check_state_paths

from cts.config import (
    Cell,
    cell_config,
    cells,
    check_consistency,
    data_files,
    fairness_fields,
    fairness_view,
    method_ids,
    validate_config,
)

# Every check runs here, while the DAG is built: a bad config stops before the first job, with
# one line per bad key (its value and what is allowed), not a dump of the schema.
SCHEMA = os.path.join(workflow.basedir, "schemas", "workflow_config.schema.yaml")
validate_config(config, SCHEMA)
check_consistency(config, SCHEMA)

TASKS = config["tasks"]
METHODS = method_ids(config)
SEEDS = [str(s) for s in config["seeds"]]
CELLS = cells(config)
# The shared base policy is evaluated like a method ("base") under every eval seed, so the table
# shows what training added; its greedy answers are the same for every seed, its samples are not.
EVAL_CELLS = CELLS + [Cell(t, "base", s) for t in TASKS for s in config["seeds"]]
CKPT_ROOT = config.get("paths", {}).get("checkpoints", "work/checkpoints")
COMPILE_CACHE = config.get("paths", {}).get("compile_cache", "")
# Jobs without a shared filesystem (gcp_tpu) need checkpoints where every pod sees them.
try:
    check_state_paths(config, workflow.storage_settings.shared_fs_usage)
except ValueError as e:
    raise WorkflowError(str(e))


# Each JAX job uses resources.jax_threads CPUs of its own (a CPU slot, cts.train.runtime). It
# claims cores·jax_threads/ncpu of Snakemake's --cores, so at most ncpu/jax_threads JAX jobs run
# at once whatever --cores says: `--cores 8` on a 2-core laptop does not oversubscribe.
# (--dag, --lint and --summary give no --cores: any value serves there.)
def jax_threads_cap():
    """CPUs each JAX job pins itself to (resources.jax_threads, at most the cores here)."""
    return min(config.get("resources", {}).get("jax_threads", 1), os.cpu_count() or 1)


def jax_job_threads():
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    return max(1, min(cores, -(-cores * jax_threads_cap() // (os.cpu_count() or 1))))


JAX_THREADS = jax_job_threads()


# resources.job_server: one process imports cts + MaxText once and forks a child per job
# (cts/jobserver.py); only for jobs that run on this machine, not a remote executor's (gcp_tpu).
JOB_SERVER = {}


def start_job_server():
    if not config.get("resources", {}).get("job_server", False):
        return
    if not (workflow.local_exec and workflow.is_main_process):
        return
    path = jobserver.socket_path_for(".")
    log = os.path.join(".snakemake", "log", f"cts-jobserver-{os.getpid()}.log")
    # numpy's BLAS sizes its pool at import, in the server: as many threads as Snakemake gives a
    # JAX job (its shell sets these variables per job; a fresh job process imported numpy with them)
    blas = {
        v: str(JAX_THREADS)
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    JOB_SERVER["proc"] = jobserver.start(path, log, env={**os.environ, **blas})
    # the jobs Snakemake starts from now on inherit it
    os.environ[jobserver.ENV_SOCKET] = path


def stop_job_server():
    os.environ.pop(jobserver.ENV_SOCKET, None)
    jobserver.stop(JOB_SERVER.pop("proc", None))


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(m.replace("-", "\\-") for m in METHODS + ["base"]),
    seed=r"\d+",
    split="train|dev|test",


def get_final_outputs():
    # Snakemake >= 7.7 does not regenerate a deleted intermediate file while the requested target
    # is up to date (snakemake#1978), so `all` also names every cell's outputs: after deleting
    # one, `snakemake --cores N` reruns just that job and what depends on it.
    return [
        "results/table.md",
        "results/power.md",
        "results/audit/provenance.json",
        "results/audit/dag.svg",
        "results/audit/table.html",
        *get_eval_files(),
        *get_metrics_files(),
    ]


def get_data_files(wildcards):
    """Dataset files that shape a task's problems: editing one reruns what depends on it."""
    return data_files(config, wildcards.task)


def get_cell_config(wildcards):
    return cell_config(config, wildcards.task, wildcards.method, int(wildcards.seed))


def get_all_fairness():
    return {
        f"{c.task}/{c.method}/seed{c.seed}": {
            "cell": fairness_view(cell_config(config, c.task, c.method, c.seed)),
            "shared": fairness_fields(config, c.task),
        }
        for c in CELLS
    }


def get_checkpoint_jobs():
    """Every job that keeps a checkpoint state, with what names its state (cts.train.artifacts.*_state)."""
    jobs = [
        {
            "kind": "base",
            "task": t,
            "train_path": f"results/splits/{t}/train.jsonl",
            "model_cfg": config["model"],
            "tokenizer": config["tokenizer"],
            "base_cfg": config["base_policy"],
            "ckpt_root": f"{CKPT_ROOT}/{t}/base",
            "final": f"results/base/{t}/final.json",
        }
        for t in TASKS
    ]
    for c in CELLS:
        jobs.append(
            {
                "kind": "cell",
                "cell": cell_config(config, c.task, c.method, c.seed),
                "base_final": f"results/base/{c.task}/final.json",
                "train_path": f"results/splits/{c.task}/train.jsonl",
                "tagged_path": f"results/taxonomy/{c.task}/tagged.jsonl",
                "ckpt_root": f"{CKPT_ROOT}/{c.task}/{c.method}/seed{c.seed}",
                "final": f"results/train/{c.task}/{c.method}/seed{c.seed}/final.json",
            }
        )
    return jobs


def get_eval_files():
    return [
        f"results/eval/{c.task}/{c.method}/seed{c.seed}/problems.jsonl"
        for c in EVAL_CELLS
    ]


def get_eval_final(wildcards):
    if wildcards.method == "base":
        return f"results/base/{wildcards.task}/final.json"
    return f"results/train/{wildcards.task}/{wildcards.method}/seed{wildcards.seed}/final.json"


def get_metrics_files():
    return [
        f"results/train/{c.task}/{c.method}/seed{c.seed}/metrics.jsonl" for c in CELLS
    ]


def get_final_files():
    return [f"results/train/{c.task}/{c.method}/seed{c.seed}/final.json" for c in CELLS]


def get_power_plan():
    return {
        "tasks": TASKS,
        "methods": ["base", *config["methods"]],
        "base": config["base_method"],
        "ablation_base": config.get("ablation_base", "B5"),
        "ablations": [m for m in METHODS if "-" in m],
        "ablation_tasks": config.get("ablation_tasks") or TASKS,
        "seeds": [int(s) for s in config["seeds"]],
    }


# Cheap bookkeeping rules run where Snakemake runs, never as a TPU JobSet (gcp_tpu profile); so does
# teacher_critique: it calls the teacher's API with the key of the local environment.
localrules:
    teacher_critique,
    data_prepare,
    data_split,
    taxonomy_tag,
    train_fingerprint,
    stats_power,
    stats_table,
    stats_human_eval_export,
    audit_dag,
    audit_provenance,
    audit_report_table,
    clean_checkpoints,
