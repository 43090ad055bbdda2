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
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsft.errors import MedsftError
from medsft.versions import git_commit, package_versions, untested_versions


@contextmanager
def atomic_dir(final: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
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
        for entry in list(Path(src).iterdir()):
            shutil.move(entry, final / entry.name)  # the mount is another filesystem
    elif final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


def temporary_sibling(final: Path) -> Path:
    """A hidden name beside `final` for writing it before it is renamed into place (same filesystem)."""
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")


def temporary_of(name: str) -> str | None:
    """The file a temporary sibling (`temporary_sibling`) was to become, or None for any other name."""
    import re

    found = re.fullmatch(r"\.(.+)\.tmp-[0-9a-f]{8}(\.[^.]*)?", name)
    return found.group(1) if found and (not found.group(2) or found.group(1).endswith(found.group(2))) else None


@contextmanager
def atomic_file(final: str | os.PathLike, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces `final` in one rename (a symlink at `final`
    is replaced, never written through), on an exception it is removed and `final` is untouched. `exclusive`:
    only if nothing is at `final` when it is done (`publish`), else FileExistsError."""
    final = Path(final)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if exclusive:
            if not publish(tmp, final):
                raise FileExistsError(str(final))
        else:
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


PENDING = ".medsft-pending.json"  # the journal of a Staging: what a killed commit was renaming into place


class Staging:
    """Files written into a directory as one unit. Each is written to a temporary sibling (`path(name)`); `commit`
    writes a journal listing them (PENDING), renames each into place (`last` at the end: the file whose presence
    says the unit is complete), then removes the journal. A kill before the journal leaves the old files; after
    it, `pending(directory)` tells the next writer which files are this unit's, so it can finish the job."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.staged: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        self.staged[name] = temporary_sibling(self.directory / name)
        return self.staged[name]

    def commit(self, last: str) -> None:
        from medsft.io.ownership import inventory_one

        write_json(self.directory / PENDING, {name: inventory_one(tmp) for name, tmp in self.staged.items()})
        for name in sorted(self.staged, key=lambda n: n == last):
            os.replace(self.staged[name], self.directory / name)
        (self.directory / PENDING).unlink(missing_ok=True)
        self.staged = {}

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)

    @staticmethod
    def pending(directory: Path) -> dict[str, list]:
        """{name: what it holds once renamed} of a commit that was killed, or {}."""
        try:
            found = json.loads((Path(directory) / PENDING).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temporary file + rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> bool:
    """Put the finished file `tmp` at `final` only if nothing is there: False when another writer (or anything
    else) got there first, and `tmp` is removed either way. The one-winner rule of concurrent outputs."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def manifest(**fields: Any) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "versions_not_tested": untested_versions(),  # {} when every package is the tested set's (medsft/versions.py)
        "git_commit": git_commit(),
        **fields,
    }


def check_writable_dir(out: Path, name: str) -> None:
    """A directory we can create or write: not a file, not inside a file, not read-only (a link: where it leads)."""
    from medsft.io.ownership import follow

    out = follow(Path(out), name)
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


def check_caches() -> None:
    """The caches a training or `medsft data` writes (tokenized data, the built-in model, `datasets`' Arrow
    files) are directories medsft can write, said with the variable that moves each."""
    from medsft.paths import datasets_cache, medsft_home

    check_writable_dir(medsft_home(), "medsft's cache (MEDSFT_HOME)")
    check_writable_dir(datasets_cache(), "the datasets cache (HF_DATASETS_CACHE, or HF_HOME/datasets)")


@dataclass(frozen=True)
class Write:
    """One place a command will write: `path` (a directory written into, created if absent; with `replaces`, a
    directory renamed into place whole), `name` as the user knows it, and about how many bytes it will hold."""
    path: Path
    name: str
    replaces: bool = False
    size: int = 0


def check_writable(plan: list[Write]) -> None:
    """Prove, before anything long starts, that every write of `plan` will succeed at the end: each directory (or,
    for one replaced whole, its parent) accepts a new entry and a rename (tried with a temporary one: permission
    bits, read-only mounts, immutable flags and ACLs all answer), a directory that will be replaced can be moved,
    and each filesystem has room for what the plan writes on it."""
    from medsft.io.ownership import follow

    needed: dict[int, list] = {}
    for write in plan:
        path = follow(Path(write.path), write.name)
        where = path.parent if write.replaces else path
        while not where.exists():
            where = where.parent
        probe_rename(where, write)
        if write.replaces and path.exists() and not os.access(path, os.W_OK | os.X_OK):
            raise MedsftError(f"{write.name} {str(path)!r} cannot be replaced (it is read-only or immutable)",
                              f"make it writable, or choose another {write.name}")
        device = os.stat(where).st_dev
        needed.setdefault(device, [where, 0, []])
        needed[device][1] += write.size
        needed[device][2].append(write.name)
    for where, size, names in needed.values():
        free = shutil.disk_usage(where).free
        if size > free:
            raise MedsftError(f"{' and '.join(names)} need about {size / 2**30:.2f} GiB on {str(where)!r}, which has "
                              f"{free / 2**30:.2f} GiB free", "free some space, or choose a location on another disk")


def probe_rename(where: Path, write: Write) -> None:
    from medsft.io.ownership import PROBE

    probe = where / f"{PROBE}{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        try:
            os.replace(probe, probe.with_name(probe.name + "-renamed"))
            probe = probe.with_name(probe.name + "-renamed")
        finally:
            probe.rmdir()
    except OSError as err:
        what = "renamed into place in" if write.replaces else "written into"
        raise MedsftError(f"{write.name} {str(write.path)!r} cannot be {what} {str(where)!r} "
                          f"({err.strerror or type(err).__name__})",
                          f"make {str(where)!r} writable, or choose another {write.name}") from None
