"""`medsft merge ADAPTER OUT`: the adapter merged into bf16 base weights, a plain transformers checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.adapter.load import check_adapter_dir
    from medsft.adapter.merge import check_merge_output, run_merge
    from medsft.commands.common import quiet_libraries
    from medsft.commands.places import held_out_evaluation
    from medsft.console import say

    adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import
    check_merge_output(adapter, args.out_dir)
    quiet_libraries()
    say(f"merged model saved to {run_merge(adapter, args.out_dir, evaluation=held_out_evaluation(adapter))}")
    return 0
