"""One files service: hashing, atomic writes, renames into place and process identity live in medsft/io/ only, so
every command and the trainer share one rule for each (the test reads the code; its self-test shows it can fail)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "medsft"
CALLS = {("os", "replace"), ("os", "rename"), ("os", "link"), ("shutil", "move")}


def offences(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"imports {n}" for n in names if n and n.split(".")[0] == "hashlib"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if (owner, node.func.attr) in CALLS:
                found.append(f"calls {owner}.{node.func.attr}")
            elif node.func.attr == "rename":
                found.append("calls .rename")
        elif isinstance(node, ast.Attribute) and node.attr == "O_EXCL":
            found.append("creates a file exclusively (O_EXCL)")
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            text = ast.unparse(node)
            if "/proc/" in text and "stat" in text:
                found.append("reads a process's start time")
    return found


def test_no_hashing_atomic_write_rename_or_process_start_outside_io():
    bad = {}
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] == "io":
            continue
        found = offences(path.read_text(encoding="utf-8"))
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert bad == {}, f"use medsft/io (hashing, outputs.atomic_file/write_json/publish, process): {bad}"


def test_the_check_finds_each_kind():
    sample = ("import hashlib\nimport os\nos.replace('a', 'b')\nPath('a').rename('b')\n"
              "os.open('x', os.O_CREAT | os.O_EXCL)\nopen(f'/proc/{pid}/stat')\n")
    assert len(offences(sample)) == 5
