"""A one-process launch (`single_gpu.yaml`) stopped by SIGTERM during a checkpoint that takes longer than the 5 s
accelerate allows: the worker completes it, `medsft launch` exits 75, and the same command resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, wait_for_file

pytestmark = pytest.mark.slow  # real multi-process launches

SLOW = 8  # seconds a save takes, beyond accelerate's 5


def launch(out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medsft", "launch", "--config_file", str(REPO / "accelerate_configs" / "single_gpu.yaml"),
           "train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", f"output.dir={out}",
           "--set", "training.max_steps=16", "--set", "training.save_steps=4", "--set", "training.eval_strategy=no",
           "--set", "data.max_rows=200"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'launch' / 'slow_save'}{os.pathsep}{REPO}",
           "MEDSFT_TEST_SLOW_SAVE": str(SLOW), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_sigterm_during_a_slow_checkpoint_of_a_one_process_launch(tmp_path, tiny_dir):
    out = tmp_path / "run"
    proc = launch(out)
    wait_for_file(out / "checkpoint-4" / "trainer_state.json", proc)  # the first save is over; training goes on
    os.kill(proc.pid, signal.SIGTERM)  # the worker finishes its step, then saves (SLOW s)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 75, stderr[-3000:]
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file())
    started = sorted(int(p.name.split("-")[1]) for p in out.glob("saving-*"))
    assert started[-1] == saved[-1] > 4, (started, saved)  # the save the signal asked for completed
    from medsft.io.checkpoints import is_complete

    assert is_complete(out / f"checkpoint-{saved[-1]}")
    done = launch(out)
    stdout, stderr = done.communicate(timeout=900)
    assert done.returncode == 0, stderr[-3000:]
    assert f"resuming from {out}/checkpoint-{saved[-1]}" in stdout
