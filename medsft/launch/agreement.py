"""Checks one process makes for all the ranks of a launch.

Why: a check only the main process runs (the data stage, the disk's room, a lock) must stop every rank when it
refuses. A rank left waiting in a collective for a main process that exited dies with a gloo/NCCL traceback
and exit status 1, and the launcher may report that instead of the one `error:` line and status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from medsft.errors import MedsftError

T = TypeVar("T")


def main_decides(check: Callable[[], T]) -> T | None:
    """`check()` on the main process; a MedsftError it raises is raised on every rank, with the same line.
    Returns its value on the main process, None on the others. Every rank calls it: with a process group
    it is a collective (the others wait for the main process's outcome)."""
    import torch.distributed as dist

    from medsft.console import is_main

    value: T | None = None
    refusal: MedsftError | None = None
    if is_main():
        try:
            value = check()
        except MedsftError as err:
            refusal = err
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        said = [refusal.line() if refusal is not None else None]
        dist.broadcast_object_list(said, src=0)
        if said[0] is not None and refusal is None:
            refusal = MedsftError(said[0])
    if refusal is not None:
        raise refusal
    return value
