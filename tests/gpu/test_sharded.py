"""DeepSpeed ZeRO-3 and FSDP2 as shipped (accelerate_configs/zero3.yaml, fsdp2.yaml) with one process on one
GPU: 4-bit QLoRA trains with a falling loss and saves one complete adapter (every LoRA tensor gathered, none
empty) that plain PEFT reloads."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO
from tests.gpu.conftest import check_adapter_reloads, cpu_only_skip, logged_losses, train_cli

pytestmark = pytest.mark.gpu
STEPS = 12


@pytest.mark.parametrize("config", ["zero3.yaml", "fsdp2.yaml"])
def test_one_process_sharded_launch_trains_and_saves_a_complete_adapter(target, config, tmp_path):
    if config == "fsdp2.yaml":
        cpu_only_skip(target, "accelerate runs FSDP on CUDA devices only; on CPUs the config trains as DDP over "
                              "gloo (tests/launch/test_fsdp2.py shards on a CPU gloo mesh instead)")
    elif importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install 'medsft[deepspeed]')")
    out = tmp_path / "run"
    res = train_cli(target, out, STEPS, launch=["--config_file", str(REPO / "accelerate_configs" / config),
                                                "--num_processes", "1"])
    assert res.returncode == 0, res.stderr[-4000:]
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    launch, placement = manifest["launch"], manifest["placement"]
    print(f"{config}: {launch['described']}; placement {placement['name']}, quant storage "
          f"{placement['quant_storage']}; accelerate: {launch['distributed_type']}")
    assert launch["num_processes"] == 1
    if config == "zero3.yaml":
        assert launch["distributed"] == "deepspeed" and launch["zero_stage"] == 3 and placement["name"] == "zero3"
        assert launch["distributed_type"] == "DEEPSPEED"
    else:
        assert launch["distributed"] == "fsdp" and launch["fsdp_version"] == 2 and placement["name"] == "fsdp2"
        assert launch["distributed_type"] == "FSDP"
    assert placement["quant_storage"] == target.dtype  # 4-bit weights stored in the model dtype, shardable

    values = [v for _, v in sorted(logged_losses(out).items())]
    print("losses:", " ".join(f"{v:.3f}" for v in values))
    assert len(values) == STEPS
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.1, "loss did not fall"
    check_adapter_reloads(target, out / "adapter")
