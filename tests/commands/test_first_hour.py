"""The README's own flow never refuses: in one run directory, train → eval → infer (piped) → merge → train again
("already complete") → eval again, all exit 0, and evaluation never writes inside the adapter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model

TINY = str(REPO / "recipes" / "tiny-cpu.yaml")
SHORT = ["--set", "training.max_steps=4", "--set", "training.eval_strategy=no", "--set", "data.max_rows=80"]


def files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_train_eval_infer_merge_train_again_eval_again(tmp_path, tiny_dir):
    train = ["train", TINY, "--set", "output.dir=runs/tiny", *SHORT]
    assert run_cli_here(*train, cwd=tmp_path).returncode == 0
    adapter = tmp_path / "runs" / "tiny" / "adapter"
    trained = files(adapter)
    first = run_cli_here("eval", adapter, "--max-generations", "2", "--max-new-tokens", "8", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "eval" / "eval.json").is_file()
    piped = subprocess.run(f"{sys.executable} -m medsft infer {adapter} --question 'What is sign 3?' "
                           "--max-new-tokens 8 | cat", shell=True, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert piped.returncode == 0, piped.stderr[-3000:]
    merged = run_cli_here("merge", adapter, "runs/tiny/merged", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr[-3000:]
    again = run_cli_here(*train, cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-3000:]
    second = run_cli_here("eval", adapter, "--max-generations", "2", "--max-new-tokens", "8", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert files(adapter) == trained  # evaluation wrote nothing inside the adapter
    for directory, library in ((adapter, "peft"), (tmp_path / "runs" / "tiny" / "merged", "transformers")):
        card = (directory / "README.md").read_text()
        assert card.startswith("---\n") and f"library_name: {library}" in card.split("---")[1]
        assert "[More Information Needed]" not in card and "None" not in card and str(tmp_path) not in card
        assert "/root" not in card and ".cache" not in card  # no local paths
    assert "## Evaluation" in (tmp_path / "runs" / "tiny" / "merged" / "README.md").read_text()  # eval ran before
    assert "PeftModel.from_pretrained" in (adapter / "README.md").read_text()


def test_auto_micro_batch_beside_a_fixed_accumulation_says_the_rows_per_step(tmp_path, tiny_dir):
    res = run_cli_here("train", TINY, "--set", "output.dir=run", "--set", "training.per_device_train_batch_size=auto",
                       "--set", "training.gradient_accumulation_steps=2", *SHORT, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    said = [line for line in res.stderr.splitlines() if "per_device_train_batch_size: auto →" in line]
    assert len(said) == 1 and "× 2 × 1 process = " in said[0] and "rows per optimizer step" in said[0], res.stderr


def test_a_log_file_gets_each_step_once_and_no_library_warning(tmp_path, tiny_dir):
    from tests.conftest import run_cli

    res = run_cli("train", TINY, "--set", f"output.dir={tmp_path / 'run'}", "--set", "training.max_steps=6",
                  "--set", "training.logging_steps=2", "--set", "training.eval_steps=2", "--set", "data.max_rows=80")
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [line.split(" | ")[0] for line in res.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["step 2/6", "step 4/6", "step 6/6"], res.stdout
    assert [line.split(" | ")[0] for line in res.stdout.splitlines() if line.startswith("eval at step")] == [
        "eval at step 2", "eval at step 4", "eval at step 6"]
    assert not [line for line in res.stderr.splitlines() if "Warning" in line], res.stderr
