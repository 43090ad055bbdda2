"""The installed versions of the stack medsft runs on, and the tested set they are compared with.

Why: a published adapter must say what trained it, and a user whose environment differs from the set CI passed
with should be able to see where (the run manifest records both). The tested set is `medsft/constraints.txt`,
written by `python .ci/lock.py` and installed by the README's commands with `pip install -c`; it ships inside
the package so an installed medsft still knows it.
"""

from __future__ import annotations

from importlib import metadata, resources

PACKAGES = ("medsft", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
            "deepspeed", "tokenizers", "safetensors", "huggingface_hub", "kernels")
# what a bug report lists (`medsft env`), installed or not
REPORTED = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes", "flash-attn",
            "liger-kernel", "datasets", "tokenizers", "huggingface_hub", "kernels", "pydantic", "rich")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions() -> dict[str, str]:
    """The installed version of each package of the stack (missing ones left out)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_pins(text: str) -> dict[str, str]:
    """`{canonical name: version}` of the `NAME==VERSION` lines of a constraints file."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def tested_versions() -> dict[str, str]:
    """The tested set, medsft/constraints.txt."""
    return read_pins(resources.files("medsft").joinpath("constraints.txt").read_text(encoding="utf-8"))


def untested_versions(installed: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """The packages of the stack whose installed version is not the tested one: `{name: {installed, tested}}`.
    Packages the tested set leaves to the user (torch: its CPU or CUDA build) are not compared."""
    tested = tested_versions()
    found = package_versions() if installed is None else installed
    return {name: {"installed": version, "tested": tested[canonical(name)]}
            for name, version in found.items()
            if canonical(name) in tested and version != tested[canonical(name)]}


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_build() -> str | None:
    """The CUDA version torch was built for, read from its files (no import: `medsft env` stays quick)."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("torch")  # finds the package without running it
    locations = spec.submodule_search_locations if spec is not None else None
    try:
        text = (Path(next(iter(locations or ()))) / "version.py").read_text(encoding="utf-8")
    except (AttributeError, TypeError, StopIteration, OSError):
        return None
    found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else None


def gpus() -> list[str] | None:
    """`name, memory` of each GPU nvidia-smi sees; None without nvidia-smi."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else None


def cpu_flags() -> list[str]:
    """The CPU features bitsandbytes' and torch's CPU paths depend on (AVX512-BF16, AMX)."""
    try:
        words = set(open("/proc/cpuinfo", encoding="utf-8").read().split())
    except OSError:
        return []
    return [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in words]


def git_commit(cwd: str | None = None) -> str | None:
    """HEAD of the git checkout at `cwd` (default: the current directory), or None."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def git_commit_of_package() -> str | None:
    """The commit of the checkout medsft runs from (an editable install), if it is one."""
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    commit = git_commit(str(here)) if (here / ".git").exists() else None
    return commit[:12] if commit else None


def environment() -> list[tuple[str, str]]:
    """The facts a bug report needs, as (name, value) rows; computed without importing torch or a library."""
    import os
    import platform
    import sys

    from medsft.paths import hf_home

    commit = git_commit_of_package()
    rows = [("medsft", f"{version_of('medsft') or 'not installed'}{f' (git {commit})' if commit else ''}"),
            ("Python", f"{sys.version.split()[0]} ({platform.machine()}, {platform.system()} {platform.release()})")]
    cuda = torch_build()
    for name in REPORTED:
        version = version_of(name)
        if name == "torch" and version:
            version += f" (CUDA {cuda})" if cuda else " (CPU build)"
        rows.append((name, version or "not installed"))
    found = gpus()
    rows.append(("GPUs", "; ".join(found) if found else "none seen (no nvidia-smi)" if found is None else "none"))
    rows.append(("CPU flags", ", ".join(cpu_flags()) or "none of avx512f, avx512_bf16, amx_bf16, amx_tile"))
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v) == "1"]
    rows.append(("HF cache", f"{hf_home()} ({'offline: ' + ', '.join(offline) if offline else 'online'})"))
    config = hf_home() / "accelerate" / "default_config.yaml"
    rows.append(("accelerate default config", str(config) if config.is_file() else "none (accelerate config writes one)"))
    differ = untested_versions()
    rows.append(("tested set", "installed" if not differ else "differs: " + ", ".join(
        f"{n} {v['installed']} (tested {v['tested']})" for n, v in differ.items())))
    return rows
