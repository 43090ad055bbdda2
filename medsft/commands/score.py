"""`medsft score FILES --predictions P`: score generations made elsewhere (vLLM, SGLang, …) on benchmark files."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from pathlib import Path

    from medsft.commands.places import score_dir
    from medsft.evaluation.benchmark import read_benchmarks, read_predictions, run_score
    from medsft.evaluation.report import check_output_dir

    items = read_benchmarks(args.files)
    outputs = read_predictions(args.predictions, items)
    pred = Path(args.predictions).expanduser()
    output_dir = check_output_dir(score_dir(pred, args.output_dir))
    from medsft.views import show_benchmark

    show_benchmark(run_score(items, outputs, files=args.files, predictions=pred, output_dir=output_dir))
    return 0
