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
from typing import TYPE_CHECKING

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace
    from collections.abc import Callable

COMMANDS = ("train",)
USAGE = "medsft launch [accelerate launch options] train RECIPE [--set KEY=VALUE …]"


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


def run(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv[:next((i for i, a in enumerate(argv) if a in COMMANDS), len(argv))]):
        from medsft.commands.arguments import parser

        parser().parse_args(["launch", "--help"])  # medsft's usage, and where accelerate's options are
    accel_argv, medsft_argv = split_argv(argv)
    from medsft.commands.arguments import parser
    from medsft.commands.common import check_hub
    from medsft.io.checkpoints import check_resume_argument
    from medsft.recipe.files import load_recipe

    args = parser().parse_args(medsft_argv)
    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    check_resume_argument(args.resume)
    check_hub(recipe)  # once here, not once per worker

    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser

    from medsft.launch.detect import CONFIG_VARIABLE, default_config_file, from_command, read_accelerate_config
    from medsft.train.runspec import resolve

    launch_args = parse_launch_args(launch_command_parser(), [*accel_argv, "-m", "medsft", *medsft_argv])
    path = launch_args.config_file or default_config_file()
    config = read_accelerate_config(path) if path else {}
    where = path or "accelerate's defaults"
    if launch_args.num_processes is not None and launch_args.num_processes < 1:
        raise MedsftError(f"--num_processes {launch_args.num_processes}: at least 1 process is needed",
                          "pass --num_processes N with N ≥ 1, or leave it out to use the config's num_processes")
    if not launch_args.mixed_precision and config.get("mixed_precision") == "no":
        launch_args.mixed_precision = "no"  # accelerate would read an unquoted `no` (YAML false) itself and fail
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    import importlib.util

    if str(config.get("distributed_type", "")).upper() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise MedsftError(f"{where} uses DeepSpeed, which is not installed",
                          "pip install -e '.[deepspeed]' (or pip install 'medsft[deepspeed]')")
    launch = from_command(config, launch_args.num_processes, cuda=cuda, gpus=gpus, source=where)
    resolve(recipe, launch, kernels="off")  # every rule the workers apply (runspec.resolve), before any starts
    here = launch.local_world_size
    have, what = (gpus, "GPUs") if cuda else (os.cpu_count() or 1, "CPU cores (no GPU)")
    if here > have:
        from medsft.console import notice

        notice(f"{where} starts {here} processes on this machine, which has {have} {what}: they will share them; "
               f"pass --num_processes {have} for one per {'GPU' if cuda else 'core'}")
    if path:
        os.environ[CONFIG_VARIABLE] = str(path)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers say what failed
    return launch_and_wait(launch_command, launch_args)


def parse_launch_args(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """accelerate's own option parser; a bad option (`--num_processes two`) is its one `error:` line, not its
    usage text of a hundred lines."""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser.parse_args(argv)
    except SystemExit as err:
        if not err.code:
            raise
        lines = [line for line in said.getvalue().splitlines() if ": error: " in line]
        what = lines[-1].split(": error: ", 1)[1] if lines else " ".join(said.getvalue().split())[-200:]
        raise MedsftError(f"accelerate launch options: {what}", "see `accelerate launch --help`; write "
                          + USAGE) from None


def launch_and_wait(launch_command: Callable[[Namespace], None], launch_args: Namespace) -> int:
    """accelerate's launcher in this process; the workers' exit status, not a traceback. A launcher stopped
    by a signal (Slurm's preemption warning, passed on as SIGTERM) has let its workers checkpoint and exit:
    that is EXIT_PREEMPTED, which the sbatch scripts requeue."""
    import subprocess

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from medsft.train.preemption import EXIT_PREEMPTED, SIGNALS

    # torch elastic gives workers 30 s after passing a signal on before it kills them; a checkpoint of a
    # large model takes longer, and Slurm warns 5 minutes ahead (launch/*.sbatch)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "240")
    from medsft.upstream import patient_single_process_shutdown

    patient_single_process_shutdown(float(os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]))  # the same for one process
    try:
        launch_command(launch_args)
    except ValueError as err:  # accelerate's own checks of its options, before it starts a worker
        raise MedsftError(f"accelerate launch refused the launch: {' '.join(str(err).split())[:300]}",
                          "fix the accelerate config or the launch options") from None
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values() if f.exitcode is not None]
        return next((c for c in codes if c > 0), 1)
    except subprocess.CalledProcessError as err:
        return err.returncode if err.returncode > 0 else 1
    except SignalException:  # accelerate < 1.16 lets torch elastic's signal through
        return EXIT_PREEMPTED
    except SystemExit as err:  # accelerate ≥ 1.16 exits 128 + the signal once elastic has shut its workers down
        if err.code in {128 + sig for sig in SIGNALS}:
            return EXIT_PREEMPTED
        raise
    return 0
