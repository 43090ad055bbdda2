"""The launch: processes, distribution (DDP, DeepSpeed ZeRO, FSDP), offload and hardware, read one way.

Why: the same recipe runs under `python -m medsft`, `accelerate launch` (any config), torchrun and Slurm,
and the training gate, `medsft preflight` and the manifest must agree on what the launch is. There is
one reader, `from_env`, of the variables accelerate exports to its workers; `medsft preflight
--accelerate-config FILE` first turns the file into those same variables (`accelerate_env`), so the
two paths cannot drift. `python -m medsft.launch` prints what a launched worker sees (tests compare it
with `accelerate_env` for every shipped config).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from medsft.errors import MedsftError

UNSUPPORTED = {"MEGATRON_LM": "Megatron-LM", "XLA": "TPU/XLA", "TPU": "TPU/XLA"}


@dataclass(frozen=True)
class Launch:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    distributed: str = "none"  # none | ddp | deepspeed | fsdp
    zero_stage: int | None = None
    zero3_init: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    fsdp_version: int | None = None
    fsdp_state_dict_type: str | None = None
    mixed_precision: str | None = None  # accelerate's ("no" | "bf16" | "fp16"); None outside accelerate
    gradient_accumulation: int | None = None  # a DeepSpeed accelerate config's own value, if it sets one
    gradient_clipping: float | None = None
    deepspeed_config_file: str | None = None
    cuda: bool = True
    num_gpus: int = 0  # GPUs visible to this process's node
    source: str = "environment"

    @property
    def sharded_params(self) -> bool:
        """Parameters partitioned over the processes (ZeRO-3, FSDP): what one device holds is 1/N."""
        return self.zero_stage == 3 or self.distributed == "fsdp"

    def describe(self) -> str:
        kind = {"none": "1 process", "ddp": f"DDP over {self.world_size} processes"}.get(self.distributed)
        if self.distributed == "deepspeed":
            kind = f"ZeRO-{self.zero_stage or 0} over {self.world_size} processes"
        elif self.distributed == "fsdp":
            kind = f"FSDP{self.fsdp_version or 2} over {self.world_size} processes"
        offloaded = [n for n, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on]
        return kind + (f", {' and '.join(offloaded)} offloaded to CPU" if offloaded else "")

    def to_dict(self) -> dict:
        return asdict(self)


def truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def from_env(env: Mapping[str, str] | None = None, *, cuda: bool, num_gpus: int, source: str = "environment") -> Launch:
    """The launch as accelerate / torchrun describe it in environment variables."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    distributed, stage, fsdp_version = "none", None, None
    if truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        distributed = "deepspeed"
        stage = int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"]) if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") else None
    elif truthy(env.get("ACCELERATE_USE_FSDP")):
        distributed, fsdp_version = "fsdp", int(env.get("FSDP_VERSION") or 1)
    elif world > 1:
        distributed = "ddp"
    offload_fsdp = distributed == "fsdp" and truthy(env.get("FSDP_OFFLOAD_PARAMS"))
    ds_file = deepspeed_json(env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")) if distributed == "deepspeed" else {}
    zero = ds_file.get("zero_optimization") or {}
    if distributed == "deepspeed" and stage is None and isinstance(zero.get("stage"), int):
        stage = zero["stage"]  # a DeepSpeed JSON config says it there, not in the accelerate YAML
    device = lambda key: str((zero.get(key) or {}).get("device", "none")).lower()  # noqa: E731
    return Launch(
        world_size=world, rank=int(env.get("RANK", "0") or 0), local_rank=int(env.get("LOCAL_RANK", "0") or 0),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world)) or world),
        distributed=distributed, zero_stage=stage, zero3_init=truthy(env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT")),
        offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", device("offload_optimizer"))
        not in ("none", "") or offload_fsdp,
        offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", device("offload_param"))
        not in ("none", "") or offload_fsdp,
        fsdp_version=fsdp_version, fsdp_state_dict_type=env.get("FSDP_STATE_DICT_TYPE") if distributed == "fsdp" else None,
        mixed_precision=env.get("ACCELERATE_MIXED_PRECISION"),
        gradient_accumulation=int(env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"])
        if env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").isdigit() else None,
        gradient_clipping=float(env["ACCELERATE_GRADIENT_CLIPPING"])
        if env.get("ACCELERATE_GRADIENT_CLIPPING", "none").replace(".", "", 1).isdigit() else None,
        deepspeed_config_file=env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None,
        cuda=cuda, num_gpus=num_gpus, source=source)


def deepspeed_json(path: str | None) -> dict:
    """A DeepSpeed JSON config named by an accelerate config (`deepspeed_config_file`), or {}."""
    import json

    if not path:
        return {}
    try:
        found = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise MedsftError(f"DeepSpeed config {path!r} (deepspeed_config_file) cannot be read as JSON",
                          "fix the file or the path in the accelerate config") from None
    return found if isinstance(found, dict) else {}


def read_accelerate_config(path: str) -> dict:
    """An accelerate config file as a mapping (YAML or JSON, as `accelerate config` writes them)."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise MedsftError(f"accelerate config {path!r} not found", "see accelerate_configs/ for the files")
    try:
        config = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MedsftError(f"accelerate config {path!r} is not valid YAML", "fix the file, or regenerate it with "
                          "`accelerate config`") from None
    if not isinstance(config, dict):
        raise MedsftError(f"accelerate config {path!r} is not a mapping of settings", "see accelerate_configs/")
    return config


def accelerate_env(config: dict, num_processes: int | None = None, *, path: str = "the accelerate config") -> dict:
    """The variables `accelerate launch --config_file FILE [--num_processes N]` exports to each worker
    (those medsft reads; accelerate/utils/launch.py `prepare_*_env`)."""
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind in UNSUPPORTED:
        raise MedsftError(f"{path}: distributed_type {kind} ({UNSUPPORTED[kind]}) is not supported by medsft",
                          "use DDP, DeepSpeed ZeRO or FSDP2 (accelerate_configs/)")
    if num_processes is not None and num_processes < 1:
        raise MedsftError(f"--num-gpus {num_processes} must be at least 1", "pass the number of processes you launch")
    setting = lambda value, allowed, name: value if value in allowed else bad(path, name, value, allowed)  # noqa: E731
    world = num_processes or setting(config.get("num_processes", 1), range(1, 1 << 20), "num_processes")
    if kind == "DEEPSPEED":
        setting((config.get("deepspeed_config") or {}).get("zero_stage", 0) if not
                (config.get("deepspeed_config") or {}).get("deepspeed_config_file") else 0, (0, 1, 2, 3),
                "deepspeed_config.zero_stage")
    if kind == "FSDP":
        setting((config.get("fsdp_config") or {}).get("fsdp_version", 1), (1, 2), "fsdp_config.fsdp_version")
    # accelerate's routing (commands/launch.py `launch_command`): DeepSpeed, FSDP and multi-GPU configs start
    # N workers unless use_cpu is set; anything else runs the simple launcher, one process (on a node with
    # several GPUs and N > 1 accelerate turns multi-GPU on itself, which a GPU preflight assumes).
    multi = kind in ("DEEPSPEED", "FSDP") or kind.startswith("MULTI_") and kind != "MULTI_CPU" or kind == "NO" and world > 1
    if not multi or config.get("use_cpu"):
        world = 1
    env = {"WORLD_SIZE": str(world), "ACCELERATE_MIXED_PRECISION": str(config.get("mixed_precision") or "no")}
    if kind == "DEEPSPEED":
        ds = config.get("deepspeed_config") or {}
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=str(ds.get("zero_stage", "")),
                   ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE=str(ds.get("offload_optimizer_device", "none")).lower(),
                   ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE=str(ds.get("offload_param_device", "none")).lower(),
                   ACCELERATE_DEEPSPEED_ZERO3_INIT=str(bool(ds.get("zero3_init_flag", False))).lower())
        for key, var in (("gradient_accumulation_steps", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
                         ("gradient_clipping", "ACCELERATE_GRADIENT_CLIPPING"),
                         ("deepspeed_config_file", "ACCELERATE_DEEPSPEED_CONFIG_FILE")):
            if ds.get(key) not in (None, "", "none"):
                env[var] = str(ds[key]).lower() if key == "gradient_clipping" else str(ds[key])
    elif kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION=str(fsdp.get("fsdp_version", 1)),
                   FSDP_OFFLOAD_PARAMS=str(bool(fsdp.get("fsdp_offload_params", False))).lower(),
                   FSDP_STATE_DICT_TYPE=str(fsdp.get("fsdp_state_dict_type", "FULL_STATE_DICT" if
                                                     str(fsdp.get("fsdp_version", 1)) == "2" else "SHARDED_STATE_DICT")))
    return env


def bad(path: str, name: str, value, allowed):
    shown = f"{allowed.start}…" if isinstance(allowed, range) else ", ".join(map(str, allowed))
    raise MedsftError(f"{path}: {name} is {value!r}, expected one of {shown}", "fix the accelerate config, or "
                      "regenerate it with `accelerate config`")


def from_accelerate_config(path: str, num_processes: int | None = None, *, cuda: bool = True) -> Launch:
    """The launch `accelerate launch --config_file PATH` would start, seen from one of its workers."""
    env = accelerate_env(read_accelerate_config(path), num_processes, path=path)
    world = int(env["WORLD_SIZE"])
    return from_env(env, cuda=cuda, num_gpus=world if cuda else 0, source=path)


def detect() -> Launch:
    """This process's launch (imports torch to see the GPUs)."""
    import torch

    cuda = torch.cuda.is_available()
    return from_env(cuda=cuda, num_gpus=torch.cuda.device_count() if cuda else 0)


if __name__ == "__main__":  # what a launched worker sees: `accelerate launch … -m medsft.launch`
    import json

    print(json.dumps(from_env(cuda=False, num_gpus=0).to_dict(), sort_keys=True), flush=True)
