rule eval_cell:
    input:
        final=get_eval_final,
        test=f"results/splits/{{task}}/{config['eval']['split']}.jsonl",
        tagged="results/taxonomy/{task}/tagged.jsonl",
        skipped="results/teacher/{task}/skipped.json",
    output:
        "results/eval/{task}/{method}/seed{seed}/problems.jsonl",
    log:
        "logs/eval/eval_cell/{task}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/eval/eval_cell/{task}/{method}/seed{seed}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: JAX_THREADS
    params:
        eval=config["eval"],
        method=lambda w: w.method,
        seed=lambda w: w.seed,
        jax_threads=jax_threads_cap(),
        compile_cache=COMPILE_CACHE,
    script:
        "../scripts/eval_cell.py"
