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


IDENTITY = "medsft-run.json"  # the identity of the run that wrote a checkpoint (RunSpec.identity)


def is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last; a checkpoint is complete once it parses and the weights and
    states it names are readable (an empty, truncated or weightless checkpoint is not)."""
    import zipfile

    checkpoint = Path(checkpoint)
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = checkpoint / "adapter_model.safetensors"
    sharded = any(checkpoint.glob("global_step*")) or any(checkpoint.glob("pytorch_model_fsdp*"))
    if weights.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as fh:
                list(fh.keys())
        except Exception:  # safetensors raises its own error types for a damaged file
            return False
    elif not sharded:
        return False
    for state in [*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]:  # torch.save writes zip archives
        try:
            with zipfile.ZipFile(state) as archive:
                if archive.testzip() is not None:
                    return False
        except (OSError, zipfile.BadZipFile):
            return False
    return True


def identity_of(checkpoint: Path) -> dict | None:
    try:
        return json.loads((Path(checkpoint) / IDENTITY).read_text())
    except (OSError, ValueError):
        return None


def changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """`key old → new` for every leaf that differs between two identities."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} → {b!r}")
    return out


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


def resume_point(resume: str, output_dir: str, identity: dict | None = None) -> str | None:
    """The checkpoint to continue from, or None to start over. With the run's `identity`, auto-resume
    refuses a checkpoint another recipe wrote (it would continue a different training silently), and an
    explicit PATH continues with a notice listing what changed."""
    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        if not done:
            return None
        newest, theirs = done[-1], identity_of(done[-1])
        if identity is not None and theirs is not None and theirs != identity:
            changed = changes(theirs, identity)
            raise MedsftError(f"output.dir {output_dir!r} holds a checkpoint of a different run (changed: "
                              f"{'; '.join(changed[:6])}{' …' if len(changed) > 6 else ''})",
                              f"pass --resume never to start over, choose a new output.dir, or --resume {newest} "
                              "to continue from it anyway")
        return str(newest)
    check_resume_argument(resume)
    theirs = identity_of(Path(resume))
    if identity is not None and theirs is not None and theirs != identity:
        notice(f"continuing from {resume} although the run changed: {'; '.join(changes(theirs, identity))}")
    return resume

