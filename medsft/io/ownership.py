"""What medsft owns on disk: markers that list what it wrote, and one lock per run directory.

Why: an atomic rename that replaces a directory also deletes whatever was there. `output.adapter_dir:
runs` once deleted every other run, `medsft merge run/adapter run` a run's checkpoints, and a marker
alone proved only that medsft *made* a directory, not that everything in it is medsft's: a NOTES.md the
user added to an adapter, or a benchmark report inside it, went with the next save. So a directory medsft
replaces whole (an adapter, a merged model) carries a marker (`.medsft.json`) listing the files it wrote;
it is replaced only when every file in it is listed and unchanged, and a refusal names the others. A run
directory is never replaced, only written into under medsft's own names (checkpoint-N, metrics.jsonl,
rows_seen.json, the adapter), so its marker records which run (identity) rather than files; it is locked
while a training uses it.

How a file is recognised (`inventory`): by its content, the SHA-256 of every file whatever its size (a
same-size file of another run's weights put in place of one is not medsft's). Its size and modification
time are recorded beside the hash only so that an unchanged file is not hashed again: a file whose size and
mtime both still match is taken as unchanged; any other is hashed and compared. A copied adapter (`cp -r`,
rsync, scp: new mtimes) is therefore hashed once and still recognised.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsft.errors import MedsftError
from medsft.io.hashing import file_digest
from medsft.io.process import alive, process_start

MARKER = ".medsft.json"
LOCK = ".medsft.lock"
PROBE = ".medsft-probe-"  # a directory check_writable creates and removes at once (another rank may see it)
KINDS = ("run", "adapter", "merged")
# an earlier medsft's adapter/merged directory (its marker listed no files) is replaced only if it holds
# nothing but these names (PEFT, transformers and medsft write them), and only by a directory that has
# every one of its names (outputs.replace_dir): never trusted to delete a file medsft does not write
LEGACY_NAMES = {
    "adapter": r"adapter_config\.json|adapter_model\.(safetensors|bin)|README\.md|recipe\.yaml|manifest\.json"
               r"|test_ids\.json|training_args\.bin",
    "merged": r"config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
              r"|README\.md",
}
TOKENIZER_NAMES = (r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json"
                   r"|chat_template\.(jinja|json)|vocab\.(json|txt)|merges\.txt|[\w.-]+\.tiktoken")


def inventory(directory: Path) -> dict[str, list]:
    """Every entry under `directory` but medsft's marker and lock: relative path → [size, sha256, mtime_ns] for a
    file; ["link", target] for a symlink (not followed), ["other"] for anything else."""
    directory = Path(directory)
    out: dict[str, list] = {}
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in [*files, *[d for d in dirs if os.path.islink(os.path.join(root, d))]]:
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            if rel in (MARKER, LOCK) or rel.startswith(PROBE):
                continue
            out[rel] = inventory_one(path) or ["other"]
    return out


def inventory_one(path: Path) -> list | None:
    """One entry of `inventory`, or None when nothing is there."""
    if path.is_symlink():
        return ["link", os.readlink(path)]
    if not path.is_file():
        return ["other"] if path.exists() else None
    st = path.stat()
    return [st.st_size, file_digest(path), st.st_mtime_ns]


def matches(path: Path, entry: Any) -> bool:
    """`path` still holds what `entry` (an `inventory` entry) recorded: the same link, or the same bytes (a file
    whose size and mtime are unchanged is not hashed again). An entry without a hash (an earlier medsft's, for
    files over 32 MiB) cannot prove anything and never matches."""
    if not isinstance(entry, list) or not entry:
        return False
    if entry[0] == "link":
        return path.is_symlink() and ["link", os.readlink(path)] == entry
    if path.is_symlink() or not path.is_file() or len(entry) < 2 or not isinstance(entry[1], str):
        return False
    st = path.stat()
    if st.st_size != entry[0]:
        return False
    if len(entry) > 2 and st.st_mtime_ns == entry[2]:
        return True
    return file_digest(path) == entry[1]


def read_marker(directory: Path) -> dict | None:
    """The marker file's content as written (not verified), or None."""
    try:
        found = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("kind") in KINDS else None


def marker(directory: Path) -> dict | None:
    """medsft's marker of `directory` if it verifies, else None (a marker that does not verify is absent).
    A run's marker verifies when it names its run (identity); an adapter's or merged model's when every file
    it lists is there, unchanged. A directory written by an earlier medsft (marker without a file list, or
    none, and a manifest) is returned with `legacy: True`: recognised, never trusted to delete unknown files."""
    directory = Path(directory)
    found = read_marker(directory)
    if found is not None and found["kind"] == "run":
        return found if isinstance(found.get("identity"), dict) and found.get("created") else None
    if found is not None and isinstance(found.get("files"), dict):
        return found if not unverified(directory, found) else None
    for kind, manifest in (("adapter", directory / "manifest.json"), ("run", directory / "adapter" / "manifest.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and "versions" in m and "placement" in m:
            return {"kind": kind, "legacy": True}
    if (directory / "metrics.jsonl").is_file() and any(directory.glob("checkpoint-*/trainer_state.json")):
        return {"kind": "run", "legacy": True}  # a run of an earlier medsft, interrupted before its adapter
    if found is not None and found["kind"] == "merged" and isinstance(found.get("adapter"), str) \
            and (directory / "config.json").is_file():
        return {"kind": "merged", "legacy": True}  # an earlier medsft's merge (its marker named the adapter)
    return None


def unverified(directory: Path, found: dict) -> list[str]:
    """The files a marker lists that are missing or changed."""
    return [rel for rel, entry in (found.get("files") or {}).items() if not matches(Path(directory) / rel, entry)]


def mark(directory: Path, kind: str, **info: Any) -> None:
    """Write medsft's marker. An adapter or merged model is marked last, listing every file then in it."""
    from importlib import metadata

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        version = metadata.version("medsft")
    except metadata.PackageNotFoundError:
        version = "dev"
    body = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "medsft": version, **info}
    if kind != "run":
        body["files"] = inventory(directory)
    tmp = directory / f"{MARKER}.tmp-{os.getpid()}"  # atomic, like outputs.write_json (which imports this module)
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MARKER)


def few(names: Iterable[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def follow(path: Path, name: str) -> Path:
    """A symlinked directory is written through (the link stays, the directory it points to is used); a
    dangling link or a link to a file is refused."""
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        target = path.resolve()
    except (RuntimeError, OSError):  # ELOOP: RuntimeError up to Python 3.12, OSError from 3.13
        raise MedsftError(f"{name} {str(path)!r} is a symlink loop (it leads back to itself)",
                          f"remove the link {str(path)!r}, or choose another path for {name}") from None
    if not target.is_dir():
        raise MedsftError(f"{name} {str(path)!r} is a link to {str(target)!r}, which is not a directory",
                          f"create that directory, or choose another path for {name}")
    return target


def foreign(path: Path, kind: str) -> list[str]:
    """The entries of a directory medsft may not delete, for a directory of `kind` it would replace whole."""
    import re

    found = marker(path)
    here = inventory(path)
    if found is None:
        return list(here)
    if found.get("legacy"):
        allowed = re.compile(rf"^({LEGACY_NAMES.get(kind, '(?!)')}|{TOKENIZER_NAMES})$")
        return [rel for rel in here if not allowed.match(rel)]
    listed = found.get("files") or {}
    return [rel for rel in here if rel not in listed]


def check_ours(path: Path, kind: str, name: str) -> None:
    """`path` may be created, written into or replaced by medsft: absent, empty (medsft's lock aside), or
    carrying medsft's verified marker of this kind, and — for a directory replaced whole — holding only the
    files that marker lists. Anything else belongs to the user, and the refusal names a few of those files."""
    path = follow(Path(path), name)
    if not path.exists():
        return
    if not path.is_dir():
        raise MedsftError(f"{name} {str(path)!r} is a file", f"choose a directory path for {name}")
    if not any(p.name != LOCK and not p.name.startswith(PROBE) for p in path.iterdir()):
        return  # empty, or only the lock a killed run left (RunLock takes it over)
    raw, found = read_marker(path), marker(path)
    if found is not None and found["kind"] != kind:
        raise MedsftError(f"{name} {str(path)!r} is a medsft {found['kind']} directory, not a {kind} one",
                          f"choose another directory for {name}")
    if found is None and raw is not None and raw["kind"] == kind and isinstance(raw.get("files"), dict):
        changed = unverified(path, raw)
        raise MedsftError(f"{name} {str(path)!r} was written by medsft but has changed since ({few(changed)} "
                          "missing or modified), so medsft cannot tell its files from yours",
                          f"choose a new directory for {name}, or move your files out and delete it")
    if found is None:
        names = list(inventory(path)) or [p.name for p in path.iterdir()]
        raise MedsftError(f"{name} {str(path)!r} holds files medsft did not write ({few(names)})",
                          f"choose a new directory for {name} (medsft only replaces what it wrote)")
    if kind == "run":
        return  # written into under medsft's own names, never replaced: the user's other files stay
    others = foreign(path, kind)
    if others:
        raise MedsftError(f"{name} {str(path)!r} holds files medsft did not write ({few(others)})",
                          f"move them out of {str(path)!r} (it is replaced whole), or choose another {name}")


def contains(outer: Path, inner: Path) -> bool:
    """`inner` is `outer` or lies inside it (paths resolved, the directories need not exist)."""
    outer, inner = Path(outer).resolve(), Path(inner).resolve()
    return inner == outer or outer in inner.parents


class RunLock:
    """`<dir>/.medsft.lock` while a training runs (main process only) or a report is written. Created exclusively. A lock
    whose process is gone is taken over: a dead pid on this host (or a pid since reused by another
    process), or an earlier attempt of this same Slurm job (a requeue lands on any node). A live holder
    is refused, named by pid, host, command and start time."""

    def __init__(self, directory: Path, command: str = "medsft train", name: str = "output.dir") -> None:
        self.path = Path(directory) / LOCK
        self.command = command
        self.name = name
        self.held = False
        self.created = False
        self.taken_over: dict | None = None  # the owner of a stale lock this one replaced (the caller says so)

    def stale(self, owner: dict | None) -> bool:
        if not owner:
            return False
        job = os.environ.get("SLURM_JOB_ID")
        if job and owner.get("slurm_job") == job and owner.get("pid") != os.getpid():
            return True  # this job, requeued: its earlier attempt is over
        if owner.get("host") != socket.gethostname():
            return False
        if not alive(owner.get("pid")):
            return True
        started = owner.get("started")
        return started is not None and process_start(owner.get("pid")) not in (None, started)

    def check(self) -> None:
        """Refuse now if another live run holds the directory (read-only: nothing is created)."""
        if self.path.exists() or self.path.is_symlink():
            owner = self.owner()
            if not self.stale(owner):
                who = (f"pid {owner.get('pid')} on {owner.get('host')}, `{owner.get('command', 'medsft')}`, since "
                       f"{owner.get('since')}" if owner else "an unreadable lock")
                raise MedsftError(f"{self.name} {str(self.path.parent)!r} is in use by another medsft run ({who})",
                                  f"wait for it, or choose another {self.name} (if that run is dead, delete "
                                  f"{self.path})")

    def __enter__(self) -> RunLock:
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": self.command, "started": process_start(os.getpid()),
              "slurm_job": os.environ.get("SLURM_JOB_ID")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()  # a live owner: refused here
                self.taken_over = self.owner() or {}
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise MedsftError(f"could not lock {self.path}", "retry")

    def owner(self) -> dict | None:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        if self.created and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that failed before writing anything leaves nothing behind
