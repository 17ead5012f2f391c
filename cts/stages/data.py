"""rules/data.smk: task data → normalized Problem records → train/dev/test splits."""

from __future__ import annotations

import os
from collections import Counter

from cts.io import DataError, atomic_write_json, atomic_write_jsonl, sha256_file
from cts.splits import assign_splits, split_manifest
from cts.tasks import load_task
from cts.tasks.schema import SPLITS, load_problems
from cts.verifiers.code import verifiable_problems

__all__ = ["data_prepare", "data_split"]


def data_prepare(task: str, data_cfg: dict, out_path: str, log=print) -> None:
    """Task data → normalized Problem records (all splits; `split` is assigned next). Code problems
    whose tests cannot be verified outside the candidate's process are left out, named in the log."""
    problems = verifiable_problems(load_task(task, data_cfg), log)
    n = atomic_write_jsonl(out_path, (p.to_row() for p in problems))
    hist = Counter(p.horizon for p in problems)
    log(f"{task}: {n} problems; horizons {dict(sorted(hist.items()))}")


def data_split(problems_path: str, splits_cfg: dict, out_dir: str, log=print,
               required_splits: tuple[str, ...] = ()) -> None:
    problems = load_problems(problems_path)
    out, report = assign_splits(problems, splits_cfg["fractions"], splits_cfg["seed"],
                                splits_cfg.get("near_duplicate_threshold", 0.9))
    for split in required_splits:  # cheap to find here; a training job would fail much later
        if report["n_per_split"].get(split, 0) == 0:
            task = problems[0].task if problems else problems_path
            raise DataError(f"{task}: the {split} split is empty ({len(problems)} problems, "
                            f"splits.fractions {splits_cfg['fractions']}); raise the data size or that fraction")
    manifest = {"source": problems_path, "source_sha256": sha256_file(problems_path), **report,
                "splits": {s: split_manifest(out, s) for s in SPLITS}}
    for s in SPLITS:
        atomic_write_jsonl(os.path.join(out_dir, f"{s}.jsonl"), (p.to_row() for p in out if p.split == s))
    atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
    log(f"splits {report['n_per_split']}; near-duplicate clusters merged: {report['near_duplicate_clusters']}")
