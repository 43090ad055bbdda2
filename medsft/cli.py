"""`medsft train | data` (also `python -m medsft`): parse, validate, dispatch.

Why here: the CLI is the only module that knows every stage. It validates the recipe before any heavy
import, and turns every MedsftError into one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os

from medsft.console import error, say
from medsft.errors import EXIT_USAGE, MedsftError

EXAMPLES = """\
examples:
  medsft train recipes/tiny-cpu.yaml
  medsft train recipes/qwen3-0.6b.yaml --set training.learning_rate=1e-4 --set lora.rank=32
  accelerate launch --config_file accelerate_configs/ddp.yaml -m medsft train recipes/qwen3-0.6b.yaml
  medsft data recipes/tiny-cpu.yaml --limit 2
"""


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/), or the notebook's flat config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, e.g. --set training.learning_rate=1e-4 (repeatable)")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="medsft", description="QLoRA SFT for medical reasoning (TRL + PEFT + bitsandbytes).",
                                epilog=EXAMPLES, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a LoRA adapter from a recipe", formatter_class=fmt,
                       epilog="example:\n  medsft train recipes/tiny-cpu.yaml --set training.num_train_epochs=2")
    add_recipe_args(t)
    t.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                   help="auto (default): continue from the newest complete checkpoint in output.dir")
    t.add_argument("--force", action="store_true", help="train even if the memory preflight says it won't fit")

    sub.add_parser("launch", help="accelerate launch, with medsft's checks first and the workers' exit status",
                   formatter_class=fmt, epilog="example:\n  medsft launch --config_file accelerate_configs/ddp.yaml "
                   "--num_processes 2 train recipes/tiny-cpu.yaml\n(everything before `train` goes to accelerate launch)")

    pf = sub.add_parser("preflight", help="estimate memory per device before training (no weights loaded)",
                        formatter_class=fmt,
                        epilog="examples:\n  medsft preflight recipes/llama3.1-8b.yaml --gpu-memory 24GiB\n"
                               "  medsft preflight recipes/llama3.1-8b.yaml --accelerate-config "
                               "accelerate_configs/zero3.yaml --num-gpus 8 --gpu-memory 80GiB")
    add_recipe_args(pf)
    pf.add_argument("--accelerate-config", metavar="FILE", help="the accelerate config you will launch with")
    pf.add_argument("--num-gpus", type=int, metavar="N", help="processes (default: the config's num_processes)")
    pf.add_argument("--gpu-memory", metavar="SIZE", help="device memory to assume, e.g. 80GiB (needed without a GPU)")

    i = sub.add_parser("infer", help="ask a trained adapter (one question, a JSONL file, or interactively)",
                       formatter_class=fmt,
                       epilog="examples:\n  medsft infer runs/tiny-cpu/adapter --question \"A 40-year-old ...\"\n"
                              "  medsft infer runs/tiny-cpu/adapter --file questions.jsonl --output answers.jsonl\n"
                              "  medsft infer runs/tiny-cpu/adapter            # interactive")
    i.add_argument("adapter_dir")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--question", help="one question")
    src.add_argument("--file", help="JSONL with a 'question' per line (batch mode)")
    i.add_argument("--output", help="batch mode: write JSONL here (default stdout)")
    i.add_argument("--no-adapter", action="store_true", help="answer with the base model alone")
    add_generation_args(i)

    e = sub.add_parser("eval", help="evaluate an adapter on its run's held-out test split, or on benchmark files",
                       formatter_class=fmt,
                       epilog="examples:\n  medsft eval runs/tiny-cpu/adapter --max-generations 40\n"
                              "  medsft eval runs/x/adapter --benchmark eval_data.json   # MedQA, MedMCQA, ...\n"
                              "  accelerate launch --config_file accelerate_configs/ddp.yaml -m medsft eval "
                              "runs/x/adapter --benchmark eval_data.json")
    e.add_argument("adapter_dir")
    e.add_argument("--max-generations", type=int, default=20, help="test rows to generate for (default 20)")
    e.add_argument("--no-base", action="store_true", help="skip the base-model comparison")
    add_generation_args(e)
    add_benchmark_args(e)

    sc = sub.add_parser("score", help="score generations made elsewhere (vLLM, SGLang, …) on a benchmark file",
                        formatter_class=fmt,
                        epilog="example:\n  medsft score eval_data.json --predictions vllm_outputs.jsonl\n(PRED.jsonl: "
                               "one {\"output\": \"<full generated text>\"} per benchmark item, in the file's order)")
    sc.add_argument("files", nargs="+", metavar="FILE", help="benchmark file(s): JSON list, JSONL or {source: [items]}")
    sc.add_argument("--predictions", required=True, metavar="PRED.jsonl", help="the generations, one per item")
    sc.add_argument("--output-dir", metavar="DIR", help="where the report goes (default: PRED-score/ beside PRED)")

    m = sub.add_parser("merge", help="merge the adapter into bf16 base weights (plain transformers checkpoint)",
                       formatter_class=fmt, epilog="example:\n  medsft merge runs/tiny-cpu/adapter runs/tiny-cpu/merged")
    m.add_argument("adapter_dir")
    m.add_argument("out_dir")

    d = sub.add_parser("data", help="show what is trained: rows kept, lengths, trained spans", formatter_class=fmt,
                       epilog="examples:\n  medsft data recipes/tiny-cpu.yaml --limit 2\n"
                              "  medsft data recipes/tiny-cpu.yaml --json > examples.jsonl")
    add_recipe_args(d)
    d.add_argument("--limit", type=int, default=None, help="examples to show (default 3; --json: all)")
    d.add_argument("--split", default="train", choices=["train", "validation", "test"])
    d.add_argument("--json", action="store_true", help="one JSON object per example (input_ids, labels) on stdout")
    return p


def add_generation_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)


def add_benchmark_args(e) -> None:
    b = e.add_argument_group("benchmarks (with --benchmark; the papers' sampling: T 0.5, top-p 0.9, 2,048 new tokens)")
    b.add_argument("--benchmark", action="append", metavar="FILE",
                   help="MC items {question, options, answer_idx, source} as a JSON list, JSONL or {source: [items]} "
                        "(repeatable)")
    b.add_argument("--greedy", action="store_true", help="greedy decoding instead of the papers' sampling")
    b.add_argument("--seed", type=int, help="sampling seed (default 42; batch k uses seed + k)")
    b.add_argument("--samples", type=int, help="generations per item (default 1; accuracy averages them)")
    b.add_argument("--prompt", choices=("huatuo", "huatuo-strict", "medsft"),
                   help="how items are posed (default huatuo: HuatuoGPT-o1's evaluation prompt)")
    b.add_argument("--engine", choices=("transformers", "vllm"), help="default transformers; vllm needs a GPU")
    b.add_argument("--batch-size", type=int, help="prompts per generate call (default 8)")
    b.add_argument("--limit", type=int, metavar="N", help="only the first N items of each source")
    b.add_argument("--output-dir", metavar="DIR", help="where the report goes (default ADAPTER/benchmark)")
    # the test split keeps its defaults (512 tokens, greedy, --sample's 0.7/0.95); benchmarks take the papers'
    e.set_defaults(max_new_tokens=None, temperature=None, top_p=None)


BENCHMARK_ONLY = ("greedy", "seed", "samples", "prompt", "engine", "batch_size", "limit", "output_dir")


def benchmark_settings(args):
    """`eval --benchmark` flags, checked before any model loads. Defaults are HuatuoGPT-o1's."""
    import dataclasses
    import importlib.util

    if args.greedy and (args.sample or args.temperature is not None or args.top_p is not None):
        raise MedsftError("--greedy cannot be combined with --sample, --temperature or --top-p",
                          "leave out --greedy to sample (default T 0.5, top-p 0.9)")
    for flag, value, least in (("--samples", args.samples, 1), ("--batch-size", args.batch_size, 1),
                               ("--limit", args.limit, 1), ("--seed", args.seed, 0)):
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
    args.sample = not args.greedy
    args.max_new_tokens = 2048 if args.max_new_tokens is None else args.max_new_tokens
    args.temperature = 0.5 if args.temperature is None else args.temperature
    args.top_p = 0.9 if args.top_p is None else args.top_p
    return dataclasses.replace(generation_settings(args), seed=42 if args.seed is None else args.seed,
                               batch_size=args.batch_size or 8)


def test_split_settings(args):
    """`eval` without --benchmark: the held-out split's generation defaults (512 tokens, greedy)."""
    given = [f"--{name.replace('_', '-')}" for name in BENCHMARK_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise MedsftError(f"{given[0]} applies to benchmarks only", "add --benchmark FILE, or leave it out")
    for name, default in (("max_new_tokens", 512), ("temperature", 0.7), ("top_p", 0.95)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return generation_settings(args)


def generation_settings(args):
    """Generation flags checked before any model loads (a temperature of 0 used to hang `infer --sample`)."""
    import math

    from medsft.generate import Settings

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
        try:  # accelerate's options are accelerate's to parse (medsft/accelerate_launch.py)
            from medsft.accelerate_launch import run

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
        from medsft.adapter import check_adapter_dir

        adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import, like every check below
        if args.command == "infer":
            from medsft.infer import check_output, read_questions, run_infer

            settings = generation_settings(args)
            questions = read_questions(args.file) if args.file else None
            output = check_output(args.output) if args.output else None
            quiet_libraries()
            run_infer(adapter, question=args.question, questions=questions, output=output,
                      use_adapter=not args.no_adapter, settings=settings)
        elif args.command == "eval" and args.benchmark:
            from pathlib import Path

            from medsft.benchmark import DEFAULT_PROMPT, read_benchmarks
            from medsft.benchmark_report import check_output_dir
            from medsft.evaluate import run_benchmark

            settings = benchmark_settings(args)
            items = read_benchmarks(args.benchmark, args.limit)
            output_dir = check_output_dir(args.output_dir or Path(adapter) / "benchmark")
            quiet_libraries()
            run_benchmark(adapter, items, settings=settings, prompt=args.prompt or DEFAULT_PROMPT,
                          samples=args.samples or 1, engine=args.engine or "transformers", with_base=not args.no_base,
                          output_dir=output_dir, files=args.benchmark)
        elif args.command == "eval":
            from medsft.evaluate import run_eval

            settings = test_split_settings(args)
            if args.max_generations < 0:
                raise MedsftError(f"--max-generations must be ≥ 0 (got {args.max_generations})", "use e.g. 20")
            quiet_libraries()
            run_eval(adapter, max_generations=args.max_generations, settings=settings, with_base=not args.no_base)
        else:
            from medsft.merge import check_merge_output, run_merge

            check_merge_output(adapter, args.out_dir)
            quiet_libraries()
            say(f"merged model saved to {run_merge(adapter, args.out_dir)}")
        return 0

    if args.command == "score":
        from pathlib import Path

        from medsft.benchmark import read_benchmarks, read_predictions, run_score
        from medsft.benchmark_report import check_output_dir

        items = read_benchmarks(args.files)
        outputs = read_predictions(args.predictions, items)
        pred = Path(args.predictions).expanduser()
        output_dir = check_output_dir(args.output_dir or pred.with_name(f"{pred.stem}-score"))
        run_score(items, outputs, files=args.files, predictions=pred, output_dir=output_dir)
        return 0

    from medsft.recipe_files import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # before any heavy import
    if args.command == "train":
        from medsft.checkpoints import check_resume_argument
        from medsft.launch import from_env
        from medsft.placement import decide

        try:  # impossible launch combinations, in milliseconds (the GPU count does not matter for them)
            decide(from_env(cuda=True, num_gpus=1), bits=recipe.quantization.bits, dtype=recipe.model.dtype,
                   forced_device_map=recipe.model.device_map)
        except MedsftError as err:
            raise err.at(recipe.source_file)
        check_resume_argument(args.resume)
        quiet_libraries()
        from medsft.train import run

        run(recipe, resume=args.resume, force=args.force)
        return 0
    if args.command == "preflight":
        from medsft.launch import from_accelerate_config, from_env
        from medsft.preflight import run_preflight
        from medsft.runspec import resolve

        if args.num_gpus is not None and args.num_gpus < 1:
            raise MedsftError(f"--num-gpus must be at least 1 (got {args.num_gpus})", "pass the number of processes")
        if args.gpu_memory:
            from medsft.preflight import parse_size

            parse_size(args.gpu_memory)  # before reading any model config
        if args.accelerate_config:
            launch = from_accelerate_config(args.accelerate_config, args.num_gpus)
        else:  # inside a launch, the variables accelerate exported describe it; else one GPU (or --num-gpus)
            launch = from_env(cuda=True, num_gpus=args.num_gpus or 1)
            if args.num_gpus and launch.world_size == 1 and args.num_gpus > 1:
                launch = from_env({"WORLD_SIZE": str(args.num_gpus)}, cuda=True, num_gpus=args.num_gpus)
        _, verdict, _ = run_preflight(resolve(recipe, launch, kernels="off"), gpu_memory=args.gpu_memory)
        if verdict == "won't fit":
            raise MedsftError("the estimate does not fit in device memory", "apply one of the changes listed above",
                              recipe.source_file)
        return 0
    if args.command == "data":
        quiet_libraries()
        from medsft.inspect_data import show

        show(recipe, limit=args.limit, split=args.split, as_json=args.json)
        return 0
    raise AssertionError(args.command)


def quiet_libraries() -> None:
    """Silence start-up chatter that tells the user nothing (called after the recipe validated); on
    non-main ranks, library warnings too: each rank would print the same ones."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # datasets.map forks after tokenizing
    # bitsandbytes on AVX512-BF16 CPUs tries an optional hub kernel at import and warns without it
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
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
