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
