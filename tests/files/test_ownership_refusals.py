"""Ownership by content: medsft replaces or deletes only the files its marker lists, a marker that does not
verify counts as absent, symlinks are written through, reports never overwrite a user's file or an input,
and the run lock is taken over from a dead process and names a live one. Through the real CLI, in a
hashed workspace (tests/cases.py), with marked directories built by medsft's own writers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from medsft.io.ownership import LOCK, RunLock, inventory_one, mark
from tests.cases import check_one_line_error, fake_adapter, run_case, snapshot
from tests.conftest import REPO, run_cli, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model

TINY = str(REPO / "recipes" / "tiny-cpu.yaml")


def medsft_adapter(directory: Path) -> Path:
    """An adapter directory as medsft's writer marks it: every file listed."""
    fake_adapter(directory)
    (directory / ".medsft.json").unlink()
    mark(directory, "adapter", run="run")
    return directory


def train_into(*sets) -> list[str]:
    return ["train", TINY, "--set", "output.dir=run", *[a for s in sets for a in ("--set", s)]]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- a directory medsft marked, holding more than it wrote -----------------------------------------

def test_copied_adapter_with_a_user_file_is_not_replaced(workspace):
    shutil.copytree(medsft_adapter(workspace / "src"), workspace / "mine2")  # a copy stays recognisable
    (workspace / "mine2" / "NOTES.md").write_text("my notes\n")
    run_case(workspace, train_into("output.adapter_dir=mine2"),
             "output.adapter_dir 'mine2' holds files medsft did not write (NOTES.md)")


def test_benchmark_report_inside_a_runs_adapter_is_not_replaced(workspace):
    mark(workspace / "run", "run", state="complete", identity={"other": "run"})
    medsft_adapter(workspace / "run" / "adapter")
    (workspace / "run" / "adapter" / "benchmark").mkdir()
    (workspace / "run" / "adapter" / "benchmark" / "benchmark.json").write_text("{}")
    run_case(workspace, [*train_into(), "--resume", "never"], "holds files medsft did not write (benchmark/benchmark.json)")


def test_a_changed_listed_file_makes_the_marker_absent(workspace):
    medsft_adapter(workspace / "ad")
    (workspace / "ad" / "recipe.yaml").write_text("# edited by hand\n")
    run_case(workspace, train_into("output.adapter_dir=ad"), "has changed since (recipe.yaml missing or modified)")


def test_a_bare_marker_is_not_trusted(workspace):
    fake_adapter(workspace / "bare")  # its marker is a bare {"kind": "adapter"}
    run_case(workspace, train_into("output.adapter_dir=bare"), "'bare' holds files medsft did not write")
    (workspace / "runbare").mkdir()
    (workspace / "runbare" / ".medsft.json").write_text(json.dumps({"kind": "run"}))
    (workspace / "runbare" / "weights.bin").write_text("mine")
    run_case(workspace, ["train", TINY, "--set", "output.dir=runbare"], "'runbare' holds files medsft did not write")


def test_an_earlier_medsfts_adapter_is_recognised_but_never_trusted_with_unknown_files(workspace):
    legacy = workspace / "old"
    fake_adapter(legacy)
    (legacy / ".medsft.json").write_text(json.dumps({"kind": "adapter", "recipe": "r.yaml"}))  # the old marker
    (legacy / "manifest.json").write_text(json.dumps({"versions": {}, "placement": {}}))
    (legacy / "NOTES.md").write_text("mine\n")
    run_case(workspace, train_into("output.adapter_dir=old"), "'old' holds files medsft did not write (NOTES.md)")


def test_merge_into_a_medsft_merge_with_a_user_file_refuses(workspace):
    fake_adapter(workspace / "adapter")
    merged = workspace / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"\0" * 64)
    mark(merged, "merged", adapter="adapter")
    (merged / "serve.sh").write_text("vllm serve .\n")
    run_case(workspace, ["merge", "adapter", "merged"], "the merge output 'merged' holds files medsft did not write "
                                                         "(serve.sh)")


# --- replacing: only listed files, links written through ---------------------------------------------

def test_replace_keeps_a_symlink_and_writes_into_its_target_on_another_filesystem(tmp_path):
    from medsft.io.outputs import atomic_dir

    other = Path(tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    try:
        (tmp_path / "link").symlink_to(other)
        for text in ("first", "second"):
            with atomic_dir(tmp_path / "link", kind="merged") as tmp:
                (tmp / "config.json").write_text(text)
                mark(tmp, "merged")
            assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == other.resolve()
            assert (other / "config.json").read_text() == text
        (other / "mine.txt").write_text("mine")
        with pytest.raises(Exception, match="holds files medsft did not write"):
            with atomic_dir(tmp_path / "link", kind="merged") as tmp:
                mark(tmp, "merged")
        assert (other / "mine.txt").read_text() == "mine" and (other / "config.json").read_text() == "second"
    finally:
        shutil.rmtree(other, ignore_errors=True)


# --- reports --------------------------------------------------------------------------------------

GOOD = {"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "B", "source": "S"}


def hand_made_eval_report(rep: Path, predictions: str) -> None:
    """A report as `medsft eval --benchmark` leaves it: benchmark.json listing the files it wrote."""
    rep.mkdir(parents=True, exist_ok=True)
    (rep / "predictions-adapter.jsonl").write_text(predictions)
    (rep / "accuracy-Old.png").write_bytes(b"png")
    doc = {"written_by": "medsft benchmark report",
           "files": {n: inventory_one(rep / n) for n in ("predictions-adapter.jsonl", "accuracy-Old.png")}}
    (rep / "benchmark.json").write_text(json.dumps(doc))


def test_rescoring_a_reports_predictions_into_it_keeps_the_input_and_the_users_files(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps([GOOD]))
    rep = tmp_path / "rep"
    hand_made_eval_report(rep, '{"output": "The answer is B."}\n')
    (rep / "NOTES.md").write_text("mine\n")
    (rep / "predictions-gpt4.jsonl").write_text('{"output": "A"}\n')  # the user's, with a report's name
    res = run_cli_here("score", "bench.json", "--predictions", "rep/predictions-adapter.jsonl", "--output-dir", "rep",
                  cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (rep / "predictions-adapter.jsonl").read_text() == '{"output": "The answer is B."}\n'  # the input
    assert (rep / "NOTES.md").read_text() == "mine\n" and (rep / "predictions-gpt4.jsonl").read_text() == '{"output": "A"}\n'
    assert not (rep / "accuracy-Old.png").exists()  # the previous report's own stale chart goes
    doc = json.loads((rep / "benchmark.json").read_text())
    assert doc["overall"]["accuracy"] == 1.0 and set(doc["files"]) == {"scores.jsonl", "accuracy-S.png"}
    # scoring again replaces the report medsft wrote
    assert run_cli_here("score", "bench.json", "--predictions", "rep/predictions-gpt4.jsonl", "--output-dir", "rep",
                   cwd=tmp_path, timeout=120).returncode == 0
    assert json.loads((rep / "benchmark.json").read_text())["overall"]["accuracy"] == 0.0
    assert (rep / "predictions-adapter.jsonl").is_file() and (rep / "NOTES.md").is_file()


def test_a_report_never_overwrites_a_users_file_with_a_reports_name(workspace):
    (workspace / "bench.json").write_text(json.dumps([GOOD]))
    hand_made_eval_report(workspace / "rep", '{"output": "B"}\n')
    (workspace / "rep" / "scores.jsonl").write_text("my own scores\n")  # not listed: the user's
    run_case(workspace, ["score", "bench.json", "--predictions", "rep/predictions-adapter.jsonl", "--output-dir", "rep"],
             "holds scores.jsonl, which medsft did not write")


def test_an_earlier_medsfts_report_keeps_the_predictions_being_scored(tmp_path):
    """A report without a file list: its files are those with a report's names older than its benchmark.json;
    even so the input is never deleted."""
    (tmp_path / "bench.json").write_text(json.dumps([GOOD]))
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "predictions-adapter.jsonl").write_text('{"output": "B"}\n')
    (rep / "benchmark.json").write_text(json.dumps({"written_by": "medsft benchmark report"}))
    res = run_cli_here("score", "bench.json", "--predictions", "rep/predictions-adapter.jsonl", "--output-dir", "rep",
                  cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (rep / "predictions-adapter.jsonl").read_text() == '{"output": "B"}\n'


# --- the run lock -----------------------------------------------------------------------------------

def test_a_live_lock_names_its_holder(workspace):
    (workspace / "busy").mkdir()
    (workspace / "busy" / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "since": "2025-01-02 03:04:05", "command": "medsft train"}))
    run_case(workspace, ["train", TINY, "--set", "output.dir=busy"],
             f"in use by another medsft run (pid {os.getpid()} on {socket.gethostname()}, `medsft train`, "
             "since 2025-01-02 03:04:05)")


def test_a_lock_from_another_host_is_refused_unless_it_is_this_slurm_jobs_earlier_attempt(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": 1, "host": "node-a", "since": "x", "slurm_job": "77"}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(Exception, match="pid 1 on node-a"):
        RunLock(out).check()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # requeued onto another node
    with RunLock(out):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert not (out / LOCK).exists()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "-1"}))
    with RunLock(out):
        assert json.loads((out / LOCK).read_text())["started"] not in (None, "-1")


# --- one training: a dead run's lock taken over, a symlinked adapter dir, then the refusals after it ---

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("owned")
    other = Path(tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    (root / "run").mkdir()
    (root / "run" / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": "x",
                                                 "command": "medsft train"}))  # killed while preparing data
    (root / "ad").symlink_to(other)
    res = run_cli(*train_into("output.adapter_dir=ad", "training.max_steps=2", "training.eval_strategy=no",
                              "training.save_strategy=no"), cwd=root, timeout=600)
    yield root, other, res
    shutil.rmtree(other, ignore_errors=True)


def test_a_dead_runs_lock_is_taken_over_and_a_linked_adapter_dir_is_written_through(trained):
    root, other, res = trained
    assert res.returncode == 0, res.stderr[-3000:]
    assert "taking over" in res.stderr
    assert (root / "ad").is_symlink() and (root / "ad").resolve() == other.resolve()
    assert (other / "adapter_model.safetensors").is_file() and not (root / "run" / LOCK).exists()
    listed = json.loads((other / ".medsft.json").read_text())["files"]
    assert "adapter_model.safetensors" in listed and "recipe.yaml" in listed


def test_after_training_a_user_file_in_the_adapter_or_the_merge_refuses(trained):
    root, other, res = trained
    assert res.returncode == 0, res.stderr[-3000:]
    (other / "NOTES.md").write_text("mine\n")
    try:
        before = snapshot(root)
        again = run_cli(*train_into("output.adapter_dir=ad"), "--resume", "never", cwd=root, timeout=300)
        check_one_line_error(again, "holds files medsft did not write (NOTES.md)")
        assert snapshot(root) == before and (other / "NOTES.md").read_text() == "mine\n"
    finally:
        (other / "NOTES.md").unlink()
    merged = run_cli_here("merge", "ad", "merged", cwd=root, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert run_cli_here("merge", "ad", "merged", cwd=root, timeout=300).returncode == 0  # medsft's own: replaced
    (root / "merged" / "serve.sh").write_text("vllm serve .\n")
    check_one_line_error(run_cli_here("merge", "ad", "merged", cwd=root, timeout=300),
                         "the merge output 'merged' holds files medsft did not write (serve.sh)")
    assert (root / "merged" / "serve.sh").read_text() == "vllm serve .\n"
