"""Quiet by default: what a user sees on stderr from medsft's quick commands and a tiny training is medsft's own
(`notice:`/`error:` lines), with HF_HUB_OFFLINE=1 (the air-gapped node) and without it, on a fresh medsft home;
and importing bitsandbytes through medsft asks no hub for a kernel."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO

TINY = REPO / "recipes" / "tiny-cpu.yaml"
MEDSFT_LINE = re.compile(r"^(notice|error): ")
AVX512_BF16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else False


def environment(home: Path, offline: bool, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(MEDSFT_HOME=str(home), HF_HOME=str(home / "hf"), PYTHONPATH=str(REPO), **extra)
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def library_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not MEDSFT_LINE.match(line)]


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "online"])
def test_quick_commands_and_a_tiny_training_print_no_library_line(offline, tmp_path):
    env = environment(tmp_path / "home", offline)  # fresh: the first command also builds the tiny model
    commands = (
        ["preflight", TINY, "--gpu-memory", "24GiB"],
        ["data", "--help"],
        ["train", TINY, "--set", f"output.dir={tmp_path / 'run'}", "--set", "training.max_steps=2",
         "--set", "training.eval_steps=1", "--set", "data.max_rows=80"],
    )
    for args in commands:
        done = subprocess.run([sys.executable, "-m", "medsft", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert library_lines(done.stderr) == [], (args[0], done.stderr[-2000:])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


class Recorder(http.server.BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_GET(self):  # noqa: N802 — http.server's name
        Recorder.paths.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def hub_requests_on_import(code: str, tmp_path: Path) -> list[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.paths = []
    try:
        env = environment(tmp_path / "home", offline=False,
                          HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        server.shutdown()
        server.server_close()
    return list(Recorder.paths)


def test_importing_bitsandbytes_through_medsft_asks_no_hub(tmp_path):
    """bitsandbytes' CPU backend looks up a hub kernel while it is imported on an AVX512-BF16 CPU (the control
    shows it asking the hub there); through medsft it loads its built-in kernel and asks nothing."""
    if AVX512_BF16:
        assert hub_requests_on_import("import bitsandbytes", tmp_path), "the control: bitsandbytes asks the hub"
    assert hub_requests_on_import("import medsft, peft, transformers, bitsandbytes", tmp_path) == []


def test_only_the_kernel_line_of_bitsandbytes_is_dropped():
    """medsft drops bitsandbytes' missing-hub-kernel record and no other record of that logger."""
    from medsft.upstream import BNB_CPU_OPS, KERNEL_HUB_LINE

    code = ("import logging, medsft, bitsandbytes\n"
            f"log = logging.getLogger({BNB_CPU_OPS!r})\n"
            f"log.warning({KERNEL_HUB_LINE!r} + ': some reason')\n"
            "log.warning('another warning')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert KERNEL_HUB_LINE not in done.stderr
    assert "another warning" in done.stderr
