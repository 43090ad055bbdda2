"""What the refusal tests share: a user's workspace, recipes changed one key at a time, and the check that a
command refused in one line and changed nothing. The `workspace` fixture (tests/conftest.py) fills a
temporary directory with USER_FILES."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from tests.conftest import REPO, run_cli, run_cli_here

BASE = yaml.safe_load((REPO / "recipes" / "tiny-cpu.yaml").read_text())
ROWS_OK = [{"Question": f"q{i}?", "Complex_CoT": f"because {i}", "Response": f"answer {i}"} for i in range(40)]
USER_FILES = {
    "README.md": "# my project\n", "notes/todo.txt": "train it\n", "mine/keep.txt": "precious\n",
    "runs/other/weights.bin": "not medsft's\n", "data/rows.json": json.dumps(ROWS_OK),
}


def recipe_with(**changes) -> dict:
    """tiny-cpu with `section__key=value` changes (value None deletes the key)."""
    out = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value is None:
            out.setdefault(section, {}).pop(key, None)
        else:
            out.setdefault(section, {})[key] = value
    return out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert expected in errors[0], errors[0]
    assert " — " in errors[0], f"no fix given: {errors[0]}"


def run_case(workspace: Path, args, expected: str, env=None, files=None) -> None:
    """Create the case's own input files, snapshot, run, check the line and that nothing changed."""
    for name, content in (files or {}).items():
        path = workspace / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(workspace)
    res = run_cli(*args, cwd=workspace, env=env, timeout=300) if env else run_cli_here(*args, cwd=workspace)
    check_one_line_error(res, expected)
    assert snapshot(workspace) == before, "a failed command changed or wrote files"


def recipe_file(recipe) -> bytes:
    return (recipe if isinstance(recipe, str) else yaml.safe_dump(recipe)).encode()


def fake_adapter(directory: Path) -> None:
    """A well-formed adapter directory (medsft's files, a one-tensor LoRA), for input checks that come first."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({"base_model.model.layers.0.lora_A.weight": torch.zeros(2, 2)}, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe_with(output__dir="run")))
    (directory / ".medsft.json").write_text(json.dumps({"kind": "adapter"}))


def check_said_before_torch(workspace, args, expected: str, env=None) -> None:
    """The CLI, as a subprocess under `-X importtime`, says its one error line without importing torch."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "medsft", *args],
                         cwd=workspace, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    imported = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "pydantic" in imported, "the import trace is empty: nothing to check"
    assert not {"torch", "transformers", "trl"} & imported, sorted({"torch", "transformers", "trl"} & imported)
    res.stderr = "\n".join(line for line in res.stderr.splitlines() if not line.startswith("import time:"))
    check_one_line_error(res, expected)
