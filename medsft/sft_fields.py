"""The fields of `trl.SFTConfig` and their types, read from TRL's and transformers' source without
importing them.

Why: `training:` accepts any SFTConfig field, and recipes must be validated before torch is imported
(importing trl imports torch: seconds, and noise, before a typo is reported). Parsing the installed
sources with `ast` gives the real field list of the installed versions in milliseconds.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

# (module, class) pairs, base classes first; later ones override earlier ones.
_CLASSES = [
    ("transformers.training_args", "TrainingArguments"),
    ("trl.trainer.base_config", "_BaseConfig"),
    ("trl.trainer.sft_config", "SFTConfig"),
]


@dataclass(frozen=True)
class FieldType:
    """What a field accepts: a set of simple kinds ('bool', 'int', 'float', 'str', 'dict', 'list', 'any')."""

    kinds: frozenset[str]
    optional: bool

    def describe(self) -> str:
        kinds = sorted(self.kinds - {"any"}) or ["any value"]
        return " or ".join(kinds) + (" or null" if self.optional else "")


def _module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    root = Path(list(spec.submodule_search_locations)[0])
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _kinds(node: ast.AST) -> tuple[set[str], bool]:
    """Kinds accepted by one annotation expression."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, lo = _kinds(node.left)
        right, ro = _kinds(node.right)
        return left | right, lo or ro
    if isinstance(node, ast.Constant):
        if node.value is None:
            return set(), True
        if isinstance(node.value, str):  # a string annotation
            return _kinds(ast.parse(node.value, mode="eval").body)
        return {"any"}, False
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        if base == "Optional":
            kinds, _ = _kinds(node.slice)
            return kinds, True
        if base == "Union":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            out, opt = set(), False
            for elt in elts:
                k, o = _kinds(elt)
                out |= k
                opt = opt or o
            return out, opt
        if base == "Literal":
            return {"any"}, False
        return {base.lower()} if base.lower() in {"dict", "list"} else {"any"}, False
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    if name in {"bool", "int", "float", "str", "dict", "list"}:
        return {name}, False
    if name == "Any":
        return {"any"}, True
    # Enum-like classes (IntervalStrategy, SchedulerType, ...) are given as strings in YAML.
    return {"str"}, False


@functools.lru_cache(maxsize=1)
def sft_config_fields() -> dict[str, FieldType]:
    """Every public field of the installed `trl.SFTConfig`, with the kinds of value it accepts."""
    fields: dict[str, FieldType] = {}
    for module, cls_name in _CLASSES:
        tree = ast.parse(_module_path(module).read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                name = stmt.target.id
                if name.startswith("_"):
                    continue
                kinds, optional = _kinds(stmt.annotation)
                fields[name] = FieldType(frozenset(kinds), optional)
    return fields


def check_value(value, ftype: FieldType):
    """Return `value` coerced to the field's type, or raise ValueError with what was expected.

    YAML reads `1e-4` as a string (YAML 1.1 wants `1.0e-4`), so numeric strings are accepted for
    numeric fields, as transformers' own argument parser does.
    """
    if value is None:
        if ftype.optional or "any" in ftype.kinds:
            return None
        raise ValueError(f"must be {ftype.describe()}")
    kinds = ftype.kinds
    if "any" in kinds:
        return value
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
        raise ValueError(f"must be {ftype.describe()}")
    if isinstance(value, int) and ("int" in kinds or "float" in kinds):
        return value
    if isinstance(value, float):
        if "float" in kinds:
            return value
        if "int" in kinds and value.is_integer():
            return int(value)
    if isinstance(value, str):
        if "int" in kinds:
            try:
                return int(value)
            except ValueError:
                pass
        if "float" in kinds:
            try:
                return float(value)
            except ValueError:
                pass
        if "bool" in kinds and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        if "str" in kinds:
            return value
    if isinstance(value, dict) and "dict" in kinds:
        return value
    if isinstance(value, list) and "list" in kinds:
        return value
    raise ValueError(f"must be {ftype.describe()}")
