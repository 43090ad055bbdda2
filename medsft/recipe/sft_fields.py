"""The fields of the installed `trl.SFTConfig`, their types and their choices, read without importing it.

Why: `training:` accepts any SFTConfig field and is validated before torch is imported (importing trl
imports torch: seconds, and noise, before a typo is reported). Parsing the installed sources with `ast`
gives the real field list of the installed versions in milliseconds, and the choices TRL and
transformers declare themselves (`metadata={"choices": …}`, or the values of an enum such as
`IntervalStrategy`), so medsft never checks a narrower set than the libraries accept.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

# (module, class) pairs, base classes first; later ones override earlier ones.
CLASSES = [
    ("transformers.training_args", "TrainingArguments"),
    ("trl.trainer.base_config", "_BaseConfig"),
    ("trl.trainer.sft_config", "SFTConfig"),
]
SIMPLE = {"bool", "int", "float", "str", "dict", "list"}


@dataclass(frozen=True)
class FieldSpec:
    kinds: frozenset[str]  # of SIMPLE, or {"any"}
    optional: bool
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        kinds = sorted(self.kinds - {"any"}) or ["any value"]
        return " or ".join(kinds) + (" or null" if self.optional else "")


def module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*module.split(".")[1:]).with_suffix(".py")


@functools.cache
def parsed(module: str) -> ast.Module:
    return ast.parse(module_path(module).read_text(encoding="utf-8"))


def enum_values(module: str, name: str) -> tuple[str, ...] | None:
    """String values of enum class `name` defined in or imported by `module` (IntervalStrategy → no, steps, …)."""
    sources = [module]
    for node in parsed(module).body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            package = module.rsplit(".", node.level)[0] if node.level else ""
            source = ".".join(p for p in (package, node.module or "") if p)
            sources.append(source if module_path(source).is_file() else source + ".__init__")
    for source in sources:
        try:
            tree = parsed(source)
        except (ModuleNotFoundError, OSError):
            continue
        for cls in tree.body:
            if isinstance(cls, ast.ClassDef) and cls.name == name:
                values = tuple(s.value.value for s in cls.body if isinstance(s, ast.Assign)
                               and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
                return values or None
    return None


def kinds_of(node: ast.AST, module: str) -> tuple[set[str], bool, tuple[str, ...] | None]:
    """(kinds, optional, enum choices) accepted by one annotation expression."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        (lk, lo, lc), (rk, ro, rc) = kinds_of(node.left, module), kinds_of(node.right, module)
        return lk | rk, lo or ro, lc or rc
    if isinstance(node, ast.Constant):
        if node.value is None:
            return set(), True, None
        if isinstance(node.value, str):  # a string annotation
            return kinds_of(ast.parse(node.value, mode="eval").body, module)
        return {"any"}, False, None
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        if base in ("Optional", "Union"):
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            out: set[str] = set()
            opt, ch = base == "Optional", None
            for elt in elts:
                k, o, c = kinds_of(elt, module)
                out, opt, ch = out | k, opt or o, ch or c
            return out, opt, ch
        return ({base.lower()} if base.lower() in SIMPLE else {"any"}), False, None
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    if name in SIMPLE:
        return {name}, False, None
    choices = enum_values(module, name)
    return ({"str"}, False, choices) if choices else ({"any"}, name == "Any", None)


def declared_choices(call: ast.AST | None) -> tuple[str, ...] | None:
    """`field(metadata={"choices": [...]})` → the choices."""
    if not isinstance(call, ast.Call):
        return None
    for kw in call.keywords:
        if kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
            for key, value in zip(kw.value.keys, kw.value.values):
                if isinstance(key, ast.Constant) and key.value == "choices" and isinstance(value, (ast.List, ast.Tuple)):
                    return tuple(e.value for e in value.elts
                                 if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return None


@functools.lru_cache(maxsize=1)
def sft_config_fields() -> dict[str, FieldSpec]:
    """Every public field of the installed `trl.SFTConfig` (inherited ones included)."""
    fields: dict[str, FieldSpec] = {}
    for module, cls_name in CLASSES:
        cls = next(n for n in parsed(module).body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and not stmt.target.id.startswith("_"):
                kinds, optional, choices = kinds_of(stmt.annotation, module)
                fields[stmt.target.id] = FieldSpec(frozenset(kinds), optional, declared_choices(stmt.value) or choices)
    return fields
