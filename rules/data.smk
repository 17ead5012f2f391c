rule data_prepare:
    output:
        "results/data/{task}/problems.jsonl",
    params:
        data=lambda w: config["data"][w.task],
    log:
        "logs/data/data_prepare/{task}.log",
    benchmark:
        "benchmarks/data/data_prepare/{task}.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/data_prepare.py"


rule data_split:
    input:
        "results/data/{task}/problems.jsonl",
    output:
        train="results/splits/{task}/train.jsonl",
        dev="results/splits/{task}/dev.jsonl",
        test="results/splits/{task}/test.jsonl",
        manifest="results/splits/{task}/manifest.json",
    params:
        splits=config["splits"],
    log:
        "logs/data/data_split/{task}.log",
    benchmark:
        "benchmarks/data/data_split/{task}.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/data_split.py"
