"""One commands layer: medsft/commands/ holds a module per command and is the only layer that prints or exits;
cli.py is the table; the quick commands and every --help leave torch unimported; `medsft env` says what a bug
report needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from medsft.cli import COMMANDS
from tests.conftest import REPO

DOMAIN = ("data", "memory", "model", "io", "launch", "recipe", "adapter", "evaluation")
SPEAKS = re.compile(r"^[^#]*(\bprint\(|sys\.exit\(|\bexit\(|from medsft\.console import .*\b(say|notice|error|"
                    r"rich_console)\b|\bconsole\.(print|input|log)\()")


def test_the_domain_never_prints_or_exits():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for package in DOMAIN
             for path in sorted((REPO / "medsft" / package).rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if SPEAKS.search(line)]
    assert found == [], "only medsft/commands (and training's own progress) print or exit:\n" + "\n".join(found)


def test_the_check_finds_a_print():
    assert SPEAKS.search("    print('x')") and SPEAKS.search("from medsft.console import notice, say")
    assert not SPEAKS.search("# print('x')") and not SPEAKS.search("from medsft.console import is_main")


def test_cli_is_a_table_of_one_module_per_command():
    assert len((REPO / "medsft" / "cli.py").read_text().splitlines()) <= 60
    for name, module in COMMANDS.items():
        assert (REPO / "medsft" / "commands" / f"{module}.py").is_file(), name


def imported_after(*args) -> set[str]:
    code = ("import sys, io, contextlib\nfrom medsft.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({list(map(str, args))!r})\n    except SystemExit:\n        pass\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'trl', 'peft', 'bitsandbytes', 'accelerate', 'datasets', 'deepspeed'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


@pytest.mark.parametrize("args", [
    *[[name, "--help"] for name in COMMANDS], ["--help"], ["env"],
    ["preflight", REPO / "recipes" / "llama3.1-8b.yaml", "--gpu-memory", "24GiB"],
    ["train", REPO / "recipes" / "tiny-cpu.yaml", "--set", "training.learning_rat=1"],
], ids=lambda a: " ".join(map(str, a)).replace(str(REPO) + "/", ""))
def test_quick_commands_leave_torch_out(args):
    assert imported_after(*args) == set()


def test_env_has_a_line_for_each_package_and_the_machine():
    done = subprocess.run([sys.executable, "-m", "medsft", "env"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("medsft", "Python", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes",
                 "flash-attn", "liger-kernel", "datasets", "GPUs", "CPU flags", "HF cache",
                 "accelerate default config", "tested set"):
        assert sum(line.startswith(f"- {name}: ") for line in lines) == 1, (name, done.stdout)
    assert "offline" in next(line for line in lines if line.startswith("- HF cache: "))  # the tests run offline
    version = subprocess.run([sys.executable, "-m", "medsft", "--version"], cwd=REPO, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert version.returncode == 0 and version.stdout.startswith("medsft ")
