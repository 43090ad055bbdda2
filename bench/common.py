"""What every benchmark records beside its numbers: machine, device, versions, date, command."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # MEDSFT_BENCH_RESULTS overrides (tests)


def environment() -> dict:
    from medsft.outputs import git_commit, package_versions

    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.machine(), "python": sys.version.split()[0],
            "cpus": __import__("os").cpu_count(), "versions": package_versions(), "git_commit": git_commit(),
            "command": " ".join(sys.argv)}
    try:
        import torch

        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing: the record still says where it ran
        info["device"] = "unknown"
    return info


def save(name: str, payload: dict) -> Path:
    import os

    results = Path(os.environ.get("MEDSFT_BENCH_RESULTS", RESULTS))
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    print(f"saved {path}")
    return path


def median(values):
    return statistics.median(values) if values else float("nan")


def run_overrides(steps: int, output_dir: str, logging_steps: int = 1) -> list[str]:
    """The `--set` overrides every timed run uses: a fixed number of steps, no eval, no checkpoints."""
    return [f"training.max_steps={steps}", "training.eval_strategy=no", "training.save_strategy=no",
            f"training.logging_steps={logging_steps}", f"output.dir={output_dir}"]


def step_clock():
    """A callback noting the wall time of every training log; with logging_steps=1 that is one per optimizer
    step, taken at the same point of Trainer's loop as medsft's metrics.jsonl `time` field."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                self.times.append(time.time())

    return StepClock()


def steady_step_seconds(times: list[float], warmup: int = 3) -> float:
    """Median interval between consecutive steps after `warmup` steps: robust to one slow step."""
    gaps = [b - a for a, b in zip(times[warmup:], times[warmup + 1:])]
    return median(gaps)
