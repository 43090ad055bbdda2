"""A launch that starts more processes on this machine than it has GPUs (or, without one, CPU cores) says so in
one line naming --num_processes, before its workers start (here they stop at once: only the launcher is tested)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # real multi-process launches

STOP_WORKERS = "import os\nif 'LOCAL_RANK' in os.environ:\n    os._exit(3)\n"


def test_more_processes_than_cores_is_said(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(STOP_WORKERS)
    many = (os.cpu_count() or 1) + 1
    done = subprocess.run([sys.executable, "-m", "medsft", "launch", "--config_file",
                           str(REPO / "accelerate_configs" / "ddp.yaml"), "--num_processes", str(many), "train",
                           str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", f"output.dir={tmp_path / 'run'}"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
                          capture_output=True, text=True, timeout=300)
    said = [line for line in done.stderr.splitlines() if "processes on this machine" in line]
    assert len(said) == 1 and f"starts {many} processes" in said[0] and f"--num_processes {os.cpu_count()}" in said[0], \
        done.stderr[-3000:]
    assert done.returncode == 3, done.stderr[-3000:]  # the workers' own status, passed on
