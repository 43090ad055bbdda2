"""Launch configs as other projects ship them, launched for real with 2 CPU processes (gloo).

TRL's own `zero3.yaml` says `mixed_precision: bf16`; DeepSpeed then holds every parameter in bf16, so a
recipe whose model.dtype is float32 must still get a bf16 4-bit quant storage, or DeepSpeed's cast corrupts
the packed weights (`shape '[128, 64]' is invalid for input of size 4096` in the first forward). And an
unquoted `mixed_precision: no` (YAML reads false, on which accelerate itself fails) means "no"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow  # real multi-process launches

TRL_ZERO3 = REPO / "tests" / "launch" / "user_configs" / "trl_zero3.yaml"
TRAIN = ["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", "training.max_steps=2", "--set",
         "training.eval_strategy=no", "--set", "training.save_strategy=no", "--set", "training.logging_steps=1"]


def launch(how: str, config, out, *extra: str) -> subprocess.CompletedProcess:
    options = ["--config_file", str(config), "--num_processes", "2", "--main_process_port", str(free_port())]
    if how == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "medsft", *TRAIN]
    else:
        cmd = [sys.executable, "-m", "medsft", "launch", *options, *TRAIN]
    return subprocess.run([*cmd, *extra, "--set", f"output.dir={out}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=900)


def trained_adapter(run) -> dict:
    """The saved adapter's manifest, after checking that its LoRA weights are finite and were trained
    (every lora_B starts at zero)."""
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = [t for name, t in weights.items() if "lora_B" in name]
    assert b and all(t.float().isfinite().all() for t in weights.values())
    assert any(t.abs().sum() > 0 for t in b), "the adapter did not train"
    return json.loads((run / "adapter" / "manifest.json").read_text())


def test_trl_zero3_trains_a_float32_recipe(tmp_path, tiny_dir):
    """The issue's acceptance: `accelerate launch --config_file <TRL's zero3.yaml> --num_processes 2 -m medsft
    train` of tiny-cpu without its `bf16: false` (model.dtype float32) trains."""
    res = launch("accelerate", TRL_ZERO3, tmp_path / "run", "--set", "training.bf16=")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    m = trained_adapter(tmp_path / "run")
    assert m["launch"]["distributed_type"] == "DEEPSPEED" and m["launch"]["world_size"] == 2
    assert m["launch"]["zero_stage"] == 3 and m["precision"] == "bf16"
    assert m["placement"]["quant_storage"] == "bfloat16"


def test_unquoted_mixed_precision_no_is_no(tmp_path, tiny_dir):
    """`mixed_precision: no` written bare: accelerate alone dies on it (`'bool' object has no attribute
    'lower'`); `medsft launch` reads it as "no" and trains in fp32."""
    config = tmp_path / "zero2.yaml"
    config.write_text("distributed_type: DEEPSPEED\nmixed_precision: no\nnum_processes: 2\nuse_cpu: false\n"
                      "deepspeed_config:\n  zero_stage: 2\n  offload_optimizer_device: none\n")
    res = launch("medsft", config, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    m = trained_adapter(tmp_path / "run")
    assert m["launch"]["world_size"] == 2 and m["precision"] == "no"
