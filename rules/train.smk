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
        parallelism=config.get("parallelism") or {},  # the mesh (issue 18): not part of the state digest
        # checkpoints under <root>/<state digest>/ (config + inputs, cts.train.checkpoint.state_dir):
        # a new config or new inputs never resume from another one's state
        ckpt_root=lambda w: f"{CKPT_ROOT}/{w.task}/base",
        monitor=config["monitor"],
        jax_threads=jax_threads_cap(),
        compile_cache=COMPILE_CACHE,
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
        ckpt_root=lambda w: f"{CKPT_ROOT}/{w.task}/{w.method}/seed{w.seed}",
        monitor=config["monitor"],
        jax_threads=jax_threads_cap(),
        compile_cache=COMPILE_CACHE,
    script:
        "../scripts/train_cell.py"


# `make clean-checkpoints`: delete every checkpoint state under paths.checkpoints that no job of the
# current config (with its current inputs) names. No output: it runs each time it is asked for.
rule clean_checkpoints:
    log:
        "logs/train/clean_checkpoints/all.log",
    conda:
        "../envs/cts.yaml"
    params:
        root=CKPT_ROOT,
        jobs=get_checkpoint_jobs(),
    script:
        "../scripts/clean_checkpoints.py"
