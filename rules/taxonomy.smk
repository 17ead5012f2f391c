rule taxonomy_tag:
    input:
        quadruples="results/teacher/{task}/quadruples.jsonl",
        attempts="results/rollouts/{task}/attempts.jsonl",
    output:
        tagged="results/taxonomy/{task}/tagged.jsonl",
        summary="results/taxonomy/{task}/summary.json",
    log:
        "logs/taxonomy/taxonomy_tag/{task}.log",
    benchmark:
        "benchmarks/taxonomy/taxonomy_tag/{task}.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    script:
        "../scripts/taxonomy_tag.py"
