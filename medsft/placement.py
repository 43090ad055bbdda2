"""Where the model goes, decided from the launch, not from the recipe author's memory.

Why: each launch needs its own `device_map`, 4-bit quant storage dtype and checkpointing mode (the
table in docs/architecture.md); getting one wrong is the classic "tensors on different devices",
"ZeRO-3 cannot partition uint8" or FSDP "Cannot flatten integer dtype tensors" failure. `decide()` is a
pure function of the launch (medsft/launch.py) and the quantization, so every row is tested without
the hardware, and impossible combinations stop here, before a model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medsft.errors import MedsftError
from medsft.launch import Launch


@dataclass(frozen=True)
class Placement:
    name: str  # the row of the table that applies
    device_map: Any = None
    quant_storage: str = "uint8"
    use_reentrant: bool = False
    use_cpu: bool = True
    ddp_find_unused_parameters: bool | None = None
    substituted: str | None = None  # what this machine runs instead of what was asked, said in a notice

    def to_dict(self) -> dict:
        return asdict(self)


def decide(launch: Launch, *, bits: int | None, dtype: str, forced_device_map: Any = None) -> Placement:
    """The table as code. Raises MedsftError for combinations that cannot work."""
    cuda, cpu = launch.cuda, not launch.cuda
    if launch.distributed == "fsdp":
        if launch.fsdp_version != 2:
            raise MedsftError(f"FSDP{launch.fsdp_version} is not supported (PEFT + 4-bit needs FSDP2's per-parameter "
                              "sharding)", "set fsdp_version: 2 in the accelerate config (see accelerate_configs/fsdp2.yaml)")
        if bits == 8:
            raise MedsftError("FSDP with quantization.bits: 8 cannot work: 8-bit weights cannot be sharded",
                              "use quantization.bits: 4 (quant storage = the model dtype) or zero2.yaml")
        if forced_device_map is not None:
            raise MedsftError(f"model.device_map {forced_device_map!r} cannot be used with FSDP, which places the "
                              "parameters itself", "remove model.device_map")
        if cpu:  # accelerate routes FSDP only to CUDA devices; on CPUs the same workers run DDP over gloo
            return Placement("ddp-cpu", None, "uint8", False, True, False,
                             substituted="FSDP2 → DDP over gloo (accelerate runs FSDP on CUDA devices only; "
                                         "each CPU process holds a full replica)")
        return Placement("fsdp2", None, dtype if bits == 4 else "uint8", False, False, None)

    if launch.zero_stage == 3:
        if bits == 8:
            raise MedsftError("ZeRO-3 with quantization.bits: 8 cannot work: ZeRO-3 partitions parameters "
                              "and 8-bit weights cannot be partitioned",
                              "use quantization.bits: 4 (quant storage = the model dtype) or zero2.yaml")
        if forced_device_map is not None:
            raise MedsftError(f"model.device_map {forced_device_map!r} cannot be used with ZeRO-3, which places "
                              "the parameters itself", "remove model.device_map")
        # PEFT + ZeRO-3 needs reentrant checkpointing
        return Placement("zero3", None, dtype if bits == 4 else "uint8", True, cpu, None)

    if launch.distributed in ("ddp", "deepspeed"):
        if forced_device_map is not None and forced_device_map != {"": launch.local_rank}:
            raise MedsftError(f"model.device_map {forced_device_map!r} under a {launch.world_size}-process launch "
                              "would spread one replica over several devices ('tensors on different devices')",
                              "remove model.device_map: each process gets its own device")
        name = "ddp" if launch.distributed == "ddp" else f"zero{launch.zero_stage or 0}"
        return Placement(name + ("-cpu" if cpu else ""), {"": launch.local_rank} if cuda else None, "uint8", False,
                         cpu, False if launch.distributed == "ddp" else None)

    if forced_device_map is not None:
        return Placement("forced", forced_device_map, "uint8", False, cpu)
    if cpu:
        return Placement("cpu")
    if launch.num_gpus > 1:
        return Placement("single-process-multi-gpu", "auto", "uint8", False, False)
    return Placement("single-gpu", {"": 0}, "uint8", False, False)
