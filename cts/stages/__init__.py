"""One module per Snakemake rule file: `cts/stages/<stage>.py` holds the glue of `rules/<stage>.smk`.

Each rule's script (scripts/<rule>.py) unpacks Snakemake's objects and calls one function here;
these take plain paths and dicts, so each stage can be run and tested without Snakemake. The work
itself lives in the packages (tasks, verifiers, teachers, train, evaluation, stats, audit): a
stage reads its inputs, calls them, and writes its outputs atomically (cts.io), so a killed job
leaves either nothing or a whole file.

    data.py      data_prepare, data_split
    teacher.py   teacher_rollouts, teacher_critique
    taxonomy.py  taxonomy_tag
    train.py     train_base, train_fingerprint, train_cell, clean_checkpoints
    eval.py      eval_cell
    stats.py     stats_power, stats_table, stats_human_eval_export
    audit.py     audit_dag, audit_provenance, audit_report_table

Nothing is imported here, so a rule's job imports only what its own stage needs.
"""
