"""`medsft infer ADAPTER`: one question, a JSONL file of them, or interactive (medsft/evaluation/infer.py)."""

from __future__ import annotations


def run(args) -> int:
    from medsft.adapter.load import check_adapter_dir
    from medsft.commands.common import generation_settings, quiet_libraries
    from medsft.evaluation.infer import check_output, read_questions, run_infer

    adapter = check_adapter_dir(args.adapter_dir)  # before any heavy import, like every check below
    settings = generation_settings(args)
    questions = read_questions(args.file) if args.file else None
    output = check_output(args.output) if args.output else None
    quiet_libraries()
    try:
        run_infer(adapter, question=args.question, questions=questions, output=output,
                  use_adapter=not args.no_adapter, settings=settings)
    except KeyboardInterrupt:
        import sys

        print("\nmedsft infer: interrupted", file=sys.stderr)
        return 130
    return 0
