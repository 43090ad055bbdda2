"""`medsft infer ADAPTER`: one question, a JSONL file of them, or interactive (medsft/evaluation/infer.py). The
answer is printed once: token by token on a terminal, whole when the output is piped."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path

    from medsft.evaluation.generate import Settings


def run(args: Namespace) -> int:
    from medsft.adapter.load import check_adapter_dir
    from medsft.commands.common import generation_settings, quiet_libraries
    from medsft.evaluation.infer import check_output, read_questions

    adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import, like every check below
    settings = generation_settings(args)
    questions = read_questions(args.file) if args.file else None
    output = check_output(args.output, args.overwrite) if args.output else None
    quiet_libraries()
    try:
        return answer(adapter, args, settings, questions, output)
    except KeyboardInterrupt:
        print("\nmedsft infer: interrupted", file=sys.stderr)
        return 130


def answer(adapter: Path, args: Namespace, settings: Settings, questions: list[str] | None, output: Path | None
           ) -> int:
    from medsft.adapter.load import load_for_inference
    from medsft.console import rich_console
    from medsft.evaluation.infer import answer_batch, answer_one, jsonl, write_answers
    from medsft.views import item_progress

    loaded = load_for_inference(adapter, use_adapter=not args.no_adapter)
    if questions is not None:
        records = answer_batch(loaded, questions, settings, progress=item_progress)
        if output is None:
            sys.stdout.write(jsonl(records))
        else:
            write_answers(records, output, overwrite=args.overwrite)
        return 0
    console, status = rich_console(), rich_console(stderr=True)
    live = console.is_terminal

    def show(piece: str, thinking: bool) -> None:
        if live:
            console.print(piece, end="", style="dim" if thinking else "bold", markup=False, highlight=False)

    asks = [args.question] if args.question else None
    while True:
        if asks is not None:
            if not asks:
                return 0
            question = asks.pop(0)
        else:
            try:
                question = console.input("[bold cyan]question>[/bold cyan] ")
            except EOFError:
                return 0
            if not question.strip():
                return 0
        r = answer_one(loaded, question, settings, show)
        if live:
            console.print()
        else:
            console.print(r["text"], markup=False, highlight=False, soft_wrap=True)
        more = "" if r["stopped"] else ", stopped at --max-new-tokens"
        status.print(f"({r['tokens']} tokens, {r['seconds']:.1f}s{more}"
                     f"{'' if r['answer'] else '; no answer after the reasoning'})", style="dim")
