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

from medsft.recipe_files import load_recipe
from tests.conftest import REPO

pytestmark = pytest.mark.slow
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
    import medsft.outputs
    from medsft.train import run

    out = tmp_path / "run"
    recipe = lambda: load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [  # noqa: E731
        f"output.dir={out}", "training.max_steps=2", "training.eval_strategy=no", "training.save_strategy=no"])

    real = medsft.outputs.write_json

    def crash_on_manifest(path, obj):
        if str(path).endswith("manifest.json"):  # weights and tokenizer are already written by now
            raise KeyboardInterrupt("injected crash during the final save")
        return real(path, obj)

    monkeypatch.setattr(medsft.outputs, "write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(), resume="never")
    assert not (out / "adapter").exists(), "a partial adapter appeared under the final name"

    monkeypatch.setattr(medsft.outputs, "write_json", real)
    run(recipe(), resume="never")
    before = digest(out / "adapter")
    monkeypatch.setattr(medsft.outputs, "write_json", crash_on_manifest)
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
