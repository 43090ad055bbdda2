"""`medsft eval ADAPTER`: the held-out test split of the adapter's run, or benchmark files (`--benchmark`); the
results go where commands/places.py says, never inside the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.adapter.load import check_adapter_dir
    from medsft.commands.common import benchmark_settings, quiet_libraries, test_split_settings
    from medsft.commands.places import benchmark_dir, evaluation_dir
    from medsft.console import say
    from medsft.views import item_progress, show_benchmark, show_eval

    adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import, like every check below
    if args.benchmark:
        from medsft.evaluation.benchmark import DEFAULT_PROMPT, read_benchmarks
        from medsft.evaluation.evaluate import run_benchmark
        from medsft.evaluation.report import check_output_dir

        settings = benchmark_settings(args)
        items = read_benchmarks(args.benchmark, args.limit)
        if args.max_generations is not None and args.max_generations < len(items):
            say(f"--max-generations {args.max_generations}: scoring the first {args.max_generations} of "
                f"{len(items)} items")
            items = items[:args.max_generations]
        output_dir = check_output_dir(benchmark_dir(adapter, args.output_dir))
        quiet_libraries()
        written = run_benchmark(adapter, items, settings=settings, prompt=args.prompt or DEFAULT_PROMPT,
                                samples=args.samples or 1, engine=args.engine or "transformers",
                                with_base=not args.no_base, output_dir=output_dir, files=args.benchmark,
                                progress=item_progress)
        if written is not None:  # the main rank's
            show_benchmark(written)
        return 0
    from medsft.adapter.load import recipe_of
    from medsft.evaluation.evaluate import held_out_ids, run_eval
    from medsft.io.outputs import check_writable_dir

    settings = test_split_settings(args)
    max_generations = 20 if args.max_generations is None else args.max_generations
    if max_generations < 0:
        raise MedsftError(f"--max-generations must be ≥ 0 (got {max_generations})", "use e.g. 20")
    output_dir = evaluation_dir(adapter, args.output_dir)
    check_writable_dir(output_dir, "--output-dir")
    held_out_ids(adapter, recipe_of(adapter))  # the split and its data, before any model loads
    quiet_libraries()
    results = run_eval(adapter, max_generations=max_generations, settings=settings, with_base=not args.no_base,
                       output_dir=output_dir, progress=item_progress)
    show_eval(results)
    say(f"evaluation written to {output_dir / 'eval.json'}")
    return 0
