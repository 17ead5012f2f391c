rule teacher_rollouts:
    input:
        base="results/base/{task}/final.json",
        splits=expand(
            "results/splits/{{task}}/{split}.jsonl", split=config["rollouts"]["splits"]
        ),
    output:
        "results/rollouts/{task}/attempts.jsonl",
    params:
        splits=config["rollouts"]["splits"],
        rollouts=config["rollouts"],
        jax_threads=jax_threads_cap(),
    log:
        "logs/teacher/teacher_rollouts/{task}.log",
    benchmark:
        "benchmarks/teacher/teacher_rollouts/{task}.tsv"
    threads: JAX_THREADS
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/teacher_rollouts.py"


rule teacher_critique:
    input:
        "results/rollouts/{task}/attempts.jsonl",
    output:
        "results/teacher/{task}/quadruples.jsonl",
    params:
        teacher=config["teacher"],
        cache_dir=config.get("paths", {}).get("teacher_cache", "work/teacher_cache"),
    log:
        "logs/teacher/teacher_critique/{task}.log",
    benchmark:
        "benchmarks/teacher/teacher_critique/{task}.tsv"
    threads: 2
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/teacher_critique.py"
