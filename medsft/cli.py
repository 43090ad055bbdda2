"""`medsft train | data` (also `python -m medsft`): parse, validate, dispatch.

Why here: the CLI is the only module that knows every stage. It validates the recipe before any heavy
import, and turns every MedsftError into one line on stderr with exit status 2.
"""

from __future__ import annotations

import os

from medsft.arguments import BENCHMARK_ONLY, parser
from medsft.console import error, say
from medsft.errors import EXIT_USAGE, MedsftError


def benchmark_settings(args):
    """`eval --benchmark` flags, checked before any model loads. Defaults are HuatuoGPT-o1's."""
    import dataclasses
    import importlib.util

    if args.greedy and (args.sample or args.temperature is not None or args.top_p is not None):
        raise MedsftError("--greedy cannot be combined with --sample, --temperature or --top-p",
                          "leave out --greedy to sample (default T 0.5, top-p 0.9)")
    for flag, value, least in (("--samples", args.samples, 1), ("--batch-size", args.batch_size, 1),
                               ("--limit", args.limit, 1), ("--seed", args.seed, 0),
                               ("--max-generations", args.max_generations, 1)):
        if value is not None and value < least:
            raise MedsftError(f"{flag} must be at least {least} (got {value})", f"e.g. {flag} {max(least, 1)}")
    if args.greedy and (args.samples or 1) > 1:
        raise MedsftError(f"--samples {args.samples} with --greedy gives {args.samples} identical answers",
                          "sample (leave out --greedy), or use --samples 1")
    if args.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise MedsftError("--engine vllm: vLLM is not installed",
                              "pip install vllm on a CUDA machine (GPU only), or leave out --engine")
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise MedsftError("--engine vllm runs in one process (vLLM batches and parallelizes itself)",
                              "run medsft eval without accelerate launch")
    from medsft.evaluation.generate import PAPERS

    args.sample = not args.greedy
    for name in ("max_new_tokens", "temperature", "top_p"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(PAPERS, name))
    return dataclasses.replace(generation_settings(args), seed=PAPERS.seed if args.seed is None else args.seed,
                               batch_size=args.batch_size or PAPERS.batch_size)


def test_split_settings(args):
    """`eval` without --benchmark: the held-out split's generation defaults (generate.Settings: greedy)."""
    given = [f"--{name.replace('_', '-')}" for name in BENCHMARK_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise MedsftError(f"{given[0]} applies to benchmarks only", "add --benchmark FILE, or leave it out")
    from medsft.evaluation.generate import Settings

    for name in ("max_new_tokens", "temperature", "top_p"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(Settings(), name))
    return generation_settings(args)


def generation_settings(args):
    """Generation flags checked before any model loads (a sampling temperature of 0 would hang `infer --sample`)."""
    import math

    from medsft.evaluation.generate import Settings

    if args.max_new_tokens <= 0:
        raise MedsftError(f"--max-new-tokens must be positive (got {args.max_new_tokens})", "use e.g. 512")
    if args.sample and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise MedsftError(f"--temperature must be a positive number when sampling (got {args.temperature})",
                          "use e.g. --temperature 0.7, or leave out --sample for greedy decoding")
    if args.sample and not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise MedsftError(f"--top-p must be in (0, 1] (got {args.top_p})", "use e.g. --top-p 0.95")
    return Settings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                    top_p=args.top_p)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"] and not {"-h", "--help"} & set(argv[1:2]):
        try:  # accelerate's options are accelerate's to parse (medsft/train/launch_command.py)
            from medsft.train.launch_command import run

            return run(argv[1:])
        except MedsftError as err:
            error(err.line())
            return EXIT_USAGE
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except MedsftError as err:
        error(err.line())
        return EXIT_USAGE


def dispatch(args) -> int:
    if args.command in ("infer", "eval", "merge"):
        from medsft.adapter.load import check_adapter_dir

        adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import, like every check below
        if args.command == "infer":
            from medsft.evaluation.infer import check_output, read_questions, run_infer

            settings = generation_settings(args)
            questions = read_questions(args.file) if args.file else None
            output = check_output(args.output) if args.output else None
            quiet_libraries()
            run_infer(adapter, question=args.question, questions=questions, output=output,
                      use_adapter=not args.no_adapter, settings=settings)
        elif args.command == "eval" and args.benchmark:
            from pathlib import Path

            from medsft.evaluation.benchmark import DEFAULT_PROMPT, read_benchmarks
            from medsft.evaluation.report import check_output_dir
            from medsft.evaluation.evaluate import run_benchmark

            settings = benchmark_settings(args)
            items = read_benchmarks(args.benchmark, args.limit)
            if args.max_generations is not None and args.max_generations < len(items):
                say(f"--max-generations {args.max_generations}: scoring the first {args.max_generations} of "
                    f"{len(items)} items")
                items = items[:args.max_generations]
            output_dir = check_output_dir(args.output_dir or Path(adapter) / "benchmark")
            quiet_libraries()
            run_benchmark(adapter, items, settings=settings, prompt=args.prompt or DEFAULT_PROMPT,
                          samples=args.samples or 1, engine=args.engine or "transformers", with_base=not args.no_base,
                          output_dir=output_dir, files=args.benchmark)
        elif args.command == "eval":
            from medsft.adapter.load import recipe_of
            from medsft.evaluation.evaluate import held_out_ids, run_eval

            settings = test_split_settings(args)
            max_generations = 20 if args.max_generations is None else args.max_generations
            if max_generations < 0:
                raise MedsftError(f"--max-generations must be ≥ 0 (got {max_generations})", "use e.g. 20")
            held_out_ids(adapter, recipe_of(adapter))  # the split and its data, before any model loads
            quiet_libraries()
            run_eval(adapter, max_generations=max_generations, settings=settings, with_base=not args.no_base)
        else:
            from medsft.adapter.merge import check_merge_output, run_merge

            check_merge_output(adapter, args.out_dir)
            quiet_libraries()
            say(f"merged model saved to {run_merge(adapter, args.out_dir)}")
        return 0

    if args.command == "score":
        from pathlib import Path

        from medsft.evaluation.benchmark import read_benchmarks, read_predictions, run_score
        from medsft.evaluation.report import check_output_dir

        items = read_benchmarks(args.files)
        outputs = read_predictions(args.predictions, items)
        pred = Path(args.predictions).expanduser()
        output_dir = check_output_dir(args.output_dir or pred.with_name(f"{pred.stem}-score"))
        run_score(items, outputs, files=args.files, predictions=pred, output_dir=output_dir)
        return 0

    from medsft.recipe.files import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    if args.command in ("train", "data"):
        from medsft.io.outputs import check_caches

        check_caches()
    if args.command == "train":
        from medsft.io.checkpoints import check_resume_argument

        check_resume_argument(args.resume)  # the launch rules: runspec.resolve, first thing train.run decides
        from medsft.launch.detect import from_env

        from_env(cuda=False, num_gpus=0)  # a malformed launch variable refuses before torch is imported
        quiet_libraries()
        from medsft.train.run import run

        run(recipe, resume=args.resume, force=args.force)
        return 0
    if args.command == "preflight":
        from dataclasses import replace

        from medsft.launch.detect import from_accelerate_config, from_env
        from medsft.memory.preflight import run_preflight
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
        _, verdict, _ = run_preflight(resolve(recipe, launch, kernels="off", memory=memory), gpu_memory=args.gpu_memory)
        if verdict == "won't fit":
            raise MedsftError("the estimate does not fit in device memory", "apply one of the changes listed above",
                              recipe.source_file)
        return 0
    if args.command == "data":
        quiet_libraries()
        from medsft.train.inspect_data import show

        show(recipe, limit=args.limit, split=args.split, as_json=args.json)
        return 0
    raise AssertionError(args.command)


def quiet_libraries() -> None:
    """Silence start-up chatter that tells the user nothing (called after the recipe validated); on
    non-main ranks, library warnings too: each rank would print the same ones."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # datasets.map forks after tokenizing
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it fell back to CPU
    import datasets
    from transformers.utils import logging as hf_logging

    from medsft.console import is_main

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    if not is_main():
        warnings.simplefilter("ignore")
        hf_logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
