"""Run manifest and atomic directory writes.

Why: a directory that exists under its final name must always be complete (a crash mid-save must not
leave a half adapter that `infer` then loads), so outputs are written to a temporary sibling and
renamed into place. The manifest records what actually ran (versions, launch, placement, data
fingerprint, split sizes) so a result can be reproduced and audited; it never contains environment
variables, so tokens cannot leak into it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from medsft.errors import MedsftError
from medsft.versions import package_versions, untested_versions

def git_commit(cwd: str | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


@contextmanager
def atomic_dir(final: str | os.PathLike, kind: str | None = None):
    """Yield a temporary sibling directory; on success it replaces `final` in one rename (with `kind`: only
    a directory holding nothing but what medsft wrote, medsft/io/ownership.py). On an exception the temporary
    directory is removed and `final` is untouched. A symlinked `final` is written through: the temporary
    directory sits beside the link's target (same filesystem) and the link stays."""
    from medsft.io.ownership import follow

    final = follow(Path(final), str(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final, kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, final: Path, kind: str | None = None) -> None:
    """Put `src` at `final`, replacing an existing directory with at most a moment where neither exists.
    With `kind`, `final` is replaced only if everything in it is medsft's (medsft/io/ownership.py), checked
    again here; an earlier medsft's directory (no file list) only by one that has each of its names. A
    symlink is followed (its target is replaced, the link kept); a mount point has its contents replaced."""
    from medsft.io.ownership import MARKER, check_ours, follow, marker

    final = follow(Path(final), str(final))
    if kind is not None:
        check_ours(final, kind, str(final))
        found = marker(final) if final.is_dir() else None
        if found and found.get("legacy"):
            new = {p.name for p in Path(src).iterdir()} | {MARKER}
            extra = sorted(p.name for p in final.iterdir() if p.name not in new)
            if extra:
                raise MedsftError(f"{str(final)!r} holds files the new {kind} does not have "
                                  f"({', '.join(extra[:3])}{' …' if len(extra) > 3 else ''})",
                                  f"move them out of {str(final)!r}, then run again")
    if final.exists() and os.path.ismount(final):
        for old in list(final.iterdir()):  # a mount point cannot be renamed: replace what it holds
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for new in list(Path(src).iterdir()):
            shutil.move(new, final / new.name)  # the mount is another filesystem
    elif final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def manifest(**fields) -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "versions_not_tested": untested_versions(),  # {} when every package is the tested set's (medsft/versions.py)
        "git_commit": git_commit(),
        **fields,
    }


def check_writable_dir(out: Path, name: str) -> None:
    """A directory we can create or write: not a file, not inside a file, not read-only."""
    if out.exists() and not out.is_dir():
        raise MedsftError(f"{name} {str(out)!r} is a file", f"choose a directory path for {name}")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MedsftError(f"{name} {str(out)!r} is inside {str(ancestor)!r}, which is a file",
                          f"choose a directory path for {name}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MedsftError(f"{name} {str(out)!r} is not writable ({str(ancestor)!r} is read-only)",
                          f"choose a writable location for {name}")
