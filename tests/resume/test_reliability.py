"""Resume after kill -9, graceful SIGTERM, atomic final save, and no token in any output."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from medsft.recipe.files import load_recipe
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # trains the tiny model

STEPS = 24
ARGS = ["--set", f"training.max_steps={STEPS}", "--set", "training.save_steps=3", "--set", "training.logging_steps=1",
        "--set", "training.eval_strategy=no"]


def start(out, *extra, env=None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "medsft", "train", str(REPO / "recipes" / "tiny-cpu.yaml"),
                             "--set", f"output.dir={out}", *ARGS, *extra], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_until_step(out, step: int, sig: int, env=None) -> tuple[int, str]:
    """Start training, send `sig` once the progress line of `step` is printed; (exit status, stdout)."""
    proc = start(out, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step}/{STEPS} |"):
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + rest + err


def losses(out) -> dict[int, list[float]]:
    by_step: dict[int, list[float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            by_step.setdefault(r["step"], []).append(r["loss"])
    return by_step


def adapter_tensors(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("reference")
    proc = start(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_kill_9_five_times_then_resume_is_exact(reference, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kill_steps = sorted(rng.sample(range(2, STEPS), 5))
    print(f"kill -9 at steps {kill_steps}")
    for step in kill_steps:  # each run resumes from the newest complete checkpoint, then dies again
        status, log = run_until_step(out, step, signal.SIGKILL)
        assert status == -signal.SIGKILL, log[-2000:]
    proc = start(out)
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from" in stdout
    ref, got = adapter_tensors(reference), adapter_tensors(out)
    assert ref.keys() == got.keys()
    for key in ref:  # exact on CPU: same data order, RNG, optimizer and precision after resuming
        assert (ref[key] == got[key]).all(), key
    ref_losses = {s: v[0] for s, v in losses(reference).items()}
    for step, values in losses(out).items():  # every loss logged by any segment, resumed ones included
        assert all(v == ref_losses[step] for v in values), (step, values, ref_losses[step])
    assert json.loads((out / "adapter" / "manifest.json").read_text())["train"]["global_step"] == STEPS


def test_sigterm_checkpoints_and_exits_75(reference, tmp_path):
    out = tmp_path / "term"
    status, log = run_until_step(out, 7, signal.SIGTERM)
    assert status == 75, log[-2000:]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] in (7, 8), checkpoints  # within one step of the signal
    assert "checkpointing after this step" in log and "exiting 75" in log
    proc = start(out)
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from {out}/checkpoint-{checkpoints[-1]}" in stdout
    ref, got = adapter_tensors(reference), adapter_tensors(out)
    assert all((ref[k] == got[k]).all() for k in ref)


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_crash_during_final_save_leaves_no_partial_adapter(tmp_path, monkeypatch, tiny_dir):
    import medsft.io.outputs
    from medsft.train.run import run

    out = tmp_path / "run"
    recipe = lambda: load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [  # noqa: E731
        f"output.dir={out}", "training.max_steps=2", "training.eval_strategy=no", "training.save_strategy=no"])

    real = medsft.io.outputs.write_json

    def crash_on_manifest(path, obj):
        if str(path).endswith("manifest.json"):  # weights and tokenizer are already written by now
            raise KeyboardInterrupt("injected crash during the final save")
        return real(path, obj)

    monkeypatch.setattr(medsft.io.outputs, "write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(), resume="never")
    assert not (out / "adapter").exists(), "a partial adapter appeared under the final name"

    monkeypatch.setattr(medsft.io.outputs, "write_json", real)
    run(recipe(), resume="never")
    before = digest(out / "adapter")
    monkeypatch.setattr(medsft.io.outputs, "write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(), resume="never")
    assert digest(out / "adapter") == before, "the previous complete adapter was damaged"


def test_tokens_never_written(tmp_path, tiny_dir):
    secret = "hf_FAKEtoken1234567890abcdefSECRET"
    out = tmp_path / "run"
    proc = start(out, env={"HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret, "WANDB_API_KEY": secret})
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert secret not in stdout and secret not in err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        assert secret.encode() not in p.read_bytes(), f"token found in {p}"


def train_cmd(out, *extra) -> list[str]:
    return [sys.executable, "-m", "medsft", "train", str(REPO / "recipes" / "tiny-cpu.yaml"), "--set", f"output.dir={out}",
            "--set", "training.max_steps=6", "--set", "training.save_steps=2", "--set", "training.eval_strategy=no",
            "--set", "data.max_rows=120", *extra]


def cli(cmd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("finished") / "run"
    res = cli(train_cmd(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_rerunning_a_finished_run_trains_nothing(finished):
    before = digest(finished / "adapter")
    res = cli(train_cmd(finished))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already complete" in res.stdout and "step " not in res.stdout
    assert digest(finished / "adapter") == before


@pytest.mark.parametrize("change,named", [
    (["--set", "training.learning_rate=1e-3"], "training.learning_rate 0.002 → 0.001"),
    (["--set", "lora.rank=8"], "lora.rank 16 → 8"),
    (["--set", "data.source=" + str(REPO.parent / "shared" / "data" / "medical-o1-demo.json")], "data.source"),
])
def test_resuming_a_changed_recipe_refuses_naming_the_change(finished, change, named):
    before = {p: digest(p) for p in [finished / "adapter", *finished.glob("checkpoint-*")]}
    res = cli(train_cmd(finished, *change))
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a checkpoint of a different run" in errors[0] and named in errors[0], res.stderr
    assert "--resume never" in errors[0] and "Traceback" not in res.stderr
    assert {p: digest(p) for p in before} == before


def test_explicit_resume_continues_anyway_and_never_starts_over(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "adapter").rename(tmp_path / "old-adapter")  # as if the run had stopped after its last checkpoint
    (run / ".medsft.json").unlink()
    res = cli(train_cmd(run, "--set", "training.max_steps=8", "--resume", str(run / "checkpoint-6")))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "continuing from" in res.stderr and "training.max_steps 6 → 8" in res.stderr
    assert json.loads((run / "adapter" / "manifest.json").read_text())["train"]["global_step"] == 8
    res = cli(train_cmd(run, "--set", "training.learning_rate=1e-3", "--resume", "never"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "starting over: the previous run's checkpoints and metrics" in res.stderr and "resuming from" not in res.stdout
    assert not (run / "checkpoint-8").exists() and not (run / ".medsft-previous").exists()  # gone once this run saved


def test_a_second_training_into_the_same_directory_refuses(tmp_path, tiny_dir):
    out = tmp_path / "run"
    first = subprocess.Popen(train_cmd(out, "--set", "training.max_steps=200"), cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # the first run is training (it holds the lock) once it reports a step
            if line.startswith("step "):
                break
        second = cli(train_cmd(out))
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another medsft run (pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.kill()
        first.wait()


def test_generation_errors_reach_the_main_thread(tiny_dir):
    """A failure inside the streaming generation thread ends `infer` with that error instead of a hang."""
    import threading

    from transformers import AutoTokenizer

    from medsft.evaluation.generate import Settings, stream_one

    class Broken:
        device = "cpu"
        generation_config = None

        def generate(self, **kwargs):
            raise ValueError("generation failed inside its thread")

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    outcome = {}

    def call():
        try:
            stream_one(Broken(), tokenizer, "q?", Settings(max_new_tokens=4), lambda piece, thinking: None)
        except ValueError as err:
            outcome["error"] = str(err)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "stream_one hung after its generation thread failed"
    assert outcome.get("error") == "generation failed inside its thread"
