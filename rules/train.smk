rule train_base:
    input:
        train="results/splits/{task}/train.jsonl",
    output:
        "results/base/{task}/final.json",
    log:
        "logs/train/train_base/{task}.log",
    benchmark:
        "benchmarks/train/train_base/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: JAX_THREADS
    params:
        model=config["model"],
        tokenizer=config["tokenizer"],
        base_policy=config["base_policy"],
        ckpt_dir=lambda w: f"{CKPT_ROOT}/{w.task}/base",
        jax_threads=jax_threads_cap(),
    script:
        "../scripts/train_base.py"


rule train_fingerprint:
    input:
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
    output:
        "results/fingerprint/fingerprints.json",
    log:
        "logs/train/train_fingerprint/all.log",
    benchmark:
        "benchmarks/train/train_fingerprint/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        tasks=TASKS,
        cells=get_all_fairness(),
    script:
        "../scripts/train_fingerprint.py"


rule train_cell:
    input:
        base="results/base/{task}/final.json",
        train="results/splits/{task}/train.jsonl",
        tagged="results/taxonomy/{task}/tagged.jsonl",
        fingerprint="results/fingerprint/fingerprints.json",
    output:
        final="results/train/{task}/{method}/seed{seed}/final.json",
        metrics="results/train/{task}/{method}/seed{seed}/metrics.jsonl",
    log:
        "logs/train/train_cell/{task}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/train/train_cell/{task}/{method}/seed{seed}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: JAX_THREADS
    params:
        cell=get_cell_config,
        ckpt_dir=lambda w: f"{CKPT_ROOT}/{w.task}/{w.method}/seed{w.seed}",
        jax_threads=jax_threads_cap(),
    script:
        "../scripts/train_cell.py"
