"""SHA-256 of files and values: the one hashing of medsft (ownership, cache keys, run identity, file names).

Why one home: a digest written by one module is compared by another (a marker's file hashes, the data cache's
source fingerprint, a run's data identity), so they must be computed the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def file_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, streamed; remembered per (path, size, mtime, inode) within one process, since
    the same file is asked for several times per command."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def text_digest(*parts: str | bytes) -> str:
    """Hex SHA-256 of the parts joined by NUL (so ("ab", "c") and ("a", "bc") differ)."""
    return hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()


def tree_digest(directory: Path, files: Iterable[Path]) -> str:
    """Hex SHA-256 of files' relative names and bytes: a local dataset folder's identity."""
    return text_digest(*(f"{f.relative_to(directory)}\0{file_digest(f)}" for f in sorted(files)))
