"""What several commands share: generation flags checked before any model loads, and the libraries' start-up
chatter silenced once the input is known good."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from medsft.commands.arguments import BENCHMARK_ONLY
from medsft.errors import MedsftError

if TYPE_CHECKING:
    from argparse import Namespace

    from medsft.evaluation.generate import Settings
    from medsft.recipe.schema import Recipe


def benchmark_settings(args: Namespace) -> Settings:
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


def test_split_settings(args: Namespace) -> Settings:
    """`eval` without --benchmark: the held-out split's generation defaults (generate.Settings: greedy)."""
    given = [f"--{name.replace('_', '-')}" for name in BENCHMARK_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise MedsftError(f"{given[0]} applies to benchmarks only", "add --benchmark FILE, or leave it out")
    from medsft.evaluation.generate import Settings

    for name in ("max_new_tokens", "temperature", "top_p"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(Settings(), name))
    return generation_settings(args)


def generation_settings(args: Namespace) -> Settings:
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


def finish(code: int) -> int:
    """The end of a command every rank of a launch reaches together (a training that saved its adapter, or
    its preemption checkpoint): settle the process groups; with peers, run the exit handlers, flush, and end
    the process here, without interpreter finalization (why: upstream.settle_process_groups). Alone: `code`."""
    import atexit

    from medsft.upstream import settle_process_groups

    if not settle_process_groups():
        return code
    atexit._run_exitfuncs()  # what finalization would have run first: logging's flush, libraries' own ends
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def check_hub(recipe: Recipe, pushing: bool = True) -> None:
    """Every hub id the recipe names, checked before anything loads: a gated, misspelled or unreachable model
    or dataset is one line in seconds, not a traceback after the data stage (medsft/hub.py). `pushing`: the
    command trains, so `training.push_to_hub` will push at its end."""
    from medsft import hub
    from medsft.data.mixture import sources_of
    from medsft.recipe.data_section import DATA_SUFFIXES

    hub.check_available(recipe.model.name, "model", recipe.model.revision, "model.name")
    for src in sources_of(recipe.data):
        if not src.source.lower().endswith(DATA_SUFFIXES):
            hub.check_available(src.source, "dataset", src.revision, src.where)
    if pushing and recipe.training.push_to_hub:
        hub.check_push(recipe.training.hub_model_id)
