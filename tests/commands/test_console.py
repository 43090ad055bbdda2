"""Errors under a launcher: said once per node by whichever local rank gets there first (the launcher stops the
others as soon as one exits, so "rank 0 speaks" would lose the line whenever another rank is faster)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SAY = "from medsft.console import error; error({!r})"


def ranks(code: str, n: int = 3, **env) -> list[subprocess.CompletedProcess]:
    """`n` local ranks of one launch: children of this process, each with its RANK, run one after another."""
    base = {**os.environ, "PYTHONPATH": str(REPO), "LOCAL_WORLD_SIZE": str(n), "WORLD_SIZE": str(n), **env}
    return [subprocess.run([sys.executable, "-c", code], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                           capture_output=True, text=True, timeout=60) for r in (2, 0, 1)[:n]]


def test_the_first_rank_to_find_an_error_says_it_and_no_other_does(tmp_path):
    runs = ranks(SAY.format(f"bad input {tmp_path}"), TMPDIR=str(tmp_path))
    assert [r.stderr for r in runs] == [f"error: bad input {tmp_path}\n", "", ""]  # rank 2 came first here


def test_a_different_error_on_another_rank_is_said_too(tmp_path):
    runs = [ranks(SAY.format(f"{what} {tmp_path}"), n=1, TMPDIR=str(tmp_path), LOCAL_WORLD_SIZE="2")[0]
            for what in ("disk full", "missing file")]
    assert [r.stderr for r in runs] == [f"error: disk full {tmp_path}\n", f"error: missing file {tmp_path}\n"]


def test_a_single_process_always_says_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_WORLD_SIZE", "WORLD_SIZE")}
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", SAY.format("same line")], capture_output=True, text=True,
                             env={**env, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}, timeout=60)
        assert res.stderr == "error: same line\n"
