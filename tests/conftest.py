"""Shared fixtures: an isolated medsft home (the tiny model is built once per session), offline hub,
the shared demo data, and a helper that runs the real CLI in a subprocess. Folders are capabilities (what a user
relies on); a file whose tests train, launch several processes, queue on Slurm or run pip marks itself
`pytestmark = pytest.mark.slow`, so `pytest -m "not slow"` is the quick loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_JSON = SHARED / "data" / "medical-o1-demo.json"


@pytest.fixture(scope="session", autouse=True)
def medsft_env(tmp_path_factory):
    """Every test and every subprocess it starts sees the same offline, isolated environment."""
    home = tmp_path_factory.mktemp("medsft-home")
    os.environ.update(
        MEDSFT_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HOME=str(home / "hf"),
    )
    return home


@pytest.fixture(scope="session")
def demo_json() -> Path:
    assert DEMO_JSON.is_file(), f"{DEMO_JSON} is missing: tests read ../shared beside the checkout"
    return DEMO_JSON


@pytest.fixture(scope="session")
def tiny_dir(medsft_env) -> Path:
    from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

    return builtin_model_dir(TINY_MODEL)


def free_port() -> int:
    """A TCP port nothing listens on now, for a launch's rendezvous (tests may run beside other launches)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m medsft ARGS` as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "medsft", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_cli_here(*args, cwd=None, env=None, timeout=None) -> subprocess.CompletedProcess:
    """`medsft ARGS` through the same `medsft.cli.main`, in this process: what it printed and its exit status,
    a traceback as exit 1; `env` added for the command only. For single-process commands whose output is what
    is checked, which would each pay a Python and torch start-up as subprocesses; what depends on the process
    (launch variables, imports, signals, library logging set up on import) runs `run_cli`. `timeout`: unused,
    so the two read alike."""
    import contextlib
    import io
    import signal
    import traceback

    from medsft.cli import main

    out, err = io.StringIO(), io.StringIO()
    before, environ = os.getcwd(), dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    os.chdir(cwd or REPO)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's own refusals
                status = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 — what a user would see as a traceback
                traceback.print_exc()
                status = 1
    finally:  # what a command changes in its process stays with that command
        os.chdir(before)
        os.environ.clear()
        os.environ.update(environ)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until `path` exists, polling the file system (a process's progress, never a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the process ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.fixture
def workspace(tmp_path):
    """A user's project directory (tests/cases.py USER_FILES): refusals must leave every file as it was."""
    from tests.cases import USER_FILES

    for name, text in USER_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path
