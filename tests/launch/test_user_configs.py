"""Accelerate configs written the way users write them (`accelerate config` output, in user_configs/), each
launched for real with 2 processes: it trains with the world size asked, or stops with exactly one
`error:` line before any model is loaded. None may run ranks independently.

Under a plain `accelerate launch`, torch elastic still prints its failure report after medsft's line;
`medsft launch` (same options) checks before any worker starts and exits 2 with the line alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # real multi-process launches

CONFIGS = REPO / "tests" / "launch" / "user_configs"
TRAIN = ["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", "training.max_steps=2", "--set",
         "training.eval_strategy=no", "--set", "training.save_strategy=no", "--set", "training.logging_steps=1"]

# config -> (what happens on a CPU machine, text in the outcome)
CASES = {
    "mixed_bf16_multi_gpu.yaml": ("error", "says mixed_precision: bf16 but"),
    "deepspeed_stage1.yaml": ("trains", "DEEPSPEED"),
    "deepspeed_stage2.yaml": ("trains", "DEEPSPEED"),
    "deepspeed_stage3.yaml": ("trains", "DEEPSPEED"),
    "fsdp1.yaml": ("error", "FSDP1 is not supported"),
    "fsdp2.yaml": ("trains", "MULTI_CPU"),  # accelerate runs FSDP on CUDA only: DDP over gloo, said and recorded
    "single_gpu.yaml": ("error", "so accelerate would start 1 process, not the 2 asked"),
}


def launch(how: str, config: str, out, processes: int = 2) -> subprocess.CompletedProcess:
    options = ["--config_file", str(CONFIGS / config), "--num_processes", str(processes)]
    if how == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "medsft", *TRAIN]
    else:
        cmd = [sys.executable, "-m", "medsft", "launch", *options, *TRAIN]
    cmd += ["--set", f"output.dir={out}"]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.parametrize("config", CASES)
def test_user_config_under_accelerate_launch(config, tmp_path, tiny_dir):
    outcome, text = CASES[config]
    res = launch("accelerate", config, tmp_path / "run")
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    if outcome == "trains":
        assert res.returncode == 0, res.stderr[-3000:]
        m = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
        assert m["launch"]["world_size"] == 2 and m["launch"]["num_processes"] == 2
        assert m["launch"]["distributed_type"] == text
        seen = json.loads((tmp_path / "run" / "rows_seen.json").read_text())
        assert not set(seen["0"]) & set(seen["1"]), "ranks trained alone on the same rows"
        if config == "fsdp2.yaml":
            assert res.stderr.count("notice: launch: FSDP2 → DDP over gloo") == 1
            assert m["substituted"].startswith("FSDP2 → DDP over gloo")
    else:
        assert res.returncode != 0
        assert len(errors) == 1 and text in errors[0], res.stderr[-3000:]
        assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize("config", [c for c, (outcome, _) in CASES.items() if outcome == "error"])
def test_medsft_launch_refuses_before_any_worker(config, tmp_path):
    res = launch("medsft", config, tmp_path / "run")
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:"), res.stderr
    assert CASES[config][1] in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_medsft_launch_trains_and_passes_the_exit_status_on(tmp_path, tiny_dir):
    res = launch("medsft", "deepspeed_stage2.yaml", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "medsft", "launch", "--config_file", str(CONFIGS / "deepspeed_stage2.yaml"),
                          *TRAIN, "--set", "lora.rank=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "lora.rank must be a positive integer" in bad.stderr
