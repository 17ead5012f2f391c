"""The import graph of `cts/`: no cycles and no module importing from a layer above its own; the
stages mirror the rules (one `cts/stages/<stage>.py` per `rules/<stage>.smk`, each rule script
calling one function of its own stage, no function-level imports in a stage).

Edges are read with `ast` from every `import` / `from ... import` in a module, at any depth (a
function-level import is still an edge: it only moves the cycle from import time to call time).
`from cts.pkg import name` is an edge to `cts.pkg.name` when that is a module, else to `cts.pkg`.
The implicit import of a package's `__init__` by its submodules is not an edge.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import from its own layer or any layer below, never above.
# A module or package not listed here fails the test, so every new one gets a place on purpose.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # atomic I/O, errors, and the answer format (steps, `#### N` line, labels, decode template)
    ("foundation", ("cts", "cts.io", "cts.answer_format", "cts.distributed")),  # distributed: which process writes, map_once  # "cts": the package's own __init__ only
    # problem records, task loaders and generators, split assignment
    ("data", ("cts.tasks", "cts.splits")),
    # checking an answer: verifiers (math, code, sandbox) and the rule-based error tagger
    ("checking", ("cts.verifiers", "cts.taxonomy")),
    # things with their own domain below training: teachers, the policy model, loss functions
    ("components", ("cts.teachers", "cts.model", "cts.losses")),
    # the training loop, its methods, runtime and checkpoints
    ("training", ("cts.train", "cts.methods")),
    # the experiment around training: config, fairness, statistics, audit, cloud execution
    ("experiment", ("cts.config", "cts.fingerprint", "cts.evaluation", "cts.stats", "cts.audit", "cts.cloud")),
    # glue for Snakemake: one module per rule file, and the scripts' shared helpers
    ("glue", ("cts.stages", "cts.script_support", "cts.jobserver")),  # jobserver: runs the scripts' jobs
)

# Upward imports that stay, each with its reason (also stated as a comment at the import).
ALLOWED_UPWARD = {
    # gold answers are canonicalised by the verifier's own normalize_answer, so gold and predicted
    # answers go through one function and VERIFIER_VERSION covers both
    ("cts.tasks.loaders", "cts.verifiers.math"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "cts").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of `from <node.module> import ...` (relative imports included)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + is_package]  # level 1: a module's package, a package itself
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t.split(".")[0] != "cts":
                    continue
                while t not in mods and "." in t:  # `import cts.x.y` of a name that is not a module
                    t = t.rsplit(".", 1)[0]
                if t != mod and not mod.startswith(t + "."):  # a package's own __init__ is implicit
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "cts" and module.startswith(p + "."))) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None:
        raise LookupError(f"{module} has no layer: add it (or its package) to LAYERS in {Path(__file__).name}")
    return best[0]


def test_graph_sees_function_level_and_aliased_imports():
    """The walker itself: a function-level import and `from pkg import module as x` are edges."""
    graph = import_graph()
    assert "cts.verifiers.math" in graph["cts.taxonomy"]  # `from cts.verifiers import math as mv`
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles in cts/ (function-level imports included):\n  " + "\n  ".join(
        " <-> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    missing = []
    for m in import_graph():
        try:
            layer_of(m)
        except LookupError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_no_upward_imports():
    bad = []
    for mod, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(mod) and (mod, dep) not in ALLOWED_UPWARD:
                bad.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not bad, "imports from a higher layer:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("pair", sorted(ALLOWED_UPWARD))
def test_allowed_upward_imports_still_exist(pair):
    """An exception that is no longer needed is removed from ALLOWED_UPWARD."""
    mod, dep = pair
    assert dep in import_graph()[mod]


def test_package_does_not_import_the_tests():
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{mod} imports the tests"


# ----------------------------------------------------------------------------- stages mirror rules

def _rule_scripts() -> dict[str, str]:
    """scripts/<name>.py → the rule file (stem) whose rule runs it."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for name in re.findall(r'"\.\./scripts/(\w+)\.py"', smk.read_text(encoding="utf-8")):
            out[name] = smk.stem
    return out


def test_one_stage_module_per_rule_file():
    rule_files = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {"common"}  # common.smk: helpers, no rule
    stages = {p.stem for p in (ROOT / "cts/stages").glob("*.py")} - {"__init__"}
    assert stages == rule_files


def test_each_rule_script_calls_one_function_of_its_own_stage():
    scripts = _rule_scripts()
    assert scripts and set(scripts) == {p.stem for p in (ROOT / "scripts").glob("*.py")}
    for name, stage in scripts.items():
        tree = ast.parse((ROOT / "scripts" / f"{name}.py").read_text(encoding="utf-8"))
        cts_imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree)
                       if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cts")
                       and n.module not in ("cts.script_support", "cts.jobserver")]
        assert cts_imports == [(f"cts.stages.{stage}", [name])], f"scripts/{name}.py: {cts_imports}"
        # the job server (resources.job_server) takes the job before any heavy import
        first = [ast.unparse(n) for n in tree.body[:2]]
        assert first == ["from cts.jobserver import hand_off", "hand_off(snakemake)"], f"scripts/{name}.py: {first}"


# A function-level import in a stage hides what the stage depends on; only an optional dependency
# (one a stage needs only on some configs, and which may be missing) may be imported inside a
# function, named here with its reason. Today there is none.
OPTIONAL_IMPORTS_IN_STAGES: dict[tuple[str, str], str] = {}


def test_stages_have_no_function_level_imports():
    found, paths = [], sorted((ROOT / "cts/stages").glob("*.py")) + sorted(ROOT.glob("cts/stages.py"))
    assert paths
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                    for name in names:
                        if (path.stem, name) not in OPTIONAL_IMPORTS_IN_STAGES:
                            found.append(f"cts/stages/{path.name}:{node.lineno} {fn.name}() imports {name}")
    assert not found, "\n".join(found)
