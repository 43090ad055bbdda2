"""`medsft data RECIPE`: what is trained, as rows kept, lengths and the trained spans (medsft/train/inspect_data.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.commands.common import check_hub, quiet_libraries
    from medsft.io.outputs import check_caches
    from medsft.recipe.files import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    check_caches()
    check_hub(recipe, pushing=False)
    quiet_libraries()
    from medsft.train.inspect_data import show

    show(recipe, limit=args.limit, split=args.split, as_json=args.json)
    return 0
