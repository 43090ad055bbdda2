"""bench/gpu.py's CPU smoke mode runs the GPU benchmark's code paths (medsft, the notebook baseline, the
max_length search) end to end and writes its JSON."""

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
    medsft, notebook = data["rows"]
    assert medsft["run"] == "medsft" and notebook["run"] == "notebook"
    assert medsft["steps"] == 2 and medsft["tokens_per_second"] > 0 and medsft["tflops_per_second"] > 0
    assert medsft["preflight_gib"] > 0 and medsft["kernels"] == "off"  # no GPU: off, with a notice
    assert "kernels: off (no GPU" in res.stderr
    assert notebook["steps"] == 4 and notebook["tokens_per_second"] > 0
    assert data["longest"]["longest_max_length"] == 256  # nothing runs out of memory on the CPU


def run_bench(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDSFT_BENCH_RESULTS": str(tmp_path)}
    res = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_cpu_bench_runs_end_to_end(tmp_path, tiny_dir):
    """Three warm-up steps plus a few timed ones, all three runs: the JSON holds every number the table
    shows (no timing is asserted: ratios are only meaningful on a quiet machine with more reps)."""
    run_bench(["bench/cpu.py", "--reps", "1", "--steps", "6", "--interleaved-steps", "8"], tmp_path)
    (result,) = tmp_path.glob("cpu-*.json")
    data = json.loads(result.read_text())
    assert set(data["median_seconds_per_step"]) == {"medsft", "bare TRL", "notebook"}
    assert all(v > 0 for v in data["median_seconds_per_step"].values())
    assert all(v > 0 for v in data["median_seconds_to_first_step"].values())
    interleaved = data["interleaved"]  # the two trainers took turns: one timed step each after warm-up, both orders
    for session in interleaved["sessions"].values():
        assert [len(c) for c in session["cycles"].values()] == [4, 4]
    assert [s["order"][0] for s in interleaved["sessions"].values()] == ["medsft", "bare TRL", "bare TRL"]
    assert interleaved["medsft / bare TRL (position-corrected)"] > 0
    assert interleaved["A/A control: leader / follower"] > 0
    assert 0.85 < data["tokens"]["trained_token_share"]["medsft (prompt/completion)"] < 1  # question masked
    assert data["tokens"]["computed_per_real_token"]["padded batches of 8"] > 1


def test_data_stage_bench_hits_the_cache_when_warm(tmp_path, tiny_dir):
    res = run_bench(["bench/data_stage.py", "--rows", "300", "--reps", "1"], tmp_path)
    (result,) = tmp_path.glob("data-stage-*.json")
    data = json.loads(result.read_text())
    assert data["rows"] == 300 and data["train_rows"] > 200
    assert len(data["cold_seconds"]) == len(data["warm_seconds"]) == 1
    assert "cold" in res.stdout and "warm" in res.stdout
