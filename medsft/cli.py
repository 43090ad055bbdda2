"""`medsft COMMAND …` (also `python -m medsft`): the table of commands, nothing else.

Each command lives in medsft/commands/ and is imported only when it runs, so `--help` and the quick commands
stay quick; a MedsftError from any of them is one `error:` line and exit 2.
"""

from __future__ import annotations

import sys

COMMANDS = {  # name -> module of medsft/commands with run(args) -> int
    "train": "train", "launch": "launch", "preflight": "preflight", "data": "data", "infer": "infer",
    "eval": "eval", "score": "score", "merge": "merge", "env": "env", "slurm": "slurm",
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    from medsft.console import error
    from medsft.errors import EXIT_USAGE, MedsftError

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["launch"] and not {"-h", "--help"} & set(argv[1:2]):
            from medsft.commands.launch import run  # accelerate's options are accelerate's to parse

            return run(argv[1:])
        from medsft.commands.arguments import parser

        args = parser().parse_args(argv)
        return importlib.import_module(f"medsft.commands.{COMMANDS[args.command]}").run(args)
    except MedsftError as err:
        error(err.line())
        return EXIT_USAGE
