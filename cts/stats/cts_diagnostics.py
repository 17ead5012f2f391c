"""The CTS diagnostics section of table.md: is B5's CTS working as designed in this run?

Per B5 / ablation cell, from the `final.json` written beside each training cell's metrics.jsonl
(cts.train.cts_step.setup_cts.report): the critic's held-out pair accuracy (before the warm-up,
after it, and at the end of training), the mean edit cosine cos(R* − R, R_rev − R_att) on those
held-out quadruples with its 95% CI, the edit's size relative to ‖r‖, the per-step means of the run
and each term's weighted θ-gradient norm relative to L_GRPO's. Per ablation, how many test
problems' greedy eval outputs differ from B5's (0 means the flipped term changed nothing the
policy does).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

from cts.io import read_json, read_jsonl

__all__ = ["cts_section"]


def _f(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell_of(path: str) -> tuple[str, str, str]:
    """results/train/<task>/<method>/seed<k>/metrics.jsonl -> (task, method, seed<k>)."""
    parts = os.path.normpath(path).split(os.sep)
    return parts[-4], parts[-3], parts[-2]


def _draws_per_quadruple(cell: dict, n_failed: int) -> str:
    """How often the CTS batches draw each failed train quadruple: train.steps × cts.cts_batch_size /
    n_failed. Far above 1, the CTS terms fit a few revisions over and over (the default's synth_code
    base fails 5 train attempts: 24 draws each)."""
    cts, train = cell.get("cts") or {}, cell.get("train") or {}
    if cts.get("online_critique"):
        return "online"
    if not n_failed or "steps" not in train or "cts_batch_size" not in cts:
        return "—"
    return f"{train['steps'] * cts['cts_batch_size'] / n_failed:.1f}"


def _critic_rows(metrics_files: Sequence[str]) -> list[str]:
    rows = []
    for path in sorted(metrics_files):
        final_path = os.path.join(os.path.dirname(os.fspath(path)), "final.json")
        if not os.path.exists(final_path):
            continue
        final = read_json(final_path)
        critic, steps = final.get("critic"), final.get("cts_steps_mean", {})
        if not critic:
            continue
        task, method, seed = _cell_of(os.fspath(path))
        before = (critic.get("dev_before_warmup") or {}).get("pair_accuracy")
        after = critic.get("dev_after_warmup") or {}
        end = critic.get("dev_at_end") or {}
        cos = after.get("edit_cos") or {}
        lo, hi = (cos.get("ci95") or [None, None])
        g = steps.get("cts/grad_norm/grpo")
        reuse = _draws_per_quadruple(final.get("config") or {}, critic.get("n_failed", 0))
        ratio = lambda k: None if not g else steps.get(k, 0.0) / g  # noqa: E731
        rows.append(
            f"| {task} | {method} | {seed} | {_f(before)} → {_f(after.get('pair_accuracy'))} → "
            f"{_f(end.get('pair_accuracy'))} ({critic.get('n_dev', 0)}) | {_f(cos.get('mean'))} "
            f"[{_f(lo)}, {_f(hi)}] ({cos.get('n', 0)}) | {_f((end.get('edit_cos') or {}).get('mean'))} | "
            f"{_f(steps.get('cts/edit_cos'))} | {_f(after.get('edit_rel_mean'))} | "
            f"{_f(ratio('cts/grad_norm/align'))} / {_f(ratio('cts/grad_norm/decode'))} | "
            f"{critic.get('n_unlocalised', 0)} of {critic.get('n_failed', 0)} | {reuse} | "
            f"{(critic.get('gate') or '—').split(':')[0]} |")
    return rows


def _differing_outputs(eval_files: Sequence[str], reference: str) -> list[str]:
    """Per (task, ablation): test problems whose greedy completion differs from the reference's, per seed."""
    by = defaultdict(dict)  # (task, method, seed) -> {problem_id: completion}
    for path in sorted(eval_files):
        for r in read_jsonl(path):
            by[(r["task"], r["method"], r["seed"])][r["problem_id"]] = r.get("completion")
    rows = []
    for (task, method, seed), outs in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if not method.startswith(reference + "-"):
            continue
        ref = by.get((task, reference, seed))
        if ref is None:
            continue
        shared = sorted(set(outs) & set(ref))
        n_diff = sum(outs[p] != ref[p] for p in shared)
        rows.append(f"| {task} | {method} | {seed} | {n_diff} of {len(shared)} |")
    return rows


def cts_section(metrics_files: Sequence[str], eval_files: Sequence[str] = (), reference: str | None = "B5") -> list[str]:
    """Markdown lines of the section (empty when no cell has CTS diagnostics)."""
    critic = _critic_rows(metrics_files)
    differ = _differing_outputs(eval_files, reference) if reference else []
    if not critic and not differ:
        return []
    md = ["", "## CTS diagnostics", ""]
    if critic:
        md += ["Critic: held-out pair accuracy (fraction of held-out failed quadruples with E_ψ(attempt's "
               "flagged step) > E_ψ(revision's step)) before → after the warm-up → at the end (n held out). "
               "Edit cosine: cos(R* − R, R_rev − R_att) at the flagged step on those quadruples after the "
               "warm-up [95% CI] (n), at the end, and the mean over training steps. Edit size: ‖R* − R‖ / ‖r‖ "
               "there. Gradient ratios: weighted θ-gradient norm of λ₁L_align and λ₂L_decode over L_GRPO's "
               "(means over steps). Draws per quadruple: train.steps × cts.cts_batch_size / failed train quadruples "
               "(how often the CTS terms see each revision; 'online' for critiques of the policy's own rollouts). Gate: the B5 start check on held-out pair accuracy (cts.critic.min_dev_pair_accuracy; "
               "'not measured' when fewer than cts.critic.min_dev_quadruples failed quadruples are held out).",
               "",
               "| Task | Cell | Seed | pair accuracy (n) | edit cos after warm-up [95% CI] (n) | edit cos at end | "
               "edit cos, steps | edit size | align / decode grad ratio | unlocalised | draws per quadruple | gate |",
               "|---|---|---|---|---|---:|---:|---:|---|---|---:|---|",
               *critic]
    if differ:
        md += ["", f"Greedy test outputs of each ablation that differ from {reference}'s (same seed): 0 means the "
               "flipped term changed nothing the policy does.", "",
               "| Task | Cell | Seed | differing outputs |", "|---|---|---|---|", *differ]
    return md
