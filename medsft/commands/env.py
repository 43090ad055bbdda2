"""`medsft env`: the block a bug report needs (as `trl env`, `accelerate env`), as Markdown to paste."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import Namespace


def run(args: Namespace) -> int:
    from medsft.versions import environment

    print("Copy-and-paste the text below in your GitHub issue.\n")
    for name, value in environment():
        print(f"- {name}: {value}")
    return 0
