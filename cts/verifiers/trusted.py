"""The trusted half of code verification: split tests into candidate holes, decide in the parent.

A test such as `assert math.isclose(area(2), 12.566, rel_tol=1e-3)` is split into
  holes     — the sub-expressions that need the candidate's code (`area(2)`); only their source
              text enters the sandbox, where the harness evaluates them and prints each value in
              a tagged plain-data form (`encode` in the harness; `decode_plain` here);
  skeleton  — the rest of the expression with each hole replaced by a name (`__hole_0`), which
              the parent evaluates with `evaluate_skeleton`, a small interpreter over plain data
              (literals, arithmetic, comparisons, and/or/not, subscripts, and a fixed list of
              builtins and `math` functions). The expected values never enter the sandbox.

What a candidate can therefore forge is only the value of its own holes, as plain data
(None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset — exact types,
never subclasses, never objects with their own `__eq__`): it passes a test only by producing
the right value. Frame walking, patched builtins, fake report lines and early exits cannot
change what the parent compares.

Hole rule (`split_test`): a Name that is neither a trusted builtin nor a stdlib module is the
candidate's; a call whose callee mentions a candidate name is one hole (its arguments are the
test's inputs); a candidate name or attribute elsewhere is a hole; operators, comparisons,
containers, subscripts and trusted calls are kept in the skeleton. A sub-expression that uses
only stdlib modules (`sys.getsizeof((1, 2))`, 3 MBPP asserts) but that the parent does not
interpret becomes a *reference* hole: it is evaluated in a second sandbox run that contains no
candidate code.
"""

from __future__ import annotations

import ast
import math
import operator
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Hole", "SplitTest", "UnsupportedTest", "bound_names", "decode_plain", "evaluate_skeleton",
           "split_test", "split_humaneval_check"]

# Builtins the parent applies to plain data itself. Each is a pure function of its arguments.
_TRUSTED_FUNCS: dict[str, Any] = {
    "set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict,
    "sorted": sorted, "len": len, "abs": abs, "round": round, "min": min, "max": max, "sum": sum,
    "int": int, "float": float, "str": str, "bool": bool, "all": all, "any": any,
    "complex": complex, "bytes": bytes, "repr": repr, "isinstance": isinstance, "type": type,
    "reversed": lambda x: list(reversed(x)), "enumerate": lambda x: list(enumerate(x)),
    "zip": lambda *xs: list(zip(*xs)), "range": lambda *a: list(range(*a)) if _small_range(*a) else _too_big(),
}
_TRUSTED_CONSTS = {"True": True, "False": False, "None": None}
_MATH_ATTRS = {"isclose", "fabs", "sqrt", "floor", "ceil", "inf", "nan", "pi", "e", "isnan", "isinf",
               "log", "exp", "pow", "trunc"}
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"math", "sys", "re", "collections"}
_MAX_ITEMS = 1_000_000  # a cap on containers the parent builds (a hostile `hole * 10**9`)
_MAX_DEPTH = 200


class UnsupportedTest(ValueError):
    """A test the splitter cannot turn into holes + skeleton (message names the construct)."""


def _small_range(*a) -> bool:
    return len(range(*a)) <= _MAX_ITEMS


def _too_big():
    raise OverflowError("range too large to evaluate in the trusted parent")


@dataclass(frozen=True)
class Hole:
    """One sub-expression evaluated in a sandbox: `source` text; `reference`: no candidate code.

    `modules`: the stdlib modules a reference hole names (imported first in the clean run).
    """

    source: str
    reference: bool = False
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitTest:
    """A test as (skeleton expression over `__hole_k` names, holes)."""

    skeleton: ast.Expression
    holes: tuple[Hole, ...]
    text: str


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _is_candidate_name(name: str, shadowed: frozenset[str] = frozenset()) -> bool:
    return name in shadowed or (name not in _TRUSTED_FUNCS and name not in _TRUSTED_CONSTS
                                and name not in _STDLIB)


def _mentions_candidate(node: ast.AST, shadowed: frozenset[str] = frozenset()) -> bool:
    return any(_is_candidate_name(n, shadowed) for n in _names(node))


def bound_names(source: str) -> frozenset[str]:
    """The module-level names `source` binds (defs, classes, assignments, imports, `global`s).

    Called on the problem's REFERENCE solution and test setup, never on the candidate: a test that
    mentions one of these names means the solution's object (`sum` in MBPP task 126 is the
    solution's own function), so it is taken as the candidate's, not as the builtin. A candidate
    that binds `math` or `set` itself changes nothing: those stay trusted and run in the parent.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    out = set()

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if top:
                out.add(node.name)
            for child in ast.iter_child_nodes(node):
                visit(child, False)
            return
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
        elif top and isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif top and isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, top and not isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp,
                                                       ast.DictComp, ast.GeneratorExp)))

    for stmt in tree.body:
        visit(stmt, True)
    return frozenset(out)


def _is_math_attr(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "math" and node.attr in _MATH_ATTRS)


class _Splitter:
    def __init__(self, rename: dict[str, str] | None = None, shadowed: frozenset[str] = frozenset()):
        self.holes: list[Hole] = []
        self.rename = rename or {}
        self.shadowed = shadowed

    def _hole(self, node: ast.expr, reference: bool) -> ast.Name:
        node = _Rename(self.rename).visit(node)
        modules = tuple(sorted(n for n in _names(node) if n in _STDLIB)) if reference else ()
        self.holes.append(Hole(ast.unparse(node), reference, modules))
        return ast.Name(id=f"__hole_{len(self.holes) - 1}", ctx=ast.Load())

    def visit(self, node: ast.expr) -> ast.expr:
        cand = _mentions_candidate(node, self.shadowed) or any(n in self.rename for n in _names(node))
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Name):
            if node.id in self.rename or _is_candidate_name(node.id, self.shadowed):
                return self._hole(node, reference=False)
            if node.id in _TRUSTED_FUNCS or node.id in _TRUSTED_CONSTS:
                return node
            return self._hole(node, reference=True)  # a bare stdlib module used as a value
        if _is_math_attr(node) and "math" not in self.shadowed:
            return node
        if isinstance(node, ast.Call):
            func = node.func
            trusted_callee = ((isinstance(func, ast.Name) and func.id in _TRUSTED_FUNCS
                               and func.id not in self.shadowed)
                              or (_is_math_attr(func) and "math" not in self.shadowed))
            if not trusted_callee:
                return self._hole(node, reference=not cand)
            return ast.Call(func=func, args=[self.visit_starred(a) for a in node.args],
                            keywords=[ast.keyword(arg=k.arg, value=self.visit(k.value))
                                      for k in node.keywords])
        if isinstance(node, ast.Attribute):
            return self._hole(node, reference=not cand)
        if isinstance(node, ast.BinOp):
            return ast.BinOp(left=self.visit(node.left), op=node.op, right=self.visit(node.right))
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(op=node.op, operand=self.visit(node.operand))
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.visit(v) for v in node.values])
        if isinstance(node, ast.Compare):
            return ast.Compare(left=self.visit(node.left), ops=node.ops,
                               comparators=[self.visit(c) for c in node.comparators])
        if isinstance(node, ast.IfExp):
            return ast.IfExp(test=self.visit(node.test), body=self.visit(node.body),
                             orelse=self.visit(node.orelse))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return type(node)(elts=[self.visit_starred(e) for e in node.elts],
                              **({"ctx": ast.Load()} if not isinstance(node, ast.Set) else {}))
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return self._hole(node, reference=not cand)
            return ast.Dict(keys=[self.visit(k) for k in node.keys],
                            values=[self.visit(v) for v in node.values])
        if isinstance(node, ast.Subscript):
            return ast.Subscript(value=self.visit(node.value), slice=self.visit(node.slice),
                                 ctx=ast.Load())
        if isinstance(node, ast.Slice):
            return ast.Slice(*(self.visit(p) if p is not None else None
                               for p in (node.lower, node.upper, node.step)))
        # comprehensions, lambdas, f-strings, ...: evaluated whole, in a sandbox
        return self._hole(node, reference=not cand)

    def visit_starred(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Starred):
            return ast.Starred(value=self.visit(node.value), ctx=ast.Load())
        return self.visit(node)


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.mapping.get(node.id, node.id), ctx=node.ctx)


def _split_expr(test_expr: ast.expr, text: str, rename: dict[str, str] | None = None,
                shadowed: frozenset[str] = frozenset()) -> SplitTest:
    sp = _Splitter(rename, shadowed)
    skeleton = ast.Expression(body=sp.visit(test_expr))
    ast.fix_missing_locations(skeleton)
    return SplitTest(skeleton=skeleton, holes=tuple(sp.holes), text=text)


def split_test(text: str, shadowed: frozenset[str] = frozenset()) -> SplitTest:
    """Split one assert statement (MBPP / synthetic form) into skeleton + holes.

    shadowed: names the candidate (or the test setup) binds (`bound_names`); never trusted.

    Raises:
      UnsupportedTest: `text` is not a single `assert <expr>` statement.
    """
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as e:
        raise UnsupportedTest(f"test does not parse: {e}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise UnsupportedTest(f"test is not a single assert statement: {text.strip()[:120]!r}")
    return _split_expr(tree.body[0].test, text.strip(), shadowed=shadowed)


def split_humaneval_check(check_src: str, entry_point: str,
                          shadowed: frozenset[str] = frozenset()) -> list[SplitTest]:
    """The asserts of a HumanEval `def check(candidate): ...`, `candidate` renamed to entry_point.

    Only straight-line check bodies are supported (asserts, imports, docstrings, constant
    assignments such as `metadata = {...}`): a loop or helper function would have to run next to
    the candidate, where its verdict could be forged.

    Raises:
      UnsupportedTest: no `check` function, or a statement of another kind (named, with its line).
    """
    try:
        tree = ast.parse(check_src)
    except SyntaxError as e:
        raise UnsupportedTest(f"check() does not parse: {e}") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise UnsupportedTest("no `def check(candidate)` in the test")
    fn = checks[0]
    arg = fn.args.args[0].arg if fn.args.args else "candidate"
    out = []
    for stmt in fn.body:
        if isinstance(stmt, ast.Assert):
            out.append(_split_expr(stmt.test, ast.unparse(stmt), rename={arg: entry_point},
                                   shadowed=shadowed))
        elif isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)) or (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue
        elif isinstance(stmt, ast.Assign) and not _mentions_candidate(stmt.value, shadowed) \
                and arg not in _names(stmt.value):
            continue  # metadata and other constants that no assert reads (checked below)
        else:
            raise UnsupportedTest(f"check() line {stmt.lineno}: a {type(stmt).__name__} statement "
                                  "cannot be verified outside the candidate's process")
    if not out:
        raise UnsupportedTest("check() has no assert statements")
    return out


# ----------------------------------------------------------------------------- plain data

_SCALAR_TAGS = ("none", "bool", "int", "float", "complex", "str", "bytes")


def decode_plain(obj: Any, depth: int = 0) -> Any:
    """Value of the harness's tagged form `[tag, payload]` (see the harness's `encode`).

    Raises:
      ValueError: malformed (a candidate can print anything; nothing malformed is trusted).
    """
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], str):
        raise ValueError(f"not a tagged value: {str(obj)[:60]}")
    tag, v = obj
    if tag == "none" and v is None:
        return None
    if tag == "bool" and type(v) is bool:
        return v
    if tag == "int" and type(v) is int:
        return v
    if tag == "int" and type(v) is str:  # beyond JSON's comfortable range: decimal digits
        return int(v)
    if tag == "float" and type(v) is str:
        return float(v)
    if tag == "complex" and type(v) is list and len(v) == 2:
        return complex(float(v[0]), float(v[1]))
    if tag == "str" and type(v) is str:
        return v
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if tag in ("list", "tuple", "set", "frozenset") and type(v) is list:
        items = [decode_plain(x, depth + 1) for x in v]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and type(v) is list:
        out = {}
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict item")
            out[decode_plain(pair[0], depth + 1)] = decode_plain(pair[1], depth + 1)
        return out
    raise ValueError(f"bad tagged value {tag!r}")


# ----------------------------------------------------------------------------- the skeleton

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
           ast.BitXor: operator.xor, ast.LShift: operator.lshift, ast.RShift: operator.rshift}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_UNOPS = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos,
          ast.Invert: operator.invert}


def _size(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


def _binop(op: ast.operator, a: Any, b: Any) -> Any:
    if isinstance(op, ast.Mult) and (isinstance(a, int) or isinstance(b, int)):
        n, seq = (a, b) if isinstance(a, int) else (b, a)
        if _size(seq) * max(n, 0) > _MAX_ITEMS:
            raise OverflowError("sequence repetition too large")
    if isinstance(op, (ast.Pow, ast.LShift)) and isinstance(b, int) and abs(b) > 10_000:
        raise OverflowError("exponent too large")
    return _BINOPS[type(op)](a, b)


def evaluate_skeleton(skeleton: ast.Expression, holes: dict[str, Any]) -> Any:
    """Evaluate a skeleton from `split_test` with `holes` = {"__hole_k": plain value}.

    Raises whatever the expression raises (TypeError, ZeroDivisionError, ...), as the assert would.
    """
    env = {**_TRUSTED_FUNCS, **_TRUSTED_CONSTS, **holes}

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise NameError(f"name {node.id!r} is not defined")
            return env[node.id]
        if _is_math_attr(node):
            return getattr(math, node.attr)
        if isinstance(node, ast.BinOp):
            return _binop(node.op, ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNOPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BoolOp):
            value = None
            for v in node.values:
                value = ev(v)
                if isinstance(node.op, ast.And) and not value:
                    return value
                if isinstance(node.op, ast.Or) and value:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Tuple):
            return tuple(_elts(node.elts))
        if isinstance(node, ast.List):
            return list(_elts(node.elts))
        if isinstance(node, ast.Set):
            return set(_elts(node.elts))
        if isinstance(node, ast.Dict):
            return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Subscript):
            return ev(node.value)[ev(node.slice)]
        if isinstance(node, ast.Slice):
            return slice(*(ev(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
        if isinstance(node, ast.Call):
            func = ev(node.func)
            args = _elts(node.args)
            kwargs = {k.arg: ev(k.value) for k in node.keywords if k.arg is not None}
            return func(*args, **kwargs)
        raise UnsupportedTest(f"the trusted evaluator does not handle {type(node).__name__}")

    def _elts(elts) -> list:
        out = []
        for e in elts:
            if isinstance(e, ast.Starred):
                out.extend(ev(e.value))
            else:
                out.append(ev(e))
        return out

    return ev(skeleton)
