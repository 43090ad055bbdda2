"""Which checkpoint a run continues from: the rules of resuming, in one place.

Why: `--resume auto` must never pick a half-written checkpoint (Trainer writes trainer_state.json last,
so a checkpoint is complete once it parses), and `--resume PATH` must be checked before anything heavy
is imported. Both the CLI and training read these rules from here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medsft.console import notice
from medsft.errors import MedsftError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last; a checkpoint is complete once it parses."""
    try:
        json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Checkpoints whose save finished, oldest first; incomplete ones are skipped with a notice."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            if is_complete(child):
                found.append((int(match.group(1)), child))
            else:
                notice(f"skipping incomplete checkpoint {child}")
    return [path for _, path in sorted(found)]


def check_resume_argument(resume: str) -> None:
    """`--resume auto|never|PATH`: a PATH must be a complete checkpoint (checked before any heavy import)."""
    if resume not in ("auto", "never") and not is_complete(Path(resume)):
        raise MedsftError(f"--resume {resume!r} is not a complete checkpoint directory",
                          "pass a checkpoint-N directory with trainer_state.json, or --resume auto")


def resume_point(resume: str, output_dir: str) -> str | None:
    """The checkpoint to continue from, or None to start over."""
    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return str(done[-1]) if done else None
    check_resume_argument(resume)
    return resume
