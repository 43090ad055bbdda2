"""The launch: processes, distribution (DDP, DeepSpeed ZeRO, FSDP), offload and hardware, read one way.

Why: the same recipe runs under `python -m medsft`, `accelerate launch` (any config), torchrun and Slurm,
and the training gate, `medsft preflight` and the manifest must agree on what the launch is. There is
one reader, `from_env`, of the variables accelerate exports to its workers; `medsft preflight
--accelerate-config FILE` first turns the file into those same variables (`accelerate_env`), so the
two paths cannot drift. `python -m medsft.launch.detect` prints what a launched worker sees (tests compare it
with `accelerate_env` for every shipped config).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NoReturn, TypeVar

from medsft.errors import MedsftError

UNSUPPORTED = {"MEGATRON_LM": "Megatron-LM", "XLA": "TPU/XLA", "TPU": "TPU/XLA"}
PRECISIONS = ("no", "fp16", "bf16", "fp8")  # accelerate's mixed_precision values
_Default = TypeVar("_Default", bound=int | None)  # env_int's default: an int, or None for "not set"


@dataclass(frozen=True)
class Launch:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    distributed: str = "none"  # none | ddp | deepspeed | fsdp
    zero_stage: int | None = None
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
    # what the `accelerate launch` command asked for, when known (checked against what it starts: `check`)
    requested: int | None = None  # --num_processes, or the config's num_processes
    config_type: str | None = None  # the accelerate config's distributed_type
    config_use_cpu: bool = False

    @property
    def sharded_params(self) -> bool:
        """Parameters partitioned over the processes (ZeRO-3, FSDP): what one device holds is 1/N."""
        return self.zero_stage == 3 or self.distributed == "fsdp"

    def describe(self) -> str:
        if self.distributed == "deepspeed":
            kind = f"ZeRO-{self.zero_stage or 0} over {self.world_size} processes"
        elif self.distributed == "fsdp":
            kind = f"FSDP{self.fsdp_version or 2} over {self.world_size} processes"
        else:
            kind = {"none": "1 process", "ddp": f"DDP over {self.world_size} processes"}[self.distributed]
        offloaded = [n for n, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on]
        return kind + (f", {' and '.join(offloaded)} offloaded to CPU" if offloaded else "")

    def to_dict(self) -> dict:
        return asdict(self)


def truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def from_env(env: Mapping[str, str] | None = None, *, cuda: bool, num_gpus: int, source: str = "environment") -> Launch:
    """The launch as accelerate / torchrun describe it in environment variables."""
    env = os.environ if env is None else env
    world = env_int(env, "WORLD_SIZE", 1, 1)
    mixed = env.get("ACCELERATE_MIXED_PRECISION")
    if mixed is not None and mixed.lower() not in PRECISIONS:
        raise MedsftError(f"ACCELERATE_MIXED_PRECISION is {mixed!r}, expected one of {', '.join(PRECISIONS)}",
                          "fix mixed_precision in the accelerate config, or unset the variable", "launch environment")
    distributed, stage, fsdp_version = "none", None, None
    if truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        distributed = "deepspeed"
        stage = env_int(env, "ACCELERATE_DEEPSPEED_ZERO_STAGE", None, 0, 3)
    elif truthy(env.get("ACCELERATE_USE_FSDP")):
        distributed, fsdp_version = "fsdp", env_int(env, "FSDP_VERSION", 1, 1, 2)
    elif world > 1:
        distributed = "ddp"
    offload_fsdp = distributed == "fsdp" and truthy(env.get("FSDP_OFFLOAD_PARAMS"))
    ds_file = deepspeed_json(env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")) if distributed == "deepspeed" else {}
    zero = ds_file.get("zero_optimization") or {}
    if distributed == "deepspeed" and stage is None and isinstance(zero.get("stage"), int):
        stage = zero["stage"]  # a DeepSpeed JSON config says it there, not in the accelerate YAML
    device = lambda key: str((zero.get(key) or {}).get("device", "none")).lower()  # noqa: E731
    return Launch(
        world_size=world, rank=env_int(env, "RANK", 0, 0, world - 1), local_rank=env_int(env, "LOCAL_RANK", 0, 0),
        local_world_size=env_int(env, "LOCAL_WORLD_SIZE", world, 1),
        distributed=distributed, zero_stage=stage,
        offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", device("offload_optimizer"))
        not in ("none", "") or offload_fsdp,
        offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", device("offload_param"))
        not in ("none", "") or offload_fsdp,
        fsdp_version=fsdp_version, fsdp_state_dict_type=env.get("FSDP_STATE_DICT_TYPE") if distributed == "fsdp" else None,
        mixed_precision=mixed.lower() if mixed is not None else None,
        gradient_accumulation=int(env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"])
        if env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").isdigit() else None,
        gradient_clipping=float(env["ACCELERATE_GRADIENT_CLIPPING"])
        if env.get("ACCELERATE_GRADIENT_CLIPPING", "none").replace(".", "", 1).isdigit() else None,
        deepspeed_config_file=env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None,
        cuda=cuda, num_gpus=num_gpus, source=source)


def env_int(env: Mapping[str, str], name: str, default: _Default, least: int, most: int | None = None
            ) -> int | _Default:
    """A whole-number launch variable (torchrun and accelerate export them); a malformed one is one line, not a
    ValueError in every worker."""
    text = env.get(name, "")
    if text == "":
        return default
    value = int(text) if text.strip().isdigit() else None
    if value is None or value < least or most is not None and value > most:
        wanted = f"from {least} to {most}" if most is not None else f"≥ {least}"
        raise MedsftError(f"{name} is {text!r}, expected a whole number {wanted}",
                          f"fix the launch that sets it, or unset {name}", "launch environment")
    return value


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
    return checked_config(config, path)


def checked_config(config: dict, path: str = "the accelerate config") -> dict:
    """The settings of an accelerate config that medsft reads or that accelerate would die on, checked: a
    malformed one is one line here instead of a traceback from accelerate or torch elastic in every launch.
    An unquoted `mixed_precision: no` (YAML reads it as false) means what its writer meant: "no"."""
    config = dict(config)
    fix = "fix the accelerate config, or regenerate it with `accelerate config`"
    whole = lambda value, least: isinstance(value, int) and not isinstance(value, bool) and value >= least  # noqa: E731

    def refuse(name: str, value: object, wanted: str) -> NoReturn:
        raise MedsftError(f"{path}: {name} is {value!r}, expected {wanted}", fix)

    if not isinstance(config.get("distributed_type", "NO"), str):
        refuse("distributed_type", config["distributed_type"], "a name such as MULTI_GPU, DEEPSPEED or FSDP")
    for name, least in (("num_processes", 1), ("num_machines", 1), ("machine_rank", 0)):
        if config.get(name) is not None and not whole(config[name], least):
            refuse(name, config[name], f"a whole number ≥ {least}")
    mixed = config.get("mixed_precision")
    if mixed is None or mixed is False:
        config["mixed_precision"] = "no"
    elif not isinstance(mixed, str) or mixed.lower() not in PRECISIONS:
        refuse("mixed_precision", mixed, "one of " + ", ".join(PRECISIONS) + " (quote it: 'no')")
    else:
        config["mixed_precision"] = mixed.lower()
    for section in ("deepspeed_config", "fsdp_config"):
        if config.get(section) is not None and not isinstance(config[section], dict):
            raise MedsftError(f"{path}: {section} is a {type(config[section]).__name__} ({config[section]!r:.60}), "
                              "not a mapping of settings", f"write its settings as indented `key: value` lines "
                              f"under {section}: (see accelerate_configs/)")
        config[section] = config.get(section) or {}
    ds, fsdp = config["deepspeed_config"], config["fsdp_config"]
    if not ds.get("deepspeed_config_file") and ds.get("zero_stage") not in (None, 0, 1, 2, 3) \
            or isinstance(ds.get("zero_stage"), bool):
        refuse("deepspeed_config.zero_stage", ds["zero_stage"], "one of 0, 1, 2, 3")
    if fsdp.get("fsdp_version") is not None and (fsdp["fsdp_version"] not in (1, 2) or isinstance(fsdp["fsdp_version"], bool)):
        refuse("fsdp_config.fsdp_version", fsdp["fsdp_version"], "one of 1, 2")
    steps = ds.get("gradient_accumulation_steps")
    if steps not in (None, "auto") and not whole(steps, 1):
        refuse("deepspeed_config.gradient_accumulation_steps", steps, "a whole number ≥ 1 or auto")
    clip = ds.get("gradient_clipping")
    if clip not in (None, "auto", "none") and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        refuse("deepspeed_config.gradient_clipping", clip, "a number ≥ 0 or auto")
    for key in ("offload_optimizer_device", "offload_param_device"):
        if str(ds.get(key, "none")).lower() not in ("none", "cpu", "nvme"):
            refuse(f"deepspeed_config.{key}", ds[key], "one of none, cpu, nvme")
    return config


def started_processes(config: dict, asked: int, gpus: int | None = None) -> int:
    """accelerate's routing rule (commands/launch.py `launch_command`), the one copy in medsft: DeepSpeed, FSDP
    and multi-device configs start the `asked` workers unless use_cpu is set; anything else runs the simple
    launcher, one process, except that on a node with several GPUs accelerate turns multi-GPU on itself for
    N > 1. `gpus`: the GPUs of this node, None to assume enough (a GPU preflight planned elsewhere)."""
    kind = str(config.get("distributed_type", "NO")).upper()
    if config.get("use_cpu"):
        return 1
    multi = kind in ("DEEPSPEED", "FSDP") or kind.startswith("MULTI_") and kind != "MULTI_CPU"
    return asked if multi or kind == "NO" and asked > 1 and (gpus is None or gpus > 1) else 1


def accelerate_env(config: dict, num_processes: int | None = None, *, path: str = "the accelerate config",
                   gpus: int | None = None) -> dict:
    """The variables `accelerate launch --config_file FILE [--num_processes N]` exports to each worker
    (those medsft reads; accelerate/utils/launch.py `prepare_*_env`) on a node with `gpus` GPUs (None:
    enough)."""
    config = checked_config(config, path)
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind in UNSUPPORTED:
        raise MedsftError(f"{path}: distributed_type {kind} ({UNSUPPORTED[kind]}) is not supported by medsft",
                          "use DDP, DeepSpeed ZeRO or FSDP2 (accelerate_configs/)")
    if num_processes is not None and num_processes < 1:
        raise MedsftError(f"{num_processes} processes asked: at least 1 is needed",
                          "pass the number of processes you launch (--num_processes / --num-gpus)")
    world = started_processes(config, num_processes or config.get("num_processes") or 1, gpus)
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


def from_accelerate_config(path: str, num_processes: int | None = None, *, cuda: bool = True) -> Launch:
    """The launch `accelerate launch --config_file PATH` would start on GPUs enough for it, seen from one of
    its workers (a plan: `medsft preflight`)."""
    config = read_accelerate_config(path)
    env = accelerate_env(config, num_processes, path=path)
    world = int(env["WORLD_SIZE"])
    return asked_by(from_env(env, cuda=cuda, num_gpus=world if cuda else 0, source=path), config, num_processes)


def from_command(config: dict, num_processes: int | None, *, cuda: bool, gpus: int, source: str) -> Launch:
    """The launch `accelerate launch [--config_file FILE] [--num_processes N]` starts on this machine, seen
    from one of its workers: what `medsft launch` checks before starting any."""
    env = accelerate_env(config, num_processes, path=source, gpus=gpus if cuda else 0)
    launch = asked_by(from_env(env, cuda=cuda, num_gpus=gpus, source=source), config, num_processes)
    machines = config.get("num_machines") or 1
    return replace(launch, local_world_size=max(launch.world_size // machines, 1))


def asked_by(launch: Launch, config: dict, num_processes: int | None) -> Launch:
    """`launch` with what its command asked for (checked by `check`)."""
    return replace(launch, requested=num_processes or config.get("num_processes") or 1,
                   config_type=str(config.get("distributed_type", "NO")).upper(), config_use_cpu=bool(config.get("use_cpu")))


CONFIG_VARIABLE = "MEDSFT_ACCELERATE_CONFIG"  # `medsft launch` tells its workers which file their launch came from


def default_config_file() -> str | None:
    from accelerate.commands.config import default_config_file as path

    return path if Path(path).is_file() else None


def launcher_argv(pid: int | None = None) -> list[str] | None:
    """The options given to the `accelerate launch` that started this worker, read from its command line
    (/proc): its simple, multi-GPU and DeepSpeed launchers all start the workers as its own children.
    None when this process was not started by `accelerate launch` (or /proc is not there)."""
    try:
        raw = Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(argv):
        if arg.endswith("accelerate.commands.launch"):
            return argv[i + 1:]
        if Path(arg).name == "accelerate" and argv[i + 1:i + 2] == ["launch"]:
            return argv[i + 2:]
    return None


def with_command(launch: Launch) -> Launch:
    """A worker's launch (`detect`) with what the `accelerate launch` that started it asked for, read from its
    command line and config file; `source` names that file. Unchanged outside `accelerate launch`; under
    `medsft launch`, which checked the command before starting the workers, only the file is named."""
    if os.environ.get(CONFIG_VARIABLE):
        return replace(launch, source=os.environ[CONFIG_VARIABLE])
    argv = launcher_argv()
    if argv is None:
        return launch
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args([*argv, "x"] if "-m" not in argv else argv)
    path = args.config_file or default_config_file()
    config = read_accelerate_config(path) if path else {}
    launch = asked_by(launch, config, args.num_processes)
    return replace(launch, source=path) if path else launch


def check(launch: Launch) -> None:
    """The launch starts what its command asked for: not fewer processes, not without the config's
    distribution, not more processes on a node than it has GPUs. One of the rules `runspec.resolve` applies."""
    where = launch.source if launch.source != "environment" else "the accelerate config"
    named = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}.get(launch.config_type or "")
    if named and launch.config_use_cpu:
        raise MedsftError(f"{where} sets use_cpu: true, which makes accelerate start one plain process and ignore its "
                          f"{named} settings", "remove use_cpu (medsft runs on CPUs without it)")
    if launch.requested and launch.requested > 1 and launch.world_size == 1:
        why = f"{where} has distributed_type: {launch.config_type}" + (", use_cpu: true" if launch.config_use_cpu else "")
        raise MedsftError(f"{why}, so accelerate would start 1 process, not the {launch.requested} asked",
                          "use accelerate_configs/ddp.yaml (or zero2/zero3/fsdp2) for several processes")
    if launch.cuda and launch.local_world_size > launch.num_gpus:
        raise MedsftError(f"{launch.local_world_size} processes were started on this node but it has "
                          f"{launch.num_gpus} GPU(s)", f"pass --num_processes {launch.num_gpus} (per node) to "
                          "accelerate launch")


def detect() -> Launch:
    """This process's launch (imports torch to see the GPUs)."""
    import torch

    cuda = torch.cuda.is_available()
    return from_env(cuda=cuda, num_gpus=torch.cuda.device_count() if cuda else 0)
