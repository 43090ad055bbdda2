"""Where medsft keeps its own files, and how a path from the user is read.

Why: `~/runs/x` in a recipe must mean the home directory everywhere (checkpoints and adapter alike),
and the cache root (built-in model, tokenized data) must be one setting, `$MEDSFT_HOME`.
"""

from __future__ import annotations

import os
from pathlib import Path


def medsft_home() -> Path:
    """Cache root: the built-in model and tokenized datasets (default ~/.cache/medsft)."""
    return Path(os.environ.get("MEDSFT_HOME") or Path.home() / ".cache" / "medsft").expanduser()


def hf_home() -> Path:
    """huggingface_hub's HF_HOME rule (HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface),
    read without importing it."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface").expanduser()


def datasets_cache() -> Path:
    """Where `datasets` writes the Arrow files of a file it loads (HF_DATASETS_CACHE, else HF_HOME/datasets)."""
    return Path(os.environ.get("HF_DATASETS_CACHE") or hf_home() / "datasets").expanduser()


def user_path(text: str) -> str:
    """A path as the user meant it: `~` and `$VARS` expanded, nothing else changed."""
    return os.path.expandvars(os.path.expanduser(text))


def looks_local(name: str) -> bool:
    """A model or data name that is a filesystem path rather than a hub id."""
    return isinstance(name, str) and (name.startswith(("/", "./", "../", "~")) or os.path.isabs(name))
