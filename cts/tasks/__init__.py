"""Tasks: every loader returns normalized `Problem` records (cts.tasks.schema).

`load_task(name, data_cfg)` is the one entry point the pipeline uses: the synthetic horizon tasks
are generated here; real datasets (GSM8K, MBPP, APPS, HumanEval) come from cts.tasks.loaders.
"""

from __future__ import annotations

from cts.tasks.schema import Problem

__all__ = ["load_task"]


def load_task(name: str, data_cfg: dict) -> list[Problem]:
    loader = data_cfg.get("loader", name)
    if loader in ("synth_math", "synth_code"):
        from cts.tasks.synthetic import generate_synth_code, generate_synth_math

        gen = generate_synth_math if loader == "synth_math" else generate_synth_code
        return gen(data_cfg.get("n_problems", 500), list(data_cfg.get("horizons", [2, 3, 4, 5, 6])),
                   data_cfg.get("seed", 0), data_cfg.get("max_operand", 9), data_cfg.get("max_value", 99))
    from cts.tasks.loaders import load_task as load_real

    options = {k: v for k, v in data_cfg.items() if k not in ("loader", "n_problems", "horizons", "max_operand", "max_value", "seed")}
    return load_real(loader, **options)
