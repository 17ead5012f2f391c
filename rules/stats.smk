rule stats_power:
    input:
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
    output:
        "results/power.md",
    log:
        "logs/stats/stats_power/all.log",
    benchmark:
        "benchmarks/stats/stats_power/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        plan=get_power_plan(),
        tasks=TASKS,
        eval_split=config["eval"]["split"],
    script:
        "../scripts/stats_power.py"


rule stats_table:
    input:
        evals=get_eval_files(),
        # built with the table, so `snakemake results/table.md` leaves the whole audit trail
        power="results/power.md",
        provenance="results/audit/provenance.json",
        metrics=get_metrics_files(),
        finals=get_final_files(),  # CTS diagnostics (critic quality, edit direction)
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
        tagged=expand("results/taxonomy/{task}/tagged.jsonl", task=TASKS),  # teacher notes, κ
    output:
        md="results/table.md",
        json="results/table.json",
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/stats/stats_table/all.log",
    benchmark:
        "benchmarks/stats/stats_table/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        plan=get_power_plan(),
        tasks=TASKS,
        eval_split=config["eval"]["split"],
        stats=config["stats"],
    script:
        "../scripts/stats_table.py"


# Optional target (not part of `all`): `snakemake --cores 2 results/human_eval/sheet.csv`.
# Annotators fill the label column; cts.stats.human_eval.import_annotations reads it back.
rule stats_human_eval_export:
    input:
        evals=get_eval_files(),
        tests=expand(
            f"results/splits/{{task}}/{config['eval']['split']}.jsonl", task=TASKS
        ),
    output:
        sheet="results/human_eval/sheet.csv",
        key="results/human_eval/key.csv",
    log:
        "logs/stats/stats_human_eval_export/all.log",
    benchmark:
        "benchmarks/stats/stats_human_eval_export/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        n_per_method=20,
        seed=config["stats"]["seed"],
    script:
        "../scripts/stats_human_eval_export.py"
