"""No module of medsft reaches back up: its imports (module level, inside functions and type-only ones under
`if TYPE_CHECKING:`, which are dependencies too) form no cycle, between modules or between sub-packages. A cycle
is named, so the edge to move down is plain. And no layer below `train/` takes the whole resolved run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "medsft"


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """medsft modules that `name` imports anywhere in its file (relative imports resolved)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(base[: len(base) - node.level + 1] + ([module] if module else []))
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    out = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and target != "medsft" and not name.startswith(target + "."):
            out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph(by_package: bool) -> dict[str, set[str]]:
    mods = modules()
    node = (lambda m: ".".join(m.split(".")[:2])) if by_package else (lambda m: m)
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        out.setdefault(node(name), set()).update(node(t) for t in imports(name, path, set(mods)) if node(t) != node(name))
    return out


@pytest.mark.parametrize("by_package", [False, True], ids=["modules", "sub-packages"])
def test_no_import_cycle(by_package):
    found = cycles(graph(by_package))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_walker_finds_a_cycle_hidden_inside_a_function(tmp_path):
    """The check itself can fail: a function-level import that closes a loop is found."""
    pkg = tmp_path / "medsft"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medsft.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from medsft import a\n")
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        assert cycles(graph(False)) == [["medsft.a", "medsft.sub.b"]]
        assert cycles(graph(True)) == [["medsft.a", "medsft.sub"]]
    finally:
        ROOT = saved


LAYERS = ("data", "memory", "model", "io", "launch", "recipe", "adapter", "evaluation")


def wide_inputs(source: str) -> list[str]:
    """Where code below `train/` reaches for the whole resolved run: an import of medsft.train or medsft.commands,
    a parameter named `spec`, or an annotation naming RunSpec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[:2] in (["medsft", "train"],
                                                                                               ["medsft", "commands"]):
            found.append(f"line {node.lineno}: imports {node.module}")
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names
                      if a.name.split(".")[:2] in (["medsft", "train"], ["medsft", "commands"])]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            every = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                     *(a for a in (node.args.vararg, node.args.kwarg) if a)]
            for arg in every:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg in ("spec", "run_spec") or "RunSpec" in annotation:
                    found.append(f"line {node.lineno}: {node.name}({arg.arg}: {annotation or '?'})")
    return found


def test_layers_below_train_take_only_what_they_read():
    """No function under medsft/{data,memory,model,io,launch,recipe,adapter,evaluation} takes a RunSpec: each
    takes the typed sections and values it reads (data: the data section, tokenizer, Tokenization; memory: a
    Setup; model: the model and quantization sections and the placement)."""
    offenders = {str(path.relative_to(ROOT.parent)): found for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))
                 if (found := wide_inputs(path.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_the_narrow_input_check_sees_a_run_spec():
    assert wide_inputs("def f(spec):\n    return spec.recipe\n")
    assert wide_inputs("def f(run: 'RunSpec') -> None:\n    pass\n")
    assert wide_inputs("def f():\n    from medsft.train.runspec import resolve\n")
    assert not wide_inputs("def f(data_section: DataSection, tokenizer: Any) -> None:\n    pass\n")
