"""Graceful preemption: SIGTERM/SIGUSR1 → finish the step, checkpoint, exit 75 (EX_TEMPFAIL).

Why: Slurm sends a signal before the time limit (`--signal`) and on `scontrol requeue`/preemption.
Losing up to `save_steps` of GPU time at every preemption is expensive, so the first signal turns into
a checkpoint at the end of the current optimizer step; all ranks agree on that step through one
all-reduce per step (a rank that saw the signal a moment later would otherwise train on alone and
hang the collective save). The process then exits with EXIT_PREEMPTED, which launch/*.sbatch turns into
a requeue; the rerun resumes from that checkpoint (`--resume auto`). A second signal exits at once:
checkpoints are only taken as complete once their trainer_state.json parses, so nothing half-written
is ever resumed from.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from medsft.console import notice

if TYPE_CHECKING:
    from types import FrameType

    from transformers import TrainerControl, TrainerState, TrainingArguments

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" — the sbatch scripts requeue on it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False
        self.stopped_for_signal = False
        self._previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}

    def install(self) -> PreemptionCallback:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second signal: stop now
            print(f"medsft: second {signal.Signals(signum).name}: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = True
        notice(f"{signal.Signals(signum).name} received: checkpointing after this step")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if self._any_rank_requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_for_signal = True
        return control

    def _any_rank_requested(self) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0],
                            device="cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
