rule stats_power:
    input:
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
    output:
        "results/power.md",
    params:
        plan=get_power_plan(),
        tasks=TASKS,
        eval_split=config["eval"]["split"],
    log:
        "logs/stats/stats_power/all.log",
    benchmark:
        "benchmarks/stats/stats_power/all.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/stats_power.py"


rule stats_table:
    input:
        evals=get_eval_files(),
        metrics=get_metrics_files(),
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
    output:
        md="results/table.md",
        json="results/table.json",
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        plan=get_power_plan(),
        tasks=TASKS,
        eval_split=config["eval"]["split"],
        stats=config["stats"],
    log:
        "logs/stats/stats_table/all.log",
    benchmark:
        "benchmarks/stats/stats_table/all.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/stats_table.py"
