rule audit_dag:
    output:
        svg="results/audit/dag.svg",
        mermaid="results/audit/dag.mmd",
    log:
        "logs/audit/audit_dag/all.log",
    benchmark:
        "benchmarks/audit/audit_dag/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        config=config,
        target="results/table.md",
    script:
        "../scripts/audit_dag.py"


rule audit_provenance:
    input:
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
        fingerprints="results/fingerprint/fingerprints.json",
        dag="results/audit/dag.svg",
    output:
        provenance="results/audit/provenance.json",
        fingerprints="results/audit/fingerprints.json",
    log:
        "logs/audit/audit_provenance/all.log",
    benchmark:
        "benchmarks/audit/audit_provenance/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    params:
        config=config,
        teacher_cache=config.get("paths", {}).get("teacher_cache", "work/teacher_cache"),
    script:
        "../scripts/audit_provenance.py"


# results/table.md rendered for `snakemake --report` (its figures come from stats_table).
rule audit_report_table:
    input:
        "results/table.md",
    output:
        report(
            "results/audit/table.html",
            caption="../report/table.rst",
            category="Table",
        ),
    log:
        "logs/audit/audit_report_table/all.log",
    benchmark:
        "benchmarks/audit/audit_report_table/all.tsv"
    conda:
        "../envs/cts.yaml"
    threads: 1
    script:
        "../scripts/audit_report_table.py"
