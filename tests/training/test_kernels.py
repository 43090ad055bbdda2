"""Optimized kernels: used on a GPU when installed, otherwise off with one notice, never an error."""

from __future__ import annotations

import pytest

from medsft.model.kernels import choose

REQUESTS = ("off", "auto", "liger", "hub")
SITUATIONS = [(cuda, liger, hub) for cuda in (True, False) for liger in (True, False) for hub in (True, False)]


@pytest.mark.parametrize("requested", REQUESTS)
@pytest.mark.parametrize("cuda,liger,hub", SITUATIONS)
def test_a_request_is_met_where_it_can_run_and_otherwise_says_why(requested, cuda, liger, hub):
    """Whatever is asked on whatever machine: never an error; a kernel only where it runs (a GPU) and is
    installed; off unasked stays silent; anything else not met as written says so, with what to install."""
    got = choose(requested, cuda, liger, hub)
    installed = {"liger": liger, "hub": hub}
    if requested == "off":
        assert got.name == "off" and got.notice is None
        return
    if not cuda:
        assert got.name == "off" and "no GPU" in got.notice
        return
    if requested == "auto":  # Liger when installed; Hub kernels are fetched from the hub, so never unasked
        assert got.name == ("liger" if liger else "off")
    else:
        assert got.name == (requested if installed[requested] else "off")
    assert got.notice.startswith(f"kernels: {got.name}" if got.name != "off" else "kernels: ")
    if got.name == "off":
        assert "pip install" in got.notice and "not installed" in got.notice


def test_liger_reaches_the_trainer_only_when_chosen():
    """The SFTConfig medsft builds turns transformers' Liger switch on for "liger" and for nothing else."""
    from medsft.launch.detect import detect
    from medsft.recipe.files import load_recipe
    from medsft.train.runspec import resolve
    from tests.conftest import REPO

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", ["model.kernels=liger"])
    launch = detect()
    assert resolve(recipe, launch, "liger").sft_config().use_liger_kernel is True
    assert resolve(recipe, launch, "off").sft_config().use_liger_kernel is False
    assert resolve(recipe, launch, "hub").sft_config().use_liger_kernel is False
