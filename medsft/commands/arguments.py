"""The command line's grammar: every `medsft` command and its options (argparse).

Why its own module: `medsft launch` parses the medsft command it starts with the same parser as `medsft`
itself, and the launcher sits below the CLI that dispatches to it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXAMPLES = """\
examples:
  medsft train recipes/tiny-cpu.yaml
  medsft train recipes/qwen3-0.6b.yaml --set training.learning_rate=1e-4 --set lora.rank=32
  accelerate launch --config_file accelerate_configs/ddp.yaml -m medsft train recipes/qwen3-0.6b.yaml
  medsft data recipes/tiny-cpu.yaml --limit 2
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are medsft's one `error:` line (exit 2), naming the command's --help, instead
    of a usage block and a second line. Subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        from medsft.errors import MedsftError

        raise MedsftError(message, f"see `{self.prog} --help`", self.prog)


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/), or the notebook's flat config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, e.g. --set training.learning_rate=1e-4 (repeatable)")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = OneLineParser(prog="medsft", description="QLoRA SFT for medical reasoning (TRL + PEFT + bitsandbytes).",
                                epilog=EXAMPLES, formatter_class=fmt)
    from importlib import metadata

    try:
        version = metadata.version("medsft")
    except metadata.PackageNotFoundError:
        version = "not installed"
    p.add_argument("--version", action="version", version=f"medsft {version}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a LoRA adapter from a recipe", formatter_class=fmt,
                       epilog="example:\n  medsft train recipes/tiny-cpu.yaml --set training.num_train_epochs=2")
    add_recipe_args(t)
    t.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                   help="auto (default): continue from the newest complete checkpoint in output.dir")
    t.add_argument("--force", action="store_true", help="train even if the memory preflight says it won't fit")

    sub.add_parser("launch", help="accelerate launch, with medsft's checks first and the workers' exit status",
                   usage="medsft launch [accelerate launch options] train RECIPE [--set KEY=VALUE …] [--resume …]",
                   description="Runs `accelerate launch -m medsft train …` after checking the recipe and the accelerate "
                   "config together (one `error:` line, exit 2, before any worker starts), and exits with the "
                   "workers' status (75 when preempted: the same command resumes).",
                   formatter_class=fmt, epilog="examples:\n  medsft launch --config_file accelerate_configs/ddp.yaml "
                   "--num_processes 2 train recipes/tiny-cpu.yaml\n  medsft launch --config_file "
                   "accelerate_configs/zero3.yaml train recipes/llama3.1-8b.yaml --set training.max_steps=100\n\n"
                   "Everything before `train` goes to accelerate launch: see `accelerate launch --help` for its "
                   "options\n(--config_file, --num_processes, --num_machines, --machine_rank, --main_process_ip, …). "
                   "After `train`: `medsft train --help`.")
    sub.add_parser("env", help="the versions and machine facts a bug report needs (Markdown)", formatter_class=fmt)

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
    i.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    i.add_argument("--no-adapter", action="store_true", help="answer with the base model alone")
    add_generation_args(i)

    e = sub.add_parser("eval", help="evaluate an adapter on its run's held-out test split, or on benchmark files",
                       formatter_class=fmt,
                       epilog="examples:\n  medsft eval runs/tiny-cpu/adapter --max-generations 40\n"
                              "  medsft eval runs/x/adapter --benchmark eval_data.json   # MedQA, MedMCQA, ...\n"
                              "  accelerate launch --config_file accelerate_configs/ddp.yaml -m medsft eval "
                              "runs/x/adapter --benchmark eval_data.json")
    e.add_argument("adapter_dir")
    e.add_argument("--max-generations", type=int, metavar="N",
                   help="test rows to generate for (default 20); with --benchmark, the first N items (default all)")
    e.add_argument("--no-base", action="store_true", help="skip the base-model comparison")
    e.add_argument("--output-dir", metavar="DIR", help="where the results go (default: the adapter's run directory, "
                   "eval/ for the test split and eval/benchmark/ for benchmarks; never inside the adapter)")
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

    sl = sub.add_parser("slurm", help="the Slurm job script for a training: resources, processes, command (a dry run)",
                        formatter_class=fmt,
                        description="Prints the job script that asks Slurm for the resources and runs the training on "
                        "every node (and the same as an sbatch line with the shipped launch/*.sbatch); where Slurm is "
                        "installed, `sbatch --test-only` checks it. --submit submits it. Run from the repository root.",
                        epilog="examples:\n  medsft slurm recipes/llama3.1-8b.yaml --config accelerate_configs/zero3.yaml "
                               "--nodes 2 --gpus-per-node 8\n  medsft slurm recipes/qwen3-0.6b.yaml --config "
                               "accelerate_configs/ddp.yaml --gpus-per-node 4 --time 4:00:00 --partition gpu --submit\n"
                               "  medsft slurm recipes/llama3.1-8b.yaml --config accelerate_configs/zero3.yaml > job.sbatch")
    add_recipe_args(sl)
    sl.add_argument("--config", required=True, metavar="ACCELERATE_CONFIG", help="e.g. accelerate_configs/zero3.yaml")
    sl.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    sl.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of each node, one process each (default 8)")
    sl.add_argument("--cpus-per-task", type=int, help="CPUs of each node's task (default 8 per GPU)")
    sl.add_argument("--mem", default="0", help="memory of each node, e.g. 256G (default 0: all of it)")
    sl.add_argument("--time", default="24:00:00", help="time limit, e.g. 24:00:00 or 2-00:00:00 (default 24:00:00): "
                    "medsft checkpoints 5 minutes before it and the job requeues itself")
    sl.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    sl.add_argument("--account", help="Slurm account (default: yours)")
    sl.add_argument("--submit", action="store_true", help="submit the job (sbatch) instead of printing its script")
    sl.add_argument("--wait", action="store_true", help="with --submit: wait for the job and exit with its status")

    d = sub.add_parser("data", help="show what is trained: rows kept, lengths, trained spans", formatter_class=fmt,
                       epilog="examples:\n  medsft data recipes/tiny-cpu.yaml --limit 2\n"
                              "  medsft data recipes/tiny-cpu.yaml --json > examples.jsonl")
    add_recipe_args(d)
    d.add_argument("--limit", type=int, default=None, help="examples to show (default 3; --json: all)")
    d.add_argument("--split", default="train", choices=["train", "validation", "test"])
    d.add_argument("--json", action="store_true", help="one JSON object per example (input_ids, labels) on stdout")
    return p


def add_generation_args(p: argparse.ArgumentParser) -> None:
    from medsft.evaluation.generate import Settings

    default = Settings()
    p.add_argument("--max-new-tokens", type=int, default=default.max_new_tokens)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=default.temperature)
    p.add_argument("--top-p", type=float, default=default.top_p)


def add_benchmark_args(e: argparse.ArgumentParser) -> None:
    from medsft.evaluation.generate import PAPERS

    b = e.add_argument_group(f"benchmarks (with --benchmark; the papers' sampling: T {PAPERS.temperature}, top-p "
                             f"{PAPERS.top_p}, {PAPERS.max_new_tokens:,} new tokens)")
    b.add_argument("--benchmark", action="append", metavar="FILE",
                   help="MC items {question, options, answer_idx, source} as a JSON list, JSONL or {source: [items]} "
                        "(repeatable)")
    b.add_argument("--greedy", action="store_true", help="greedy decoding instead of the papers' sampling")
    b.add_argument("--seed", type=int, help=f"sampling seed (default {PAPERS.seed}; batch k uses seed + k)")
    b.add_argument("--samples", type=int, help="generations per item (default 1; accuracy averages them)")
    b.add_argument("--prompt", choices=("huatuo", "huatuo-strict", "medsft"),
                   help="how items are posed (default huatuo: HuatuoGPT-o1's evaluation prompt)")
    b.add_argument("--engine", choices=("transformers", "vllm"), help="default transformers; vllm needs a GPU")
    b.add_argument("--batch-size", type=int, help="prompts per generate call (default 8)")
    b.add_argument("--limit", type=int, metavar="N", help="only the first N items of each source")
    # the test split keeps Settings' defaults (greedy unless --sample); benchmarks take the papers'
    e.set_defaults(max_new_tokens=None, temperature=None, top_p=None)


BENCHMARK_ONLY = ("greedy", "seed", "samples", "prompt", "engine", "batch_size", "limit")
