"""One rule book: every launch rule is called from runspec.resolve, so `medsft launch` refuses a run its workers
would refuse before any worker starts, with the line `medsft preflight` prints for the same launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # real multi-process launches

# A process that torch elastic starts as a worker has LOCAL_RANK set; this file, found first on PYTHONPATH,
# leaves a mark for each one before medsft runs in it.
SITECUSTOMIZE = """import os, pathlib
if "LOCAL_RANK" in os.environ:
    pathlib.Path(os.environ["WORKER_MARKS"], os.environ["LOCAL_RANK"]).touch()
"""

CASES = {  # a rule of each owner: chat templates, quantization, placement
    "chat template under ZeRO-3": ("zero3.yaml", "model.chat_template=chatml", "model.chat_template"),
    "8-bit under ZeRO-3": ("zero3.yaml", "quantization.bits=8", "quantization.bits: 8"),
    "a device_map under ZeRO-3": ("zero3.yaml", "model.device_map=5", "model.device_map 5"),
    "a device_map under DDP": ("ddp.yaml", "model.device_map=5", "model.device_map 5"),
}


def run(argv, tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marks = tmp_path / "workers"
    marks.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "WORKER_MARKS": str(marks)}
    done = subprocess.run([sys.executable, "-m", "medsft", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    return done, sorted(p.name for p in marks.iterdir())


def test_the_worker_mark_sees_workers(tmp_path, tiny_dir):
    """The detector itself: rows without a Response column are found only when the workers load the data, so
    both start and both refuse with the main process's line."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"Question": f"q{i}", "Complex_CoT": "c"} for i in range(20)]))
    done, workers = run(["launch", "--config_file", str(REPO / "accelerate_configs" / "ddp.yaml"), "--num_processes",
                         "2", "train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", f"data.source={rows}",
                         "--set", f"output.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Response" in done.stderr
    assert "Traceback" not in done.stderr, "a rank died in a collective instead of refusing with the same line"
    assert workers == ["0", "1"]


@pytest.mark.parametrize("case", CASES)
def test_medsft_launch_refuses_before_any_worker_starts(case, tmp_path):
    config, setting, said = CASES[case]
    out = tmp_path / "run"
    config_file = str(REPO / "accelerate_configs" / config)
    recipe = str(REPO / "recipes" / "tiny-cpu.yaml")
    done, workers = run(["launch", "--config_file", config_file, "--num_processes", "2", "train", recipe,
                         "--set", setting, "--set", f"output.dir={out}"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert workers == [], "a worker started before the refusal"
    assert not out.exists()
    preflight, _ = run(["preflight", recipe, "--accelerate-config", config_file, "--num-gpus", "2", "--set", setting],
                       tmp_path)
    assert preflight.returncode == 2
    assert [line for line in preflight.stderr.splitlines() if line.startswith("error:")] == errors
