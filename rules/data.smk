rule data_prepare:
    input:
        get_data_files,
    output:
        "results/data/{task}/problems.jsonl",
    log:
        "logs/data/data_prepare/{task}.log",
    benchmark:
        "benchmarks/data/data_prepare/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        data=lambda w: config["data"][w.task],
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
    log:
        "logs/data/data_split/{task}.log",
    benchmark:
        "benchmarks/data/data_split/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        splits=config["splits"],
        # splits a later stage reads: an empty one fails here, not in a training job
        required_splits=sorted(
            {"train", config["eval"]["split"], *config["rollouts"]["splits"]}
        ),
    script:
        "../scripts/data_split.py"
