"""Where the model goes, decided from the launch, not from the recipe author's memory.

Why: each launch needs its own `device_map`, 4-bit quant storage dtype and checkpointing mode (the
table in docs/architecture.md); getting one wrong is the classic "tensors on different devices",
"ZeRO-3 cannot partition uint8" or FSDP "Cannot flatten integer dtype tensors" failure. `decide()` is a
pure function of the launch (medsft/launch/detect.py) and the quantization, so every row is tested without
the hardware, and impossible combinations stop here, before a model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medsft.errors import MedsftError
from medsft.launch.detect import Launch


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


# the dtype DeepSpeed holds (and casts) the parameters in, by mixed precision; otherwise the model's dtype
DEEPSPEED_PARAM_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


def decide(launch: Launch, *, bits: int | None, dtype: str, forced_device_map: Any = None,
           precision: str = "no") -> Placement:
    """The table as code. Raises MedsftError for combinations that cannot work. `precision`: the run's mixed
    precision (RunSpec.precision), which decides the dtype ZeRO-3 keeps the parameters in."""
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
        # 4-bit weights are packed into the storage dtype, and ZeRO-3 casts every parameter to its own dtype
        # under bf16/fp16: a float32 storage cast to bf16 corrupts the packed weights. PEFT + ZeRO-3 needs
        # reentrant checkpointing.
        storage = DEEPSPEED_PARAM_DTYPE.get(precision, dtype)
        return Placement("zero3", None, storage if bits == 4 else "uint8", True, cpu, None)

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


def gpu_index(device: object) -> int | None:
    """The CUDA device a device_map value names (0, "3", "cuda", "cuda:1"), or None for cpu/disk/meta/auto."""
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    text = str(device).strip().lower()
    if text == "cuda":
        return 0
    text = text.removeprefix("cuda:")
    return int(text) if text.isdigit() else None


def check_devices(device_map: Any, launch: Launch) -> None:
    """The GPUs a recipe's model.device_map names exist here: on a CPU, or with fewer GPUs, transformers stops
    with a traceback while loading ("Cannot access accelerator device", "invalid device ordinal")."""
    if device_map is None:
        return
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    wanted = sorted({i for i in map(gpu_index, values) if i is not None})
    if not wanted:
        return
    if not launch.cuda:
        raise MedsftError(f"model.device_map {device_map!r} names GPU {wanted[-1]} but this machine has no CUDA GPU",
                          "remove model.device_map (medsft places the model), or use cpu")
    if wanted[-1] >= launch.num_gpus:
        raise MedsftError(f"model.device_map {device_map!r} names GPU {wanted[-1]} but the launch has "
                          f"{launch.num_gpus} GPU(s) (0…{launch.num_gpus - 1})",
                          "remove model.device_map (medsft places the model), or name a GPU that exists")


def check_chat_template(chat_template: str | None, launch: Launch) -> None:
    """model.chat_template trains the template's token rows with PEFT's trainable tokens, which medsft does not
    run under ZeRO-3: PEFT 0.21 gathers them for ZeRO-3 on CUDA only, and TRL's fused LM head would read a
    merged weight built from a partitioned parameter."""
    if chat_template and launch.zero_stage == 3:
        raise MedsftError("model.chat_template trains the embedding rows of the template's tokens (PEFT trainable "
                          "tokens), which medsft does not run under DeepSpeed ZeRO-3",
                          "launch with accelerate_configs/zero2.yaml or ddp.yaml, or use an instruct model's own "
                          "template (no model.chat_template)")
