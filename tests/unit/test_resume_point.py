"""Which checkpoint `--resume auto` picks: the newest complete one; half-written ones are skipped."""

from __future__ import annotations

import pytest

from medsft.errors import MedsftError
from medsft.checkpoints import resume_point


def test_incomplete_checkpoints_are_skipped(tmp_path, capsys):
    for step, state in ((2, "{}"), (4, None), (6, '{"global_step": 6, "trunc')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-10.tmp").mkdir()  # not a checkpoint name
    assert resume_point("auto", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    err = capsys.readouterr().err  # notices go to stderr, like every other notice
    assert err.count("skipping incomplete checkpoint") == 2


def test_never_and_explicit(tmp_path):
    assert resume_point("never", str(tmp_path)) is None
    assert resume_point("auto", str(tmp_path / "missing")) is None
    with pytest.raises(MedsftError, match="not a complete checkpoint"):
        resume_point(str(tmp_path), str(tmp_path))
