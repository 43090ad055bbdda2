"""Where the model goes, decided from the launch, not from the recipe author's memory.

Why: the same recipe runs under `python -m medsft`, `accelerate launch` (single GPU, DDP, ZeRO-2/3),
torchrun and Slurm. Each launch needs a different `device_map`, 4-bit quant storage dtype and
checkpointing mode (DESIGN.md's table); getting one wrong is the classic "tensors on different
devices" or "ZeRO-3 cannot partition uint8" failure. `decide()` is a pure function of the launch
environment, so it is tested for every launch without the hardware, and impossible combinations stop
here, before a model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from medsft.errors import MedsftError


@dataclass
class Plan:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    distributed: str = "none"  # none | ddp | deepspeed
    zero_stage: int | None = None
    zero3_init: bool = False
    cuda: bool = False
    num_gpus: int = 0
    device_map: Any = None
    quant_storage: str = "uint8"
    checkpointing_kwargs: dict = field(default_factory=lambda: {"use_reentrant": False})
    use_cpu: bool = True
    ddp_find_unused_parameters: bool | None = None
    placement: str = "cpu"  # a short name of the row of DESIGN.md's table that applies

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return asdict(self)


def launch_env(env: Mapping[str, str] | None = None) -> dict:
    """The launch as accelerate/torchrun/Slurm describe it in environment variables."""
    env = os.environ if env is None else env
    deepspeed = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    return {
        "world_size": int(env.get("WORLD_SIZE", "1")),
        "rank": int(env.get("RANK", "0")),
        "local_rank": int(env.get("LOCAL_RANK", "0")),
        "deepspeed": deepspeed,
        "zero_stage": int(stage) if deepspeed and stage not in (None, "") else None,
        "zero3_init": env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true",
    }


def decide(launch: dict, cuda: bool, num_gpus: int, *, bits: int | None, dtype: str,
           forced_device_map: Any = None) -> Plan:
    """DESIGN.md's table as code. Raises MedsftError for combinations that cannot work."""
    plan = Plan(world_size=launch["world_size"], rank=launch["rank"], local_rank=launch["local_rank"],
                cuda=cuda, num_gpus=num_gpus, use_cpu=not cuda, zero3_init=launch["zero3_init"])
    if launch["deepspeed"]:
        plan.distributed, plan.zero_stage = "deepspeed", launch["zero_stage"]
    elif plan.world_size > 1:
        plan.distributed = "ddp"

    if plan.zero_stage == 3:
        if bits == 8:
            raise MedsftError("ZeRO-3 with quantization.bits: 8 cannot work: ZeRO-3 partitions parameters "
                              "and 8-bit weights cannot be partitioned",
                              "use quantization.bits: 4 (quant storage = the model dtype) or zero2.yaml")
        if forced_device_map is not None:
            raise MedsftError(f"model.device_map {forced_device_map!r} cannot be used with ZeRO-3, which places "
                              "the parameters itself", "remove model.device_map")
        plan.device_map = None
        plan.quant_storage = dtype if bits == 4 else "uint8"
        plan.checkpointing_kwargs = {"use_reentrant": True}  # PEFT + ZeRO-3 needs reentrant checkpointing
        plan.placement = "zero3"
        return plan

    if plan.distributed in ("ddp", "deepspeed"):
        if forced_device_map is not None and forced_device_map != {"": plan.local_rank}:
            raise MedsftError(f"model.device_map {forced_device_map!r} under a {plan.world_size}-process launch "
                              "would spread one replica over several devices ('tensors on different devices')",
                              "remove model.device_map: each process gets its own device")
        plan.device_map = {"": plan.local_rank} if cuda else None
        plan.ddp_find_unused_parameters = False if plan.distributed == "ddp" else None
        plan.placement = "ddp" if plan.distributed == "ddp" else f"zero{plan.zero_stage or 0}"
        if not cuda:
            plan.placement += "-cpu"
        return plan

    if forced_device_map is not None:
        plan.device_map, plan.placement = forced_device_map, "forced"
    elif not cuda:
        plan.device_map, plan.placement = None, "cpu"
    elif num_gpus > 1:
        plan.device_map, plan.placement = "auto", "single-process-multi-gpu"
    else:
        plan.device_map, plan.placement = {"": 0}, "single-gpu"
    return plan


def check_launch_early(recipe) -> None:
    """The impossible combinations that need no torch: fail in milliseconds, before any import."""
    decide(launch_env(), cuda=True, num_gpus=1, bits=recipe.quantization.bits, dtype=recipe.model.dtype,
           forced_device_map=recipe.model.device_map)


def detect(recipe) -> Plan:
    """The plan for this process (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    return decide(launch_env(), cuda, torch.cuda.device_count() if cuda else 0,
                  bits=recipe.quantization.bits, dtype=recipe.model.dtype,
                  forced_device_map=recipe.model.device_map)
