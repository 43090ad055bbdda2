"""Reliability by class, through the real CLI: nothing of the user's is lost (ownership by content, start over
without deleting first, reports that never write through a link), nothing that can fail at the end waits until
after training, completion means the same data, and a report or output interrupted or raced finishes or refuses
in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medsft.io.ownership import mark
from tests.conftest import REPO, run_cli, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model

TINY = str(REPO / "recipes" / "tiny-cpu.yaml")
SHORT = ["--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "training.eval_strategy=no",
         "--set", "data.max_rows=80"]
ROWS = [{"Question": f"What is sign {i}?", "Complex_CoT": f"reason {i}", "Response": f"answer {i:03d}"}
        for i in range(60)]
GOOD = {"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "B", "source": "S"}


def one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr[-3000:]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- ownership by content ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1 << 10, 40 << 20], ids=["small", "over 32 MiB"])
def test_a_same_size_file_in_place_of_a_listed_one_is_not_medsfts(tmp_path, size):
    """Whatever its size, a file medsft listed is recognised by its bytes: another run's weights of the same size
    put in its place make the adapter not medsft's, and training refuses to replace it."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * size)
    mark(adapter, "adapter", run="run")
    (adapter / "adapter_model.safetensors").write_bytes(b"\2" * size)  # another run's, same size
    before = tree(tmp_path)
    res = run_cli_here("train", TINY, "--set", "output.dir=run", "--set", "output.adapter_dir=adapter", cwd=tmp_path)
    one_line_error(res, "was written by medsft but has changed since (adapter_model.safetensors")
    assert tree(tmp_path) == before


# --- start over without deleting first -----------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("startover")
    res = run_cli("train", TINY, "--set", f"output.dir={root / 'run'}", *SHORT)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run"


def test_a_start_over_that_fails_before_its_first_checkpoint_puts_the_old_run_back(run_dir, tmp_path):
    from transformers import TrainerCallback

    from medsft.recipe.files import load_recipe
    from medsft.train.run import run

    class Fails(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise RuntimeError("the node failed")

    run = run  # noqa: PLW0127 — the training entry point, in this process
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    (work / "checkpoint-2" / "NOTES.md").write_text("my note\n")
    before = tree(work)
    with pytest.raises(RuntimeError, match="the node failed"):
        run(load_recipe(TINY, [f"output.dir={work}", "training.max_steps=4", "training.save_steps=2",
                               "training.eval_strategy=no", "data.max_rows=80"]), resume="never", callbacks=[Fails()])
    after = {k: v for k, v in tree(work).items() if k != ".medsft.json"}  # the marker says a run started
    assert after == {k: v for k, v in before.items() if k != ".medsft.json"}


def test_start_over_keeps_a_users_file_and_only_the_new_runs_metrics(run_dir, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    (work / "checkpoint-2" / "NOTES.md").write_text("my note\n")
    res = run_cli("train", TINY, "--set", f"output.dir={work}", *SHORT, "--set", "training.logging_steps=2",
                  "--resume", "never")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kept in place (not medsft's): checkpoint-2/NOTES.md" in res.stderr
    assert (work / "checkpoint-2" / "NOTES.md").read_text() == "my note\n"
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4], records  # the new run's records only
    assert sum("train_runtime" in r for r in records) == 1, records
    assert not (work / ".medsft-previous").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="chattr +i needs root")
def test_a_read_only_adapter_parent_refuses_before_step_1_and_keeps_the_checkpoints(run_dir, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    models = tmp_path / "models"
    shutil.copytree(run_dir / "adapter", models / "adapter")
    before = tree(tmp_path)
    subprocess.run(["chattr", "+i", str(models)], check=True)
    try:
        res = run_cli("train", TINY, "--set", f"output.dir={work}", "--set", f"output.adapter_dir={models / 'adapter'}",
                      *SHORT, "--resume", "never")
    finally:
        subprocess.run(["chattr", "-i", str(models)], check=True)
    one_line_error(res, f"cannot be renamed into place in '{models}'")
    assert "step " not in res.stdout  # refused before the first step
    assert tree(tmp_path) == before


# --- completion means the same data --------------------------------------------------------------------

def test_data_corrected_in_place_is_not_already_complete(tmp_path, tiny_dir):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    args = ["train", TINY, "--set", "output.dir=run", "--set", f"data.source={rows}", *SHORT]
    assert run_cli_here(*args, cwd=tmp_path).returncode == 0
    again = run_cli_here(*args, cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout
    rows.write_text(json.dumps(ROWS).replace("answer 007", "answer 008"))  # a correction: same size, other bytes
    one_line_error(run_cli_here(*args, cwd=tmp_path), "the data changed since the adapter in")


def test_a_step_larger_than_the_training_split_is_said(tmp_path, tiny_dir):
    res = run_cli_here("train", TINY, "--set", "output.dir=run", "--set", "data.max_rows=40",
                       "--set", "training.per_device_train_batch_size=auto", "--set", "training.global_batch_size=64",
                       "--set", "training.max_steps=1", "--set", "training.eval_strategy=no", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "the training split has 32 rows, fewer than the 64 rows per optimizer step" in res.stderr


# --- reports and outputs that finish ---------------------------------------------------------------------

def score(tmp_path, env=None):
    args = ["score", "bench.json", "--predictions", "preds.jsonl", "--output-dir", "rep"]
    return run_cli(*args, cwd=tmp_path, env=env, timeout=300) if env else run_cli_here(*args, cwd=tmp_path)


def test_a_score_killed_while_renaming_its_report_completes_when_run_again(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps([GOOD]))
    (tmp_path / "preds.jsonl").write_text('{"output": "The answer is B."}\n')
    assert score(tmp_path).returncode == 0
    (tmp_path / "preds.jsonl").write_text('{"output": "The answer is A."}\n')
    killed = score(tmp_path, env={"PYTHONPATH": f"{REPO / 'tests' / 'files' / 'kill_in_commit'}{os.pathsep}{REPO}",
                                  "MEDSFT_TEST_KILL_IN_COMMIT": "1"})
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert (tmp_path / "rep" / ".medsft-pending.json").exists()  # killed between two renames
    again = score(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "rep" / "benchmark.json").read_text())["overall"]["accuracy"] == 0.0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["accuracy-S.png", "benchmark.json", "scores.jsonl"]


def test_a_report_never_writes_through_a_link_to_a_file_outside(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps([GOOD]))
    (tmp_path / "preds.jsonl").write_text('{"output": "The answer is B."}\n')
    assert score(tmp_path).returncode == 0
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("precious\n")
    (tmp_path / "rep" / "scores.jsonl").unlink()
    (tmp_path / "rep" / "scores.jsonl").symlink_to(outside)
    one_line_error(score(tmp_path), "holds scores.jsonl, which medsft did not write")
    assert outside.read_text() == "precious\n"


def test_two_infers_into_one_output_one_writes_and_the_other_refuses(run_dir, tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "What is sign 1?"}\n')
    cmd = [sys.executable, "-m", "medsft", "infer", str(run_dir / "adapter"), "--file", "q.jsonl", "--output", "ans.jsonl",
           "--max-new-tokens", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser and [line for line in loser.splitlines() if line.startswith("error:")] == [
        next(line for line in loser.splitlines() if line.startswith("error:"))]
    assert "ans.jsonl" in loser and json.loads((tmp_path / "ans.jsonl").read_text().splitlines()[0])["question"]
