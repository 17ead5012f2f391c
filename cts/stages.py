"""One function per Snakemake rule. Scripts in scripts/ unpack Snakemake's objects and call these;
everything here takes plain paths and dicts, so each stage can be run and tested without Snakemake.

Every output is written atomically (cts.io): a killed job leaves either nothing or a whole file.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from cts.io import (DataError, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl,
                    sha256_file)
from cts.tasks.schema import SPLITS, Problem, Quadruple

__all__ = [
    "base_state", "cell_state", "clean_checkpoints", "data_prepare", "data_split", "eval_cell",
    "load_problems", "taxonomy_tag", "teacher_critique", "teacher_rollouts", "train_base", "train_cell",
    "train_fingerprint",
]


def load_problems(path: str) -> list[Problem]:
    return [Problem.from_row(r, where=f"{path}:{i + 1}") for i, r in enumerate(read_jsonl(path))]


def load_quadruples(path: str) -> list[Quadruple]:
    return [Quadruple.from_row(r, where=f"{path}:{i + 1}") for i, r in enumerate(read_jsonl(path))]


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("jax", "flax", "optax", "orbax-checkpoint", "ott-jax", "maxtext")}


# ----------------------------------------------------------------------------- data

def data_prepare(task: str, data_cfg: dict, out_path: str, log=print) -> None:
    """Task data → normalized Problem records (all splits; `split` is assigned next)."""
    from cts.tasks import load_task

    problems = _drop_unverifiable(load_task(task, data_cfg), log)
    n = atomic_write_jsonl(out_path, (p.to_row() for p in problems))
    hist = Counter(p.horizon for p in problems)
    log(f"{task}: {n} problems; horizons {dict(sorted(hist.items()))}")


def _drop_unverifiable(problems: list[Problem], log) -> list[Problem]:
    """Code problems whose tests the trusted parent cannot decide (cts.verifiers.code) are left out
    here, named in the log, rather than failing a training job later (7 of HumanEval's 164)."""
    from cts.verifiers.code import check_verifiable

    kept, dropped = [], []
    for p in problems:
        try:
            if p.kind == "code":
                check_verifiable(p)
            kept.append(p)
        except DataError as e:
            dropped.append(str(e))
    if dropped:
        log(f"left out {len(dropped)} of {len(problems)} problems whose tests cannot be verified outside "
            "the candidate's process:\n  " + "\n  ".join(dropped))
    if not kept:
        raise DataError(f"no verifiable problems among {len(problems)}")
    return kept


def data_split(problems_path: str, splits_cfg: dict, out_dir: str, log=print,
               required_splits: tuple[str, ...] = ()) -> None:
    from cts.splits import assign_splits, split_manifest

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


# ----------------------------------------------------------------------------- base policy

def _base_pairs(problems: list[Problem], error_rate: float, seed: int) -> list[tuple[str, str]]:
    """Gold solutions plus error-injected ones (synthetic tasks), error_rate of the mixture."""
    from cts.tasks.synthetic import corrupt_solution

    rng = random.Random(seed)
    pairs = [(p.prompt, p.reference) for p in problems]
    corruptible = [p for p in problems if "ops" in p.meta]
    if corruptible and error_rate > 0:
        n_bad = round(len(pairs) * error_rate / (1 - error_rate)) if error_rate < 1 else len(pairs)
        for i in range(n_bad):
            p = corruptible[i % len(corruptible)]
            pairs.append((p.prompt, corrupt_solution(p, rng)[0]))
    return pairs


def _project_path(path: str) -> str:
    """A path relative to the project root (the working directory Snakemake runs jobs in), so a
    copied or moved project reads its own weights; a storage URI or a path outside stays as is."""
    if "://" in path:
        return path
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


def _write_final(out_final: str, *, ckpt_dir: str, state_digest: str, params, config: dict,
                 rows: list[dict], inputs: dict, extra: dict | None = None) -> None:
    from cts.train.checkpoint import params_digest, save_params

    final_dir = os.path.join(ckpt_dir, "final")
    save_params(final_dir, params)
    atomic_write_json(out_final, {
        "params_dir": _project_path(final_dir), "params_sha256": params_digest(params),
        "state_digest": state_digest, "inputs": inputs,
        "steps": len(rows), "final_metrics": rows[-1] if rows else {}, "config": config,
        "versions": _versions(), **(extra or {}),
    })


def load_final_params(runtime, final_path: str):
    """The policy parameters a final.json points at, checked against its digest."""
    from cts.train.checkpoint import load_params, params_digest

    final = read_json(final_path)
    params = load_params(final["params_dir"], runtime.init_params)
    if params_digest(params) != final["params_sha256"]:
        raise DataError(f"{final_path}: the parameters in {final['params_dir']} do not match its "
                        "params_sha256 (they were overwritten); rerun the job")
    return params


# ----------------------------------------------------------------------------- state digests

def base_state(task: str, train_path: str, model_cfg: dict, tokenizer: str, base_cfg: dict,
               ckpt_root: str) -> tuple[str, str, dict]:
    """(checkpoint dir, digest, inputs) of a base policy: its config and its train split's content."""
    from cts.train.checkpoint import state_dir

    inputs = {"train": sha256_file(train_path)}
    cfg = {"stage": "train_base", "task": task, "model": model_cfg, "tokenizer": tokenizer,
           "base_policy": base_cfg}
    return (*state_dir(ckpt_root, cfg, inputs), inputs)


def cell_state(cell: dict, base_final: str, train_path: str, tagged_path: str,
               ckpt_root: str) -> tuple[str, str, dict]:
    """(checkpoint dir, digest, inputs) of a training cell: its resolved config, the base policy's
    parameters and the content of the train split and the teacher's tagged quadruples."""
    from cts.train.checkpoint import state_dir

    inputs = {"base_params": read_json(base_final)["params_sha256"], "train": sha256_file(train_path),
              "tagged": sha256_file(tagged_path)}
    return (*state_dir(ckpt_root, {"stage": "train_cell", **cell}, inputs), inputs)


def clean_checkpoints(ckpt_root: str, jobs: list[dict], log=print) -> None:
    """Delete every checkpoint state under ckpt_root that no current job names.

    jobs: {"kind": "base"|"cell", plus the arguments of base_state / cell_state}. A job whose inputs
    do not exist yet names no state; a final.json keeps the state it points at."""
    from cts.train.checkpoint import remove_stale_states

    keep = []
    for j in jobs:
        args = {k: v for k, v in j.items() if k not in ("kind", "final")}
        paths = [v for k, v in args.items() if k.endswith(("_path", "_final"))]
        if all(os.path.exists(p) for p in paths):
            fn = base_state if j["kind"] == "base" else cell_state
            keep.append(fn(**args)[0])
        if j.get("final") and os.path.exists(j["final"]):
            keep.append(os.path.dirname(read_json(j["final"])["params_dir"]))
    removed = remove_stale_states(ckpt_root, keep, log=log)
    log(f"clean-checkpoints: kept {len(set(keep))} state(s), removed {len(removed)} under {ckpt_root}")


def train_base(task: str, train_path: str, model_cfg: dict, tokenizer: str, base_cfg: dict,
               ckpt_root: str, out_final: str, log=print, monitor: dict | None = None,
               parallelism: dict | None = None) -> None:
    """The shared base policy: SFT from a random init, or from pretrained weights
    (`base_cfg["pretrained"]`, cts.model.pretrained) for `steps` steps — 0 keeps them as they are.
    Either way final.json has the same form, so the rest of the DAG does not know the difference.
    Checkpoints go to `<ckpt_root>/<state digest>/` (base_state)."""
    from cts.train.runtime import PolicyRuntime

    ckpt_dir, digest, inputs = base_state(task, train_path, model_cfg, tokenizer, base_cfg, ckpt_root)
    log(f"state {digest[:16]} → {_project_path(ckpt_dir)}")

    problems = load_problems(train_path)
    runtime = PolicyRuntime(model_cfg, tokenizer, seed=base_cfg["seed"], batch_size=base_cfg["batch_size"],
                            parallelism=parallelism)  # i18: the mesh (layout only, not in the digest)
    init_params, extra = runtime.init_params, {}
    if base_cfg.get("pretrained"):
        from cts.model.pretrained import pretrained_params

        init_params, provenance = pretrained_params(base_cfg["pretrained"], runtime, log=log)
        extra = {"pretrained": provenance}
    pairs = _base_pairs(problems, base_cfg["error_rate"], base_cfg["seed"])
    if base_cfg["steps"] > 0:
        from cts.train.loop import LoopConfig, MethodSpec, TrainData, train

        loop = LoopConfig(steps=base_cfg["steps"], prompts_per_step=base_cfg["batch_size"],
                          learning_rate=base_cfg["learning_rate"], warmup_steps=base_cfg["warmup_steps"],
                          checkpoint_every=max(1, base_cfg["steps"] // 4), seed=base_cfg["seed"],
                          **_monitor_fields(monitor))
        params, rows = train(runtime=runtime, init_params=init_params, ref_params=None,
                             spec=MethodSpec(loss="sft"), data=TrainData(sft_pairs=pairs), loop=loop,
                             ckpt_dir=ckpt_dir, log=log)
        params = params["policy"]
        log(f"base policy: {len(pairs)} training sequences ({len(pairs) - len(problems)} with an injected error)")
    else:  # check_consistency allows this only with pretrained weights
        params, rows = init_params, []
        log("base policy: steps = 0, the pretrained weights as they are")
    _write_final(out_final, ckpt_dir=ckpt_dir, state_digest=digest, params=params,
                 config={"task": task, "model": model_cfg, "tokenizer": tokenizer, "base_policy": base_cfg},
                 rows=rows, inputs=inputs, extra=extra)


def _monitor_fields(monitor: dict | None) -> dict:
    """LoopConfig fields from the `monitor` block (progress lines, dead-run abort)."""
    monitor = monitor or {}
    return {k: monitor[k] for k in ("log_every", "dead_run_steps") if k in monitor}


# ----------------------------------------------------------------------------- rollouts, teacher

def _runtime_from_final(final_path: str, batch_size: int):
    from cts.train.runtime import PolicyRuntime

    cfg = read_json(final_path)["config"]
    runtime = PolicyRuntime(cfg["model"], cfg["tokenizer"], seed=0, batch_size=batch_size,
                            parallelism=cfg.get("parallelism"))  # i18: a cell's mesh for its eval too
    return runtime, load_final_params(runtime, final_path)


def teacher_rollouts(base_final: str, split_paths: dict[str, str], rollouts_cfg: dict,
                     out_attempts: str, log=print) -> None:
    """y⁰: the base policy's greedy first attempt on every problem of the given splits."""
    import jax

    runtime, params = _runtime_from_final(base_final, rollouts_cfg["batch_size"])
    rows = []
    for split in sorted(split_paths):
        problems = load_problems(split_paths[split])
        attempts = runtime.generate(params, [p.prompt for p in problems], jax.random.key(0),
                                    max_new_tokens=rollouts_cfg["max_new_tokens"],
                                    batch_size=rollouts_cfg["batch_size"], greedy=True)
        rows += [{"problem": p.to_row(), "attempt": a} for p, a in zip(problems, attempts)]
        log(f"{split}: {len(problems)} attempts")
    atomic_write_jsonl(out_attempts, rows)


def _critique_order(items: list, eval_split: str, limit: int | None, where: str) -> list:
    """teacher.limit spends its budget on train attempts first, then the eval split's, then the rest;
    eval needs a critique of every attempt of its split, so a limit that cuts into it is an error
    (raised before any request is made)."""
    rank = {"train": 0, eval_split: 1}
    ordered = sorted(items, key=lambda it: rank.get(it[0].split, 2))  # stable: file order within
    if not limit:
        return ordered
    kept, n_eval = ordered[:limit], sum(p.split == eval_split for p, _ in items)
    n_eval_kept = sum(p.split == eval_split for p, _ in kept)
    if n_eval_kept < n_eval:
        n_train = sum(p.split == "train" for p, _ in items)
        raise DataError(f"{where}: teacher.limit {limit} leaves {n_eval - n_eval_kept} of the {n_eval} "
                        f"{eval_split} attempts without a critique ({n_train} train attempts come first; "
                        f"eval needs every {eval_split} attempt): raise teacher.limit to at least "
                        f"{n_train + n_eval}")
    return kept


def teacher_critique(attempts_path: str, teacher_cfg: dict, out_quadruples: str, *,
                     cache_dir: str | None = None, workers: int = 1, log=print,
                     eval_split: str = "test", out_skipped: str | None = None) -> None:
    """(x, y⁰, f, y¹) for every attempt. An LLM teacher's reply that stays invalid after the
    re-asks is skipped (teacher.on_invalid: skip; listed in out_skipped and counted in the log) or
    fails the job (fail)."""
    rows = read_jsonl(attempts_path, required=("problem", "attempt"))
    items = [(Problem.from_row(r["problem"], where=f"{attempts_path}:{i + 1}"), r["attempt"])
             for i, r in enumerate(rows)]
    kind = teacher_cfg.get("kind", "programmatic")
    skipped: list[str] = []
    if kind == "programmatic":
        from cts.teachers.programmatic import critique_many

        quads = critique_many(items, workers=workers)
    else:  # an LLM through the official SDK; the key comes from the environment only
        from cts.teachers.cache import ResponseCache
        from cts.teachers.cli import run_teacher
        from cts.teachers.llm import CostLog, LLMTeacher, LLMTeacherConfig

        items = _critique_order(items, eval_split, teacher_cfg.get("limit"), attempts_path)
        cache_dir = cache_dir or "work/teacher_cache"
        teacher = LLMTeacher(LLMTeacherConfig(provider=kind, model=teacher_cfg["model"],
                                              max_reasks=teacher_cfg["max_reasks"],
                                              max_retries=teacher_cfg["retries"],
                                              timeout_s=float(teacher_cfg["timeout_s"])),
                             cache=ResponseCache(cache_dir),
                             cost_log=CostLog(os.path.join(cache_dir, "cost.jsonl")))
        rows, skipped = run_teacher(teacher, items, workers=workers,
                                    skip_invalid=teacher_cfg["on_invalid"] == "skip")
        by_id = {r["problem_id"]: Quadruple.from_row(r) for r in rows}
        items = [(p, a) for p, a in items if p.id in by_id]
        quads = [by_id[p.id] for p, _ in items]
        if skipped:
            log(f"teacher.on_invalid = skip: {len(skipped)} attempt(s) skipped, the reply stayed invalid "
                f"after {teacher_cfg['max_reasks']} re-ask(s): {', '.join(skipped[:10])}"
                + (" ..." if len(skipped) > 10 else ""))
    out = [{**q.to_row(), "split": p.split} for q, (p, _) in zip(quads, items)]
    atomic_write_jsonl(out_quadruples, out)
    if out_skipped:
        atomic_write_json(out_skipped, {"teacher": kind, "n_skipped": len(skipped), "skipped": sorted(skipped)})
    n_wrong = sum(not q.attempt_correct for q in quads)
    log(f"{len(quads)} attempts critiqued; {n_wrong} flagged wrong ({n_wrong / max(1, len(quads)):.1%})"
        + (f"; {len(skipped)} skipped (invalid replies)" if skipped else ""))


def taxonomy_tag(quadruples_path: str, attempts_path: str, out_tagged: str, out_summary: str,
                 log=print) -> None:
    """Tag every critique with the rule-based tagger BESIDE the teacher's tag; overwrite nothing.

    Adds `rule_error_type` / `rule_first_error_step` (cts.taxonomy.diagnose) and fills
    `teacher_error_type` with the teacher's own tag where it is missing; every field the teacher
    wrote is kept as written. The summary counts the rule tags per split ("unlocalised" included).
    """
    from cts.distributed import map_once  # i18
    from cts.taxonomy import diagnose
    from cts.verifiers.outcome import verify_many

    qrows = read_jsonl(quadruples_path)
    problems = {r["problem"]["id"]: Problem.from_row(r["problem"]) for r in read_jsonl(attempts_path)}
    items = []
    for i, r in enumerate(qrows):
        if r["problem_id"] not in problems:
            raise DataError(f"{quadruples_path}:{i + 1}: problem_id {r['problem_id']!r} not in {attempts_path}")
        items.append((problems[r["problem_id"]], r["attempt"]))
    verdicts = verify_many(items)
    out, counts = [], Counter()
    for r, (p, a), v in zip(qrows, items, verdicts):
        d = diagnose(p, a, v.code_verdict)
        teacher_tag = r.get("teacher_error_type")
        if teacher_tag is None:
            teacher_tag = r.get("error_type")
        out.append({**r, "teacher_error_type": teacher_tag, "rule_error_type": d.label,
                    "rule_first_error_step": d.step, "horizon": p.horizon})
        counts[(r.get("split"), d.label)] += 1
    atomic_write_jsonl(out_tagged, out)
    summary = {}
    for (split, label), n in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        summary.setdefault(str(split), {})[label] = n
    atomic_write_json(out_summary, summary)
    log(f"taxonomy: {summary}")


# ----------------------------------------------------------------------------- fairness

def train_fingerprint(cells: dict, manifest_paths: dict[str, str], out_path: str, log=print) -> None:
    """Fail before any training job if two cells of a task differ in a fairness field."""
    from cts.fingerprint import check_fingerprints, cell_fingerprint

    manifests = {task: read_json(p) for task, p in manifest_paths.items()}
    prints = {name: cell_fingerprint(c["cell"], c["shared"], manifests[c["cell"]["task"]])
              for name, c in sorted(cells.items())}
    check_fingerprints(prints)  # raises naming the cells and the field
    atomic_write_json(out_path, prints)
    log(f"{len(prints)} cells share their task's fingerprint")


# ----------------------------------------------------------------------------- training cells

def train_cell(cell: dict, base_final: str, train_path: str, tagged_path: str, ckpt_root: str,
               out_final: str, out_metrics: str, log=print, monitor: dict | None = None) -> None:
    """One (task, method, seed) cell; checkpoints under `<ckpt_root>/<state digest>/` (cell_state)."""
    from cts.train.loop import LoopConfig, MethodSpec, TrainData, train
    from cts.train.runtime import PolicyRuntime

    ckpt_dir, digest, inputs = cell_state(cell, base_final, train_path, tagged_path, ckpt_root)
    log(f"state {digest[:16]} → {_project_path(ckpt_dir)}")
    t = cell["train"]
    spec = MethodSpec.from_cell(cell)
    runtime = PolicyRuntime(cell["model"], cell["tokenizer"], seed=cell["seed"], batch_size=t["prompts_per_step"],
                            parallelism=cell.get("parallelism"))
    base_params = load_final_params(runtime, base_final)
    problems = load_problems(train_path)
    quads = [Quadruple.from_row({k: v for k, v in r.items() if k not in ("split", "horizon")},
                                where=f"{tagged_path}:{i + 1}")
             for i, r in enumerate(read_jsonl(tagged_path)) if r.get("split") == "train"]
    data = TrainData(sft_pairs=[(q.prompt, q.revision) for q in quads], problems=problems,
                     quadruples=quads, problems_by_id={p.id: p for p in problems})
    loop = LoopConfig(seed=cell["seed"], **{k: t[k] for k in (
        "steps", "prompts_per_step", "group_size", "learning_rate", "warmup_steps", "weight_decay",
        "grad_clip", "max_new_tokens", "temperature", "top_p", "checkpoint_every")}, **_monitor_fields(monitor))
    cts_setup = None
    if spec.cts is not None:
        from cts.train.cts_step import setup_cts

        cts_setup = setup_cts(data, log=log)
    params, rows = train(runtime=runtime, init_params=base_params, ref_params=base_params,
                         spec=spec, data=data, loop=loop, ckpt_dir=ckpt_dir, log=log, cts_setup=cts_setup)
    atomic_write_jsonl(out_metrics, rows)
    _write_final(out_final, ckpt_dir=ckpt_dir, state_digest=digest, params=params["policy"], config=cell,
                 rows=rows, inputs=inputs,
                 extra=cts_setup.report(params, rows) if cts_setup is not None else None)  # critic, edit direction


# ----------------------------------------------------------------------------- evaluation

def eval_cell(final_path: str, test_path: str, tagged_path: str, eval_cfg: dict, method: str,
              seed: int, out_problems: str, log=print, skipped_path: str | None = None) -> None:
    """Per-problem held-out results: greedy pass@1, n samples for pass@k, first-error step.
    Problems the teacher skipped (teacher.on_invalid: skip) have no base attempt and are left out."""
    import jax

    from cts.distributed import map_once  # i18
    from cts.taxonomy import diagnose
    from cts.verifiers.outcome import verify_many

    problems = load_problems(test_path)
    if skipped_path and os.path.exists(skipped_path):
        skipped = set(read_json(skipped_path)["skipped"])
        n_before = len(problems)
        problems = [p for p in problems if p.id not in skipped]
        if len(problems) < n_before:
            log(f"{n_before - len(problems)} test problem(s) left out: the teacher skipped them (invalid replies)")
    base = {r["problem_id"]: r for r in read_jsonl(tagged_path)}
    batch = eval_cfg.get("batch_size", 64)  # a big model on a few problems wants fewer filler rows
    runtime, params = _runtime_from_final(final_path, batch_size=batch)
    prompts = [p.prompt for p in problems]
    greedy = runtime.generate(params, prompts, jax.random.key(seed), max_new_tokens=eval_cfg["max_new_tokens"],
                              batch_size=batch, greedy=True)
    n = eval_cfg["n_samples"]
    sampled = runtime.generate(params, [q for q in prompts for _ in range(n)], jax.random.key(10_000 + seed),
                               max_new_tokens=eval_cfg["max_new_tokens"], batch_size=batch,
                               temperature=eval_cfg["temperature"])
    v_greedy = map_once(verify_many, list(zip(problems, greedy)))  # i18: each completion verified once
    v_sampled = map_once(verify_many, list(zip([p for p in problems for _ in range(n)], sampled)))
    rows = []
    task = problems[0].task if problems else ""
    for i, (p, g, v) in enumerate(zip(problems, greedy, v_greedy)):
        b = base.get(p.id)
        if b is None:
            raise DataError(f"{tagged_path}: no base attempt for test problem {p.id}")
        d = diagnose(p, g, v.code_verdict)
        rows.append({
            "problem_id": p.id, "task": task, "method": method, "seed": seed, "horizon": p.horizon,
            "correct": bool(v.correct), "n_samples": n,
            "n_correct": int(sum(x.correct for x in v_sampled[i * n:(i + 1) * n])),
            "base_correct": bool(b["attempt_correct"]), "critiqued": not b["attempt_correct"],
            "base_first_error_step": b["first_error_step"], "first_error_step": d.step,
            "taxonomy": None if b["attempt_correct"] else b["error_type"],
            "completion": g,
        })
    atomic_write_jsonl(out_problems, rows)
    acc = sum(r["correct"] for r in rows) / max(1, len(rows))
    log(f"{method} seed {seed}: greedy accuracy {acc:.3f} on {len(rows)} problems")


# ----------------------------------------------------------------------------- statistics

def _power_plan(config_subset: dict, manifest_paths: dict[str, str], eval_split: str) -> dict:
    return {**config_subset,
            "n_test_problems": {t: read_json(p)["splits"][eval_split]["n"] for t, p in sorted(manifest_paths.items())}}


def stats_power(plan_cfg: dict, manifest_paths: dict[str, str], eval_split: str, out_md: str,
                log=print) -> None:
    """MDE of every planned comparison, from the config and split sizes alone (before training)."""
    from cts.stats.power import write_power_report

    rows = write_power_report(_power_plan(plan_cfg, manifest_paths, eval_split), out_md)
    log(f"power: {len(rows)} planned comparisons")


def stats_table(eval_files: list[str], metrics_files: list[str], plan_cfg: dict,
                manifest_paths: dict[str, str], eval_split: str, stats_cfg: dict, out_md: str,
                out_json: str, fig_dir: str, tagged_files: list[str] = (), log=print) -> None:
    from cts.stats.table import build_table
    from cts.stats.teacher_quality import teacher_section

    os.makedirs(fig_dir, exist_ok=True)
    build_table(sorted(eval_files), base=plan_cfg["base"], ablation_base=plan_cfg.get("ablation_base"),
                metrics_files=sorted(metrics_files),
                power_plan=_power_plan(plan_cfg, manifest_paths, eval_split),
                seed=stats_cfg["seed"], n_boot=stats_cfg["n_boot"], alpha=stats_cfg["alpha"],
                out_md=out_md, out_json=out_json, fig_dir=fig_dir,
                primary=stats_cfg.get("primary_metric", "greedy"),
                extra_sections=[teacher_section(tagged_files), _teacher_skips_section(manifest_paths, log)])
    log(f"table from {len(eval_files)} eval files → {out_md}")


def _teacher_skips_section(manifest_paths: dict[str, str], log=print):
    """A table section (cts.stats.table protocol): how many attempts the LLM teacher skipped
    (teacher.on_invalid: skip). results/teacher/<task>/skipped.json is an input of every eval
    cell, so the table is rebuilt whenever it changes."""

    def section(ctx) -> list[str]:
        counts = {}
        for task, manifest in sorted(manifest_paths.items()):  # results/splits/<task>/manifest.json
            results = os.path.dirname(os.path.dirname(os.path.dirname(manifest)))
            path = os.path.join(results, "teacher", task, "skipped.json")
            if os.path.exists(path) and read_json(path)["n_skipped"]:
                counts[task] = read_json(path)["n_skipped"]
        if not counts:
            return []
        ctx.extra_json["teacher_skips"] = counts
        log(f"teacher skips noted in the table: {counts}")
        return ["", "**Teacher skips** (`teacher.on_invalid: skip`): the LLM teacher's reply stayed invalid "
                "after the re-asks for " + ", ".join(f"{n} attempt(s) of {t}" for t, n in counts.items())
                + "; those problems are left out of training quadruples and of eval "
                "(`results/teacher/<task>/skipped.json`)."]

    return section


def stats_human_eval_export(eval_files: list[str], test_paths: list[str], n_per_method: int, seed: int,
                            out_csv: str, out_key: str, log=print) -> None:
    """A blinded annotation sheet (method hidden, rows shuffled) and its key, kept apart."""
    from cts.stats.human_eval import export_blinded_sample

    prompts = {p.id: p.prompt for path in test_paths for p in load_problems(path)}
    items = []
    for path in sorted(eval_files):
        for i, r in enumerate(read_jsonl(path, required=("problem_id", "task", "method", "seed", "completion"))):
            if r["problem_id"] not in prompts:
                raise DataError(f"{path}:{i + 1}: problem {r['problem_id']!r} is not in the test split")
            items.append({"task": r["task"], "method": r["method"], "problem_id": r["problem_id"],
                          "seed": r["seed"], "prompt": prompts[r["problem_id"]], "response": r["completion"]})
    key = export_blinded_sample(items, n_per_method=n_per_method, seed=seed, out_csv=out_csv, out_key=out_key)
    log(f"human eval: {len(key)} blinded items → {out_csv} (key: {out_key})")


# ----------------------------------------------------------------------------- report

def render_table_html(md_path: str, out_html: str, log=print) -> None:
    """results/table.md as an HTML fragment for `snakemake --report`: headings, pipe tables,
    paragraphs, **bold** and `code` — the subset build_table writes (no markdown package needed)."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<i>\1</i>", text)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    with open(md_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, para, i = [], [], 0

    def flush():
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            flush()
            level = min(6, len(line) - len(line.lstrip("#")))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(line)) + "</tr>"]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(lines[i])) + "</tr>")
                i += 1
            out.append("<table border='1' cellpadding='3' style='border-collapse:collapse'>" + "".join(rows) + "</table>")
            continue
        elif line.strip().startswith(("- ", "* ")):
            flush()
            out.append(f"<ul><li>{inline(line.strip()[2:])}</li></ul>")
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    from cts.io import atomic_write_text

    atomic_write_text(out_html, "<html><body>\n" + "\n".join(out) + "\n</body></html>\n")
    log(f"rendered {md_path} → {out_html}")
