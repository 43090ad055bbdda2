"""Two training processes taking turns, one optimizer step each, through a pair of pipes.

Why: medsft's per-step overhead against plain TRL is a few percent, and this shared 2-core VM drifts by ±10%
between identical runs; two trainers stepping in turns are timed seconds apart, so a slow moment of the
machine slows both alike. In two processes, the baseline's holds nothing of medsft. Used by bench/cpu.py
(which makes the pipes) and bench/bare_trl.py; imports only transformers.
"""

from __future__ import annotations

import os
import time
from typing import Any


def baton_callback(read_fd: int, write_fd: int) -> Any:
    """A TrainerCallback, added last: at each step's start it hands the turn to the other process and waits
    for it back; a step's cycle (this step's start to the next's, the wait excluded) covers every other
    callback's work, logging and data loading. When the other process has ended (its pipe closed), it stops
    waiting."""
    from transformers import TrainerCallback

    class Turn(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.cycles: list[float] = []
            self.other_done = False

        def hand_over(self) -> None:
            try:
                os.write(write_fd, b"x")
            except BrokenPipeError:
                self.other_done = True

        def wait(self) -> None:
            if not self.other_done and os.read(read_fd, 1) == b"":
                self.other_done = True

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.start is not None:
                self.cycles.append(time.perf_counter() - self.start)
                self.hand_over()
            self.wait()
            self.start = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.hand_over()  # the last step's cycle would hold the end of training: not counted
            os.close(write_fd)

    return Turn()
