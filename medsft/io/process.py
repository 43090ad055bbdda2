"""Process identity: is a process alive, when did it start, and which of several processes says a line first.

Why: a pid alone is reused by the system; (pid, start time) names one process for good. The run lock, the
claims of `console.error` and a launch's parent all need that, written once here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from medsft.io.hashing import text_digest


def process_start(pid: Any) -> str | None:
    """When a process started (clock ticks since boot, /proc), to tell a reused pid from the one recorded. `pid`:
    as recorded (a lock's JSON); one that is not a number reads as unknown."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime
    except (OSError, ValueError, IndexError, TypeError):
        return None


def alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True  # exists but not ours, or unreadable: assume alive
    return True


def first_claim(line: str) -> bool | None:
    """True for the first of the processes started by the same parent to claim `line`, False for the others;
    None where no claim can be made (an unwritable temporary directory). The claim is a file created
    exclusively, named after the parent process (pid and start time, so never a stale one)."""
    parent = os.getppid()
    claim = Path(tempfile.gettempdir()) / f"medsft-said-{parent}-{process_start(parent) or 0}-{text_digest(line)[:16]}"
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False
    except OSError:
        return None
