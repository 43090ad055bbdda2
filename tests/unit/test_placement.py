"""The placement table (docs/architecture.md), row by row, from the launch alone."""

from __future__ import annotations

import pytest

from medsft.errors import MedsftError
from medsft.launch.detect import from_env
from medsft.launch.placement import decide

DDP2 = dict(WORLD_SIZE=2, RANK=1, LOCAL_RANK=1)
ZERO2 = dict(DDP2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=2)
ZERO3 = dict(DDP2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=3,
             ACCELERATE_DEEPSPEED_ZERO3_INIT="true")
FSDP2 = dict(DDP2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=2)
FSDP1 = dict(DDP2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=1)


def launch(env=None, cuda=True, gpus=1):
    return from_env({k: str(v) for k, v in (env or {}).items()}, cuda=cuda, num_gpus=gpus)


@pytest.mark.parametrize("env,cuda,gpus,device_map,storage,reentrant,unused,name", [
    ({}, True, 1, {"": 0}, "uint8", False, None, "single-gpu"),
    ({}, True, 4, "auto", "uint8", False, None, "single-process-multi-gpu"),
    (DDP2, True, 2, {"": 1}, "uint8", False, False, "ddp"),
    (ZERO2, True, 2, {"": 1}, "uint8", False, None, "zero2"),
    (ZERO3, True, 2, None, "bfloat16", True, None, "zero3"),
    (FSDP2, True, 2, None, "bfloat16", False, None, "fsdp2"),
    ({}, False, 0, None, "uint8", False, None, "cpu"),
    (DDP2, False, 0, None, "uint8", False, False, "ddp-cpu"),
    (ZERO2, False, 0, None, "uint8", False, None, "zero2-cpu"),
    (ZERO3, False, 0, None, "bfloat16", True, None, "zero3"),
    (FSDP2, False, 0, None, "uint8", False, False, "ddp-cpu"),  # substituted: accelerate runs FSDP on CUDA only
])
def test_design_table(env, cuda, gpus, device_map, storage, reentrant, unused, name):
    plan = decide(launch(env, cuda, gpus), bits=4, dtype="bfloat16")
    assert plan.device_map == device_map
    assert plan.quant_storage == storage
    assert plan.use_reentrant == reentrant
    assert plan.ddp_find_unused_parameters == unused
    assert plan.use_cpu == (not cuda)
    assert plan.name == name
    assert (plan.substituted is not None) == (env is FSDP2 and not cuda)


@pytest.mark.parametrize("env,bits,forced,expected", [
    (ZERO3, 8, None, "ZeRO-3 with quantization.bits: 8"),
    (ZERO3, 4, {"": 0}, "cannot be used with ZeRO-3"),
    (DDP2, 4, "auto", "tensors on different devices"),
    (ZERO2, 4, "auto", "tensors on different devices"),
    (FSDP2, 8, None, "FSDP with quantization.bits: 8"),
    (FSDP2, 4, "auto", "cannot be used with FSDP"),
    (FSDP1, 4, None, "FSDP1 is not supported"),
])
def test_impossible_combinations(env, bits, forced, expected):
    with pytest.raises(MedsftError, match=expected):
        decide(launch(env, True, 2), bits=bits, dtype="bfloat16", forced_device_map=forced)


def test_forced_device_map_single_process():
    plan = decide(launch({}, True, 2), bits=4, dtype="bfloat16", forced_device_map={"": 1})
    assert plan.device_map == {"": 1} and plan.name == "forced"
