"""bench/gpu.py's CPU smoke mode runs the GPU benchmark's code path end to end and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_bench_smoke(tmp_path, tiny_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDSFT_BENCH_RESULTS": str(tmp_path)}
    res = subprocess.run([sys.executable, "bench/gpu.py", "--smoke"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (result,) = tmp_path.glob("gpu-smoke-*.json")
    data = json.loads(result.read_text())
    assert data["environment"]["versions"]["trl"] and data["environment"]["device"] == "cpu"
    (row,) = data["rows"]
    assert row["steps"] == 2 and row["tokens_per_second"] > 0 and row["tflops_per_second"] > 0
    assert row["preflight_gib"] > 0
