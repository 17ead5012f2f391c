"""Methods as plug-ins of the one loop (cts.train.loop): a registry by name.

A method is a `cts.methods.base.Method` subclass registered with `@register_method("name")`; it owns
its config dataclass (`Method.Config`), its batch source, its reward and its loss terms. Every module
of this package is imported on first use, so a new method is one new file here plus its config block
(workflow_config.yaml + schema): nothing in the loop, the stages or the rules changes.

A `methods_config` block names its plug-in with `loss` (sft | dpo | grpo | critique_grpo); `cts: true`
on a GRPO block selects the CTS plug-in (B5 = B3 + CTS terms; the config's historical spelling).
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["get_method", "method_from_cell", "method_name", "method_names", "register_method"]

_METHODS: dict[str, type] = {}
_LOADED = False


def register_method(name: str):
    """Class decorator: register a Method subclass under `name` (a `methods_config.<id>.loss` value)."""
    def decorator(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return decorator


def _load_all() -> None:
    """Import every module of this package once, so each registers itself."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True


def method_names() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_METHODS))


def get_method(name: str) -> type:
    """The registered Method class; an unknown name raises LookupError listing the known ones."""
    _load_all()
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise LookupError(f"unknown method {name!r}; known methods: {sorted(_METHODS)}") from None


def method_name(method_config: dict) -> str:
    """The plug-in a `methods_config` block selects."""
    return "cts" if method_config.get("cts") else method_config["loss"]


def method_from_cell(cell: dict, runtime):
    """The Method of one cell (cts.config.cell_config), with its config built from the cell's blocks."""
    cls = get_method(method_name(cell["method_config"]))
    return cls(cls.Config.from_cell(cell), runtime)
