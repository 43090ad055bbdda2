"""Resume identity fails closed, through the real CLI: a checkpoint whose identity cannot be read is no
match, data corrected in place is a different run, and a checkpoint without identity whose adapter cannot
load into the recipe's LoRA is refused before anything loads. Each refusal: exit 2, one line with a fix,
every file of the run directory byte-identical afterwards.

One tiny training (two steps, a checkpoint after each) is made once; each case works on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.cases import check_one_line_error, recipe_with, run_case, snapshot
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # trains the tiny model

ROWS = [{"Question": f"What treats condition {i}?", "Complex_CoT": f"Condition {i} responds to drug {i}.",
         "Response": f"Drug {i}."} for i in range(120)]
RECIPE = recipe_with(data__source="data/rows.json", output__dir="run", training__max_steps=2, training__save_steps=1,
                     training__eval_strategy="no", training__logging_steps=1)
TRAIN = ["train", "recipe.yaml"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir) -> Path:
    """A finished two-step run, trained from a local data file (checkpoint-1, checkpoint-2, adapter)."""
    root = tmp_path_factory.mktemp("resume-identity")
    (root / "data").mkdir()
    (root / "data" / "rows.json").write_text(json.dumps(ROWS))
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    res = run_cli(*TRAIN, cwd=root, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (root / "run" / "checkpoint-2" / "medsft-run.json").is_file()
    return root


@pytest.fixture
def ws(trained, tmp_path) -> Path:
    """A copy of the trained workspace, stopped after its last checkpoint (no final adapter yet)."""
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    shutil.rmtree(ws / "run" / "adapter")
    return ws


def damage_identities(ws: Path, content: bytes) -> None:
    for checkpoint in (ws / "run").glob("checkpoint-*"):
        (checkpoint / "medsft-run.json").write_bytes(content)


def drop_identities(ws: Path) -> None:
    for checkpoint in (ws / "run").glob("checkpoint-*"):
        (checkpoint / "medsft-run.json").unlink()


@pytest.mark.parametrize("content,said", [
    (b'{"model": {"name": "builtin:tiny-qwen2"}, "lora": {"ra', "cannot be read"),  # truncated
    (b"", "cannot be read"),
    (b"\xff\xfe\x00garbage", "cannot be read"),  # not UTF-8
    (b"[]", "holds an array, not a mapping"),
    (b"null", "holds null, not a mapping"),
    (b'"run"', "holds a string, not a mapping"),
])
@pytest.mark.parametrize("resume", [[], ["--resume", "run/checkpoint-2"]], ids=["auto", "explicit"])
def test_an_unreadable_identity_is_no_match(ws, content, said, resume):
    damage_identities(ws, content)
    run_case(ws, [*TRAIN, "--set", "training.learning_rate=1e-3", *resume],
             f"the identity of checkpoint checkpoint-2 {said}")


def test_an_unreadable_identity_names_the_ways_on(ws):
    damage_identities(ws, b"[]")
    before = snapshot(ws)
    res = run_cli(*TRAIN, cwd=ws)  # even the unchanged recipe: nothing says the checkpoint is this run's
    check_one_line_error(res, "medsft-run.json")
    line = res.stderr.strip().splitlines()[-1]
    assert "new output.dir" in line and "delete" in line and "checkpoint-2" in line, line
    assert snapshot(ws) == before


def test_data_corrected_in_place_is_a_different_run(ws):
    data = ws / "data" / "rows.json"
    stat = data.stat()
    rows = [dict(r) for r in ROWS]
    rows[7]["Response"] = "Drug 8."  # one answer corrected, same length, same path, same mtime
    data.write_text(json.dumps(rows))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size
    run_case(ws, TRAIN, "holds a checkpoint of a different run (changed: data.content.rows.json 'sha256:")


def test_data_rewritten_with_the_same_rows_resumes(ws):
    """The fingerprint is the rows' bytes, not the file's time: a rewrite with the same content continues."""
    data = ws / "data" / "rows.json"
    data.write_bytes(data.read_bytes())
    os.utime(data, (1, 1))
    stopped_after_step_1(ws)
    res = run_cli(*TRAIN, cwd=ws, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {Path('run') / 'checkpoint-1'}" in res.stdout and "has no medsft identity" not in res.stderr
    assert json.loads((ws / "run" / "adapter" / "manifest.json").read_text())["train"]["global_step"] == 2


def stopped_after_step_1(ws: Path) -> None:
    shutil.rmtree(ws / "run" / "checkpoint-2")


@pytest.mark.parametrize("change,named", [
    (["--set", "lora.rank=8"], "lora.rank is 8 but the checkpoint's is 16"),
    (["--set", "lora.target_modules=[q_proj, v_proj]"], "lora.target_modules is ['q_proj', 'v_proj'] but the "
                                                        "checkpoint adapts ['down_proj', 'gate_proj', 'k_proj'"),
])
@pytest.mark.parametrize("resume", [[], ["--resume", "run/checkpoint-2"]], ids=["auto", "explicit"])
def test_an_identityless_checkpoint_that_cannot_load_is_refused_before_loading(ws, change, named, resume):
    drop_identities(ws)
    run_case(ws, [*TRAIN, *change, *resume], f"holds an adapter that cannot load into this recipe's LoRA ({named}")


def test_a_rank_change_with_an_explicit_path_is_refused_even_with_identity(ws):
    """An explicit PATH continues a changed run with a notice, but not into shapes its weights cannot fill."""
    run_case(ws, [*TRAIN, "--set", "lora.rank=8", "--resume", "run/checkpoint-2"],
             "lora.rank is 8 but the checkpoint's is 16")


def test_an_identityless_checkpoint_with_another_alpha_is_refused(ws):
    drop_identities(ws)
    run_case(ws, [*TRAIN, "--set", "lora.alpha=64"], "has no medsft identity and its adapter differs from the recipe "
                                                     "(lora.alpha is 64.0 but the checkpoint's is 32.0)")


def test_an_identityless_checkpoint_that_fits_resumes_with_a_notice(ws):
    drop_identities(ws)
    stopped_after_step_1(ws)
    res = run_cli(*TRAIN, cwd=ws, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "checkpoint-1 has no medsft identity" in res.stderr and "resuming from" in res.stdout
    assert json.loads((ws / "run" / "adapter" / "manifest.json").read_text())["train"]["global_step"] == 2
