"""`medsft preflight RECIPE`: memory per device before training, with no weights loaded (medsft/memory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.recipe.files import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    from dataclasses import replace

    from medsft.launch.detect import from_accelerate_config, from_env
    from medsft.train.runspec import resolve

    if args.num_gpus is not None and args.num_gpus < 1:
        raise MedsftError(f"--num-gpus must be at least 1 (got {args.num_gpus})", "pass the number of processes")
    from medsft.memory.preflight import parse_size

    if args.gpu_memory:
        parse_size(args.gpu_memory)  # before reading any model config
    if args.accelerate_config:
        launch = from_accelerate_config(args.accelerate_config, args.num_gpus)
    else:  # inside a launch, the variables accelerate exported describe it; else one GPU (or --num-gpus)
        launch = from_env(cuda=True, num_gpus=args.num_gpus or 1)
        launch = replace(launch, num_gpus=max(launch.num_gpus, launch.local_world_size))  # a plan: GPUs enough
        if args.num_gpus and launch.world_size == 1 and args.num_gpus > 1:
            launch = from_env({"WORLD_SIZE": str(args.num_gpus)}, cuda=True, num_gpus=args.num_gpus)
    from medsft.memory.micro_batch import Memory

    memory = Memory(parse_size(args.gpu_memory), "as given by --gpu-memory") if args.gpu_memory else None
    spec = resolve(recipe, launch, kernels="off", memory=memory)
    report = spec.preflight(args.gpu_memory)
    from medsft.views import show_preflight

    show_preflight(report, spec.batch)
    if report.verdict == "won't fit":
        raise MedsftError("the estimate does not fit in device memory", "apply one of the changes listed above",
                          recipe.source_file)
    return 0
