rule teacher_rollouts:
    input:
        base="results/base/{task}/final.json",
        splits=expand(
            "results/splits/{{task}}/{split}.jsonl", split=config["rollouts"]["splits"]
        ),
    output:
        "results/rollouts/{task}/attempts.jsonl",
    log:
        "logs/teacher/teacher_rollouts/{task}.log",
    benchmark:
        "benchmarks/teacher/teacher_rollouts/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: JAX_THREADS
    params:
        splits=config["rollouts"]["splits"],
        rollouts=config["rollouts"],
        parallelism=config.get("parallelism") or {},  # the mesh (issue 18): layout only, not in any digest
        jax_threads=jax_threads_cap(),
        compile_cache=COMPILE_CACHE,
    script:
        "../scripts/teacher_rollouts.py"


rule teacher_critique:
    input:
        "results/rollouts/{task}/attempts.jsonl",
    output:
        quadruples="results/teacher/{task}/quadruples.jsonl",
        # attempts left out under teacher.on_invalid: skip (eval leaves them out; the log counts them)
        skipped="results/teacher/{task}/skipped.json",
    log:
        "logs/teacher/teacher_critique/{task}.log",
    benchmark:
        "benchmarks/teacher/teacher_critique/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 2
    params:
        teacher=config["teacher"],
        eval_split=config["eval"]["split"],
        cache_dir=config.get("paths", {}).get("teacher_cache", "work/teacher_cache"),
    script:
        "../scripts/teacher_critique.py"
