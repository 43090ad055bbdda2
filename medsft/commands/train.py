"""`medsft train RECIPE`: validate the recipe and the launch before torch, then train (medsft/train/run.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.commands.common import check_hub, finish, quiet_libraries
    from medsft.io.checkpoints import check_resume_argument
    from medsft.io.outputs import check_caches
    from medsft.launch.detect import from_env
    from medsft.recipe.files import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    check_caches()
    check_hub(recipe)
    check_resume_argument(args.resume)  # the launch rules: runspec.resolve, first thing train.run decides
    from_env(cuda=False, num_gpus=0)  # a malformed launch variable refuses before torch is imported
    quiet_libraries()
    from medsft.train.preemption import EXIT_PREEMPTED
    from medsft.train.run import run as train

    try:
        train(recipe, resume=args.resume, force=args.force)
    except SystemExit as stop:
        if stop.code != EXIT_PREEMPTED:
            raise
        return finish(EXIT_PREEMPTED)  # every rank agreed on the step it checkpointed
    return finish(0)
