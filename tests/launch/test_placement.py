"""Placement from the launch alone, checked against the table users read (docs/architecture.md), and the\ncombinations refused."""

from __future__ import annotations

import pytest

from medsft.errors import MedsftError
from medsft.launch.detect import from_env
from medsft.launch.placement import decide
from tests.conftest import REPO

DDP2 = dict(WORLD_SIZE=2, RANK=1, LOCAL_RANK=1)
ZERO2 = dict(DDP2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=2)
ZERO3 = dict(DDP2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=3,
             ACCELERATE_DEEPSPEED_ZERO3_INIT="true")
FSDP2 = dict(DDP2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=2)
FSDP1 = dict(DDP2, ACCELERATE_USE_FSDP="true", FSDP_VERSION=1)


def launch(env=None, cuda=True, gpus=1):
    return from_env({k: str(v) for k, v in (env or {}).items()}, cuda=cuda, num_gpus=gpus)


ZERO1 = dict(DDP2, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=1)
# The launches each row of the documented table is about (the question; its answers are the table's cells).
ROW_LAUNCHES = {"1 process, 1 GPU": [({}, 1)], "1 process, several GPUs": [({}, 4)], "DDP": [(DDP2, 2)],
                "ZeRO-1/2": [(ZERO1, 2), (ZERO2, 2)], "ZeRO-3": [(ZERO3, 2)], "FSDP2": [(FSDP2, 2)]}
MIXED = {"no": None, "bf16": "bfloat16", "fp16": "float16"}


def documented_table() -> dict[str, dict[str, str]]:
    """docs/architecture.md's placement table: row label -> {column: cell}."""
    text = (REPO / "docs" / "architecture.md").read_text().split("## Placement", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    header, body = rows[0], [r for r in rows[2:]]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in body}


def documented(row: dict[str, str], launch, dtype: str, precision: str) -> dict:
    """What a row's cells promise for this launch, model dtype and mixed precision."""
    device_map = {"`{\"\": 0}`": {"": 0}, "`\"auto\"`": "auto", "`{\"\": local_rank}`": {"": launch.local_rank}}
    storage = row["4-bit quant storage"]
    if storage.startswith("uint8"):
        storage = "uint8"
    elif "mixed precision" in storage:  # DeepSpeed's parameter dtype under bf16/fp16, else the model's
        storage = MIXED[precision] or dtype
    else:
        assert storage == "the model dtype", storage
        storage = dtype
    checkpointing = row["checkpointing"]
    return {"device_map": device_map.get(row["device_map"]), "quant_storage": storage,
            "use_reentrant": checkpointing == "reentrant",
            **({"ddp_find_unused_parameters": False} if "ddp_find_unused_parameters=False" in checkpointing else {})}


TABLE = documented_table()


@pytest.mark.parametrize("label", ROW_LAUNCHES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("precision", MIXED)
def test_gpu_launches_place_as_the_documented_table_says(label, dtype, precision):
    for env, gpus in ROW_LAUNCHES[label]:
        plan = decide(launch(env, True, gpus), bits=4, dtype=dtype, precision=precision)
        promised = documented(TABLE[label], launch(env, True, gpus), dtype, precision)
        assert {k: getattr(plan, k) for k in promised} == promised, (label, env)
        assert plan.use_cpu is False and plan.substituted is None


@pytest.mark.parametrize("label", ROW_LAUNCHES)
@pytest.mark.parametrize("precision", MIXED)
def test_without_cuda_every_launch_runs_on_the_cpu_as_documented(label, precision):
    """The "no CUDA" row: no device map, uint8 storage except ZeRO-3 (its own row's), gloo; FSDP becomes DDP
    over gloo with a notice."""
    row = TABLE["no CUDA"]
    assert row["device_map"].startswith("none") and "FSDP becomes DDP over gloo" in row["note"]
    for env, _ in ROW_LAUNCHES[label]:
        plan = decide(launch(env, False, 0), bits=4, dtype="float32", precision=precision)
        assert plan.device_map is None and plan.use_cpu is True
        gpu_row = TABLE["ZeRO-3"] if env is ZERO3 else row
        assert plan.quant_storage == documented(gpu_row, launch(env, False, 0), "float32", precision)["quant_storage"]
        if env is FSDP2:
            as_ddp = decide(launch(DDP2, False, 0), bits=4, dtype="float32", precision=precision)
            assert plan.substituted and "DDP over gloo" in plan.substituted
            assert {**plan.to_dict(), "substituted": None} == as_ddp.to_dict()
        else:
            assert plan.substituted is None


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
