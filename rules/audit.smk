rule audit_dag:
    output:
        svg="results/audit/dag.svg",
        mermaid="results/audit/dag.mmd",
    params:
        config=config,
        target="results/table.md",
    log:
        "logs/audit/audit_dag/all.log",
    benchmark:
        "benchmarks/audit/audit_dag/all.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/audit_dag.py"


rule audit_provenance:
    input:
        manifests=expand("results/splits/{task}/manifest.json", task=TASKS),
        fingerprints="results/fingerprint/fingerprints.json",
        table="results/table.md",
        dag="results/audit/dag.svg",
    output:
        provenance="results/audit/provenance.json",
        fingerprints="results/audit/fingerprints.json",
    params:
        config=config,
        teacher_cache=config.get("paths", {}).get("teacher_cache", "work/teacher_cache"),
    log:
        "logs/audit/audit_provenance/all.log",
    benchmark:
        "benchmarks/audit/audit_provenance/all.tsv"
    threads: 1
    conda:
        "../envs/cts.yaml"
    script:
        "../scripts/audit_provenance.py"
