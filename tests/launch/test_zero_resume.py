"""ZeRO-2 and ZeRO-3 checkpoint, resume and preempt as shipped (accelerate_configs/zero2.yaml, zero3.yaml,
2 CPU processes): a run killed with SIGKILL after a checkpoint, started again with the same command,
ends on the uninterrupted run's adapter; SIGTERM to the launcher checkpoints and exits 75 (requeue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, wait_for_file

pytestmark = pytest.mark.slow  # real multi-process launches

STEPS, EVERY = 8, 2
ARGS = ["--set", f"training.max_steps={STEPS}", "--set", f"training.save_steps={EVERY}", "--set",
        "training.eval_strategy=no", "--set", "training.logging_steps=1", "--set", "data.max_rows=200"]


def command(config: str, out, wrapper: str = "accelerate") -> list[str]:
    options = ["--config_file", str(REPO / "accelerate_configs" / config), "--num_processes", "2"]
    tail = ["train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", f"output.dir={out}", *ARGS]
    if wrapper == "medsft":
        return [sys.executable, "-m", "medsft", "launch", *options, *tail]
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "medsft", *tail]


def start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc, timeout=900) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_9_everything(proc) -> None:
    """SIGKILL the launcher and every process under it, as a node failure would. Not killpg: torch elastic starts
    each worker in a session of its own, so the workers would go on training as orphans."""
    import psutil

    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    for p in tree:  # frozen first, so that none exits, spawns or writes while the others die
        p.suspend()
    tree = [root, *root.children(recursive=True)]
    assert len(tree) >= 3, tree  # the launcher and its two workers
    for p in tree:
        p.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def adapter(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_dir):
    """The uninterrupted runs, one per config."""
    found = {}
    for config in ("zero2.yaml", "zero3.yaml"):
        out = tmp_path_factory.mktemp(config.split(".")[0])
        status, _, err = finish(start(command(config, out)))
        assert status == 0, err[-3000:]
        assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in range(EVERY, STEPS + 1, EVERY)]
        found[config] = out
    return found


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_kill_9_then_same_command_resumes_to_the_same_adapter(config, references, tmp_path):
    out = tmp_path / "run"
    proc = start(command(config, out))
    wait_for_file(out / "checkpoint-2" / "trainer_state.json", proc)  # the first: six steps left to be killed in
    kill_9_everything(proc)
    assert not (out / "adapter").exists(), "the run ended before the kill: nothing left to resume"
    status, stdout, err = finish(start(command(config, out)))
    assert status == 0, err[-3000:]
    assert "resuming from" in stdout
    ref, got = adapter(references[config]), adapter(out)
    assert ref.keys() == got.keys()
    for key in ref:  # the same data order, RNG, optimizer state and precision after resuming
        assert (ref[key].float() - got[key].float()).abs().max() <= 1e-5, key


def test_sigterm_under_zero3_checkpoints_and_exits_75(tmp_path, tiny_dir):
    """What Slurm's preemption warning becomes (launch/slurm_job.sh passes it on as SIGTERM): the workers
    finish their step, checkpoint, and `medsft launch` exits 75 so the job is requeued; the same command
    then completes."""
    out = tmp_path / "run"
    proc = start(command("zero3.yaml", out, wrapper="medsft"))
    wait_for_file(out / "checkpoint-2" / "trainer_state.json", proc)
    os.kill(proc.pid, signal.SIGTERM)
    status, stdout, err = finish(proc)
    assert status == 75, err[-3000:]
    assert "checkpointing after this step" in err
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert steps and 2 < steps[-1] < STEPS, steps  # a checkpoint at the signal: the run stops early
    status, stdout, err = finish(start(command("zero3.yaml", out, wrapper="medsft")))
    assert status == 0, err[-3000:]
    assert f"resuming from {out}/checkpoint-{steps[-1]}" in stdout
