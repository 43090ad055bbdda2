"""Quiet by default: bitsandbytes' kernel-hub line (AVX512-BF16 CPUs without the `kernels` package) is not shown
by any medsft command; its other messages are left as they are."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medsft.upstream import KERNEL_HUB_LINE
from tests.conftest import REPO


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def bitsandbytes_would_say_it() -> bool:
    done = python("import bitsandbytes")
    return KERNEL_HUB_LINE in done.stderr


def test_importing_bitsandbytes_through_medsft_is_quiet():
    done = python("import medsft.model.load, bitsandbytes, transformers; print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert KERNEL_HUB_LINE not in done.stderr


@pytest.mark.skipif(not bitsandbytes_would_say_it(), reason="this CPU's bitsandbytes path logs no kernel-hub line")
def test_the_line_is_bitsandbytes_own_and_only_it_is_dropped():
    """On a CPU where bitsandbytes says it, medsft drops that record and no other of the same logger."""
    done = python("import logging, medsft, bitsandbytes\n"
                  "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another warning')")
    assert KERNEL_HUB_LINE not in done.stderr
    assert "another warning" in done.stderr


def test_preflight_prints_no_bitsandbytes_line():
    done = subprocess.run([sys.executable, "-m", "medsft", "preflight", str(REPO / "recipes" / "tiny-cpu.yaml"),
                           "--gpu-memory", "24GiB"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr and "bitsandbytes" not in done.stderr.lower()
