"""bench/gpu.py's CPU smoke mode runs every GPU phase's code path (throughput, memory against the preflight,
the max_length search, the notebook baseline) end to end and writes each phase's JSON and summary table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # trains the tiny model


def test_gpu_bench_smoke(tmp_path, tiny_dir):
    """Every phase (throughput, memory, maxlen, notebook) on the tiny model: one JSON per phase with the
    environment, and one markdown table per phase appended to the summary file."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDSFT_BENCH_RESULTS": str(tmp_path)}
    res = subprocess.run([sys.executable, "bench/gpu.py", "--smoke"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = {}
    for phase in ("throughput", "memory", "maxlen", "notebook"):
        (result,) = tmp_path.glob(f"gpu-smoke-{phase}-*.json")
        data[phase] = json.loads(result.read_text())
        assert data[phase]["phase"] == phase and data[phase]["skipped"] == []
        assert data[phase]["environment"]["versions"]["trl"] and data[phase]["environment"]["device"] == "cpu"
        assert data[phase]["environment"]["date"]
        assert data[phase]["git_commit"] == data[phase]["environment"]["git_commit"]
        assert data[phase]["gpu"]["torch"]  # the accelerator's description (none here) and torch's CUDA build

    (medsft,) = data["throughput"]["rows"]
    assert medsft["run"] == "medsft" and medsft["steps"] == 3 and medsft["timed_steps"] == 1
    assert medsft["tokens_per_second"] > 0 and medsft["tflops_per_second"] > 0 and medsft["step_seconds"] > 0
    assert 0 < medsft["attention_context"] < 256  # rows attend within themselves, not over the packed 256
    assert medsft["preflight_gib"] > 0 and medsft["peak_memory_gib"] is None  # no CUDA peak on the CPU
    assert medsft["kernels"] == "off"  # no GPU: off, with a notice
    # the smoke runs medsft's varlen branch: torch's own wrapper over the reference kernel (tests/compat)
    assert medsft["attention"] == "varlen" and medsft["attention_choice"]["implementation"] == "medsft_varlen"
    assert "kernels: off (no GPU" in res.stderr

    memory = data["memory"]["rows"]
    assert [(r["micro_batch"], r["checkpointing"]) for r in memory] == [(1, True), (2, False)]
    assert all(r["kernels"] == "off" and r["preflight"]["allocated_gib"] > 0 for r in memory)
    assert memory[1]["preflight_gib"] > memory[0]["preflight_gib"]  # two rows, no checkpointing: more memory

    maxlen = data["maxlen"]
    assert maxlen["longest_max_length"] == 256 and [r["max_length"] for r in maxlen["rows"]] == [128, 256]
    assert all(r["fits"] for r in maxlen["rows"])  # nothing runs out of memory on the CPU

    ours, notebook = data["notebook"]["rows"]
    assert ours["run"] == "medsft" and notebook["run"] == "notebook"
    assert notebook["steps"] == 4 and notebook["tokens_per_second"] > 0 and ours["vs_notebook"] > 0

    summary = (tmp_path / "gpu-smoke-summary.md").read_text()
    titles = [line.split(" · ")[0] for line in summary.splitlines() if line.startswith("## ")]
    assert titles == ["## throughput", "## memory", "## maxlen", "## notebook"]
    assert "| tiny-qwen2 | 256 | off | varlen |" in summary


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


def test_data_stage_bench_times_trl_and_medsft_cold_and_warm(tmp_path, tiny_dir):
    """TRL's preparation and medsft's stage, cold then warm, each in a fresh process: medsft's warm run answered
    from its cache (the bench checks it), every number and ratio recorded (none asserted: timings)."""
    res = run_bench(["bench/data_stage.py", "--rows", "300", "--reps", "1"], tmp_path)
    (result,) = tmp_path.glob("data-stage-*.json")
    data = json.loads(result.read_text())
    assert data["rows"] == 300 and set(data["runs"]) == {"trl_cold", "medsft_cold", "trl_warm", "medsft_warm"}
    assert [len(v) for v in data["runs"].values()] == [1, 1, 1, 1]
    assert data["runs"]["trl_cold"][0]["rows"] == 300 and data["runs"]["medsft_cold"][0]["rows"] == 300
    assert not data["runs"]["medsft_cold"][0]["cache_hit"] and data["runs"]["medsft_warm"][0]["cache_hit"]
    assert all(r[0]["peak_rss_mb"] > 0 for r in data["runs"].values())
    assert set(data["ratios"]) == {"medsft_cold_over_trl_cold", "medsft_warm_over_medsft_cold",
                                   "medsft_warm_over_trl_warm", "medsft_warm_rss_over_trl_warm_rss"}
    assert "medsft cold" in res.stdout and "TRL" in res.stdout


def test_gpu_bench_maxlen_search_stops_at_oom_cap_and_budget(tmp_path):
    """The doubling search's ends, which only a GPU reaches for real: an out-of-memory probe, the cap on
    probes, and the phase budget (a probe that would not finish in time is not started)."""
    import argparse

    from tests.gpu.conftest import bench_gpu

    gpu = bench_gpu()
    args = argparse.Namespace(smoke=False, phase_budget=500, maxlen_model="llama3.1-8b", maxlen_start=8192,
                              maxlen_limit=131072, maxlen_probes=5, maxlen_steps=2)

    def search(fits_up_to, seconds=10, **changes):
        bench = gpu.Bench(argparse.Namespace(**{**vars(args), **changes}), tmp_path)

        def probe(name, length, steps):
            bench.phase_start -= seconds  # the probe's time passes
            return {"max_length": length, "wall_seconds": seconds, **({} if length <= fits_up_to else {"oom": True})}

        bench.medsft = probe
        return gpu.phase_maxlen(bench)

    found = search(32768)
    assert found["longest_max_length"] == 32768 and found["stopped"] == "oom"
    assert [(r["max_length"], r["fits"]) for r in found["rows"]] == [(8192, True), (16384, True), (32768, True),
                                                                    (65536, False)]
    found = search(10**9, maxlen_probes=2)
    assert found["longest_max_length"] == 16384 and found["stopped"] == "cap of 2 probes"
    found = search(10**9, seconds=300)  # 500 s budget: after one 300 s probe, 1.5 × 300 s does not fit
    assert found["longest_max_length"] == 8192 and found["stopped"].startswith("phase budget")
    found = search(10**9)
    assert found["longest_max_length"] == 131072 and found["stopped"] == "limit"
    assert "longest max_length that trains = 131072" in found["note"]
