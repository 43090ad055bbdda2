"""`medsft launch`: `accelerate launch` with medsft's checks first and the workers' exit status passed on.

Why: under a plain `accelerate launch … -m medsft train`, every worker finds a recipe mistake itself; the
main one prints medsft's one line, then torch elastic prints its failure report and accelerate exits 1
(and a preempted run's exit 75, which asks Slurm for a requeue, is lost the same way). `medsft launch`
checks the recipe and the accelerate config together before any worker starts — one `error:` line, exit
2 — refuses a launch that would start fewer processes than asked or drop the config's distribution, then
runs accelerate's own launcher in this process and exits with the workers' status, without a traceback.

    medsft launch --config_file accelerate_configs/ddp.yaml --num_processes 2 train recipes/X.yaml --set …
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medsft.errors import MedsftError

COMMANDS = ("train",)
USAGE = "medsft launch [accelerate launch options] train RECIPE [--set KEY=VALUE …]"
CONFIG_VARIABLE = "MEDSFT_ACCELERATE_CONFIG"  # tells the workers which file their launch came from


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate's options, medsft's command and its arguments)."""
    for i, arg in enumerate(argv):
        if arg in COMMANDS and (i == 0 or not argv[i - 1].startswith("--") or "=" in argv[i - 1]
                                or argv[i - 1] in FLAGS):
            return argv[:i], argv[i:]
    raise MedsftError(f"no medsft command in `medsft launch {' '.join(argv)}`", f"write {USAGE}")


# accelerate launch options that take no value (so the word after them is not their value)
FLAGS = {"--cpu", "--multi_gpu", "--tpu", "--use_deepspeed", "--use_fsdp", "--use_megatron_lm", "--quiet", "-q",
         "--debug", "--same_network", "--rdzv_conf", "--no_python", "--module", "-m", "--monitor_interval"}


def default_config_file() -> str | None:
    from accelerate.commands.config import default_config_file as path

    return path if Path(path).is_file() else None


def launch_problem(config: dict, asked: int, *, cuda: bool, gpus: int, path: str) -> str | None:
    """Why accelerate would not start the distributed run this config and `--num_processes` ask for."""
    kind = str(config.get("distributed_type", "NO")).upper()
    named = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}.get(kind)
    if named and config.get("use_cpu"):
        return (f"{path} sets use_cpu: true, which makes accelerate start one plain process and ignore its "
                f"{named} settings — remove use_cpu (medsft runs on CPUs without it)")
    multi = kind in ("DEEPSPEED", "FSDP") or (kind.startswith("MULTI_") and kind != "MULTI_CPU")
    if asked > 1 and not multi and not (cuda and gpus > 1 and kind == "NO"):
        return (f"{path} has distributed_type: {kind}, so accelerate would start 1 process, not the {asked} asked — "
                "use accelerate_configs/ddp.yaml (or zero2/zero3/fsdp2) for several processes")
    return None


def run(argv: list[str]) -> int:
    accel_argv, medsft_argv = split_argv(argv)
    from medsft.checkpoints import check_resume_argument
    from medsft.cli import parser
    from medsft.recipe_files import load_recipe

    args = parser().parse_args(medsft_argv)
    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    check_resume_argument(args.resume)

    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser

    from medsft.launch import accelerate_env, from_env, read_accelerate_config
    from medsft.runspec import resolve

    launch_args = launch_command_parser().parse_args([*accel_argv, "-m", "medsft", *medsft_argv])
    path = launch_args.config_file or default_config_file()
    config = read_accelerate_config(path) if path else {}
    where = path or "accelerate's defaults"
    asked = launch_args.num_processes or int(config.get("num_processes") or 1)
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    problem = launch_problem(config, asked, cuda=cuda, gpus=gpus, path=where)
    if problem:
        what, _, fix = problem.partition(" — ")
        raise MedsftError(what, fix)
    import importlib.util

    if str(config.get("distributed_type", "")).upper() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise MedsftError(f"{where} uses DeepSpeed, which is not installed",
                          "pip install -e '.[deepspeed]' (or pip install 'medsft[deepspeed]')")
    env = accelerate_env(config, asked, path=where)
    launch = from_env(env, cuda=cuda, num_gpus=gpus, source=where)
    resolve(recipe, launch, kernels="off")  # placement, precision and DeepSpeed values, before any worker starts
    if path:
        os.environ[CONFIG_VARIABLE] = str(path)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers say what failed
    return launch_and_wait(launch_command, launch_args)


def launch_and_wait(launch_command, launch_args) -> int:
    """accelerate's launcher in this process; the workers' exit status, not a traceback. A launcher stopped
    by a signal (Slurm's preemption warning, passed on as SIGTERM) has let its workers checkpoint and exit:
    that is EXIT_PREEMPTED, which the sbatch scripts requeue."""
    import subprocess

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from medsft.preemption import EXIT_PREEMPTED

    # torch elastic gives workers 30 s after passing a signal on before it kills them; a checkpoint of a
    # large model takes longer, and Slurm warns 5 minutes ahead (launch/*.sbatch)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "240")
    try:
        launch_command(launch_args)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values() if f.exitcode is not None]
        return next((c for c in codes if c > 0), 1)
    except subprocess.CalledProcessError as err:
        return err.returncode if err.returncode > 0 else 1
    except SignalException:
        return EXIT_PREEMPTED
    return 0


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


def check_worker_launch(launch) -> str | None:
    """In a worker: refuse a launch that started fewer processes than asked, dropped its config's
    distribution, or put more processes on a node than it has GPUs (checked before anything is loaded).
    Returns the accelerate config file the launch came from, when known (for messages)."""
    if os.environ.get(CONFIG_VARIABLE):  # `medsft launch` checked all of it before starting the workers
        return os.environ[CONFIG_VARIABLE]
    if launch.cuda and launch.local_world_size > launch.num_gpus:
        raise MedsftError(f"{launch.local_world_size} processes were started on this node but it has "
                          f"{launch.num_gpus} GPU(s)", f"pass --num_processes {launch.num_gpus} (per node) to "
                          "accelerate launch")
    argv = launcher_argv()
    if argv is None:
        return None
    from accelerate.commands.launch import launch_command_parser

    from medsft.launch import read_accelerate_config

    args, _ = launch_command_parser().parse_known_args([*argv, "x"] if "-m" not in argv else argv)
    path = args.config_file or default_config_file()
    config = read_accelerate_config(path) if path else {}
    asked = args.num_processes or int(config.get("num_processes") or 1)
    problem = launch_problem(config, asked, cuda=launch.cuda, gpus=launch.num_gpus, path=path or "the accelerate "
                             "config")
    if problem is None and asked > launch.world_size and launch.world_size == 1:
        problem = (f"accelerate started 1 process, not the {asked} asked — use a distributed config "
                   "(accelerate_configs/ddp.yaml, zero2/zero3, fsdp2)")
    if problem:
        what, _, fix = problem.partition(" — ")
        raise MedsftError(what, fix)
    return path
