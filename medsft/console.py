"""The one output path of every medsft process: rank-aware, plain lines in logs, rich on a terminal.

Why: under DDP/ZeRO/FSDP every rank runs the same code, and eight copies of each notice (or eight
half-drawn progress bars) make a Slurm log unreadable. So the main process speaks and the others are
silent; an error is said once per node, by the first rank that finds it. Messages go to stdout (progress, results) or stderr
(notices, errors); `rich` renders on a terminal and writes plain text, with no control codes, when the
output is a file or a pipe.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def rank() -> int:
    """This process's global rank as the launcher exported it (accelerate, torchrun, Slurm via them)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """The one rank check of medsft: the process that prints and writes shared files."""
    return rank() == 0


def say(message: str) -> None:
    """A line of progress or results on stdout, from the main process only."""
    if is_main():
        print(message, flush=True)


def notice(message: str) -> None:
    """`notice: …` on stderr, from the main process only: something the user should know, not an error."""
    if is_main():
        print(f"notice: {message}", file=sys.stderr, flush=True)


def error(line: str) -> None:
    """`error: …` on stderr, once per node. Every rank finds the same bad input; the main rank cannot be the one
    to say it, because the launcher stops the other ranks as soon as the first one exits (and that may be
    before rank 0 got this far). So the first local rank to get here says it, and the others stay quiet."""
    if first_to_say(line):
        print(f"error: {line}", file=sys.stderr, flush=True)


def first_to_say(line: str) -> bool:
    """True in a single process; under a launcher, for the first local rank to claim `line`
    (medsft/io/process.py)."""
    from medsft.io.process import first_claim

    try:
        alone = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1) <= 1
    except ValueError:  # a malformed variable is what is being said (medsft/launch/detect.py env_int)
        alone = True
    if alone:
        return True
    claimed = first_claim(line)
    return is_main() if claimed is None else claimed


def rich_console(stderr: bool = False) -> Console:
    """A rich Console for tables and live views; quiet on non-main ranks."""
    from rich.console import Console

    return Console(stderr=stderr, quiet=not is_main())
