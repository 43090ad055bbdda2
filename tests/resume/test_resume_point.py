"""Which checkpoint `--resume auto` picks: the newest complete one; half-written ones are skipped."""

from __future__ import annotations

import pytest

from medsft.errors import MedsftError
from medsft.io.checkpoints import resume_point


def test_incomplete_checkpoints_are_skipped(tmp_path):
    complete_checkpoint(tmp_path / "checkpoint-2")
    for step, state in ((4, None), (6, '{"global_step": 6, "trunc')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-10.tmp").mkdir()  # not a checkpoint name
    said: list[str] = []
    assert resume_point("auto", str(tmp_path), notify=said.append) == str(tmp_path / "checkpoint-2")
    assert sum("skipping incomplete checkpoint" in line for line in said) == 2, said


def test_never_and_explicit(tmp_path):
    assert resume_point("never", str(tmp_path)) is None
    assert resume_point("auto", str(tmp_path / "missing")) is None
    with pytest.raises(MedsftError, match="not a complete checkpoint"):
        resume_point(str(tmp_path), str(tmp_path))


def complete_checkpoint(path, weights: bytes | None = None):
    """A checkpoint as Trainer writes it: state, adapter weights, optimizer (a torch zip archive)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text('{"global_step": 1}')
    save_file({"w": torch.zeros(2)}, str(path / "adapter_model.safetensors"))
    torch.save({"state": 1}, path / "optimizer.pt")
    if weights is not None:
        (path / "adapter_model.safetensors").write_bytes(weights)


def test_damaged_checkpoints_are_skipped(tmp_path):
    from medsft.io.checkpoints import is_complete

    complete_checkpoint(tmp_path / "checkpoint-2")
    complete_checkpoint(tmp_path / "checkpoint-4", weights=b"\x00" * 20)  # truncated weights
    complete_checkpoint(tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-6" / "optimizer.pt").write_bytes((tmp_path / "checkpoint-6" / "optimizer.pt").read_bytes()[:40])
    complete_checkpoint(tmp_path / "checkpoint-8")
    (tmp_path / "checkpoint-8" / "adapter_model.safetensors").unlink()  # no weights at all
    assert is_complete(tmp_path / "checkpoint-2")
    said: list[str] = []
    assert resume_point("auto", str(tmp_path), notify=said.append) == str(tmp_path / "checkpoint-2")
    assert sum("skipping incomplete checkpoint" in line for line in said) == 3, said


def test_changed_run_is_refused_with_what_changed(tmp_path):
    import json

    complete_checkpoint(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "medsft-run.json").write_text(json.dumps({"lora": {"rank": 16}, "model": {"name": "a"}}))
    with pytest.raises(MedsftError, match="changed: lora.rank 16 → 8"):
        resume_point("auto", str(tmp_path), {"lora": {"rank": 8}, "model": {"name": "a"}})
    assert resume_point("auto", str(tmp_path), {"lora": {"rank": 16}, "model": {"name": "a"}}) == str(tmp_path / "checkpoint-2")
