"""What medsft owns on disk: markers on the directories it writes, and one lock per run directory.

Why: an atomic rename that replaces a directory also deletes whatever was there. `output.adapter_dir:
runs` once deleted every other run, `medsft merge run/adapter run` a run's checkpoints, `output.dir: .`
overwrote a project's README with a model card, and two trainings into one directory both "succeeded".
So every directory medsft creates carries a marker (`.medsft.json`: what it is, when, by which version);
a directory is replaced or written into only when it is absent, empty, or carries medsft's marker of
the same kind, and a run directory is locked while a training uses it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from medsft.errors import MedsftError

MARKER = ".medsft.json"
LOCK = ".medsft.lock"
KINDS = ("run", "adapter", "merged")


def marker(directory: Path) -> dict | None:
    """medsft's marker of a directory, or None. A medsft adapter or run written before markers existed
    is recognised by its manifest (versions + placement) so upgrading never orphans earlier work."""
    directory = Path(directory)
    try:
        found = json.loads((directory / MARKER).read_text())
        return found if isinstance(found, dict) and found.get("kind") in KINDS else None
    except (OSError, ValueError):
        pass
    for kind, manifest in (("adapter", directory / "manifest.json"), ("run", directory / "adapter" / "manifest.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and "versions" in m and "placement" in m:
            return {"kind": kind, "legacy": True}
    if (directory / "metrics.jsonl").is_file() and any(directory.glob("checkpoint-*/trainer_state.json")):
        return {"kind": "run", "legacy": True}  # a run of an earlier medsft, interrupted before its adapter
    return None


def mark(directory: Path, kind: str, **info) -> None:
    from medsft.outputs import package_versions, write_json

    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "medsft": package_versions().get("medsft", "dev"), **info})


def check_ours(path: Path, kind: str, name: str) -> None:
    """`path` may be created, written into or replaced by medsft: absent, an empty directory, or one that
    carries medsft's marker of this kind. Anything else belongs to the user."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise MedsftError(f"{name} {str(path)!r} is a file", f"choose a directory path for {name}")
    if not any(path.iterdir()):
        return
    found = marker(path)
    if found is None:
        raise MedsftError(f"{name} {str(path)!r} holds files medsft did not write",
                          f"choose a new directory for {name} (medsft only replaces what it wrote)")
    if found["kind"] != kind:
        raise MedsftError(f"{name} {str(path)!r} is a medsft {found['kind']} directory, not a {kind} one",
                          f"choose another directory for {name}")


def contains(outer: Path, inner: Path) -> bool:
    """`inner` is `outer` or lies inside it (paths resolved, the directories need not exist)."""
    outer, inner = Path(outer).resolve(), Path(inner).resolve()
    return inner == outer or outer in inner.parents


class RunLock:
    """`<output.dir>/.medsft.lock` while a training runs (main process only). Created exclusively; a lock
    left by a dead process on this host is taken over, one from another host is reported with its owner."""

    def __init__(self, directory: Path, command: str = "medsft train"):
        self.path = Path(directory) / LOCK
        self.command = command
        self.held = False
        self.created = False

    def check(self) -> None:
        """Refuse now if another live run holds the directory (read-only: nothing is created)."""
        if self.path.exists():
            owner = self.owner()
            if not (owner and owner.get("host") == socket.gethostname() and not alive(owner.get("pid"))):
                who = (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}" if owner
                       else "an unreadable lock")
                raise MedsftError(f"output.dir {str(self.path.parent)!r} is in use by another medsft run ({who})",
                                  f"wait for it, or choose another output.dir (if that run is dead, delete {self.path})")

    def __enter__(self):
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": self.command}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()  # a live owner: refused here
                from medsft.console import notice

                notice(f"taking over {self.path}: its process {(self.owner() or {}).get('pid')} is gone")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise MedsftError(f"could not lock {self.path}", "retry")

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        if self.created and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that failed before writing anything leaves nothing behind


def alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # exists but not ours, or unreadable: assume alive
    return True
