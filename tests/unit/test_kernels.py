"""Optimized kernels: used on a GPU when installed, otherwise off with one notice, never an error."""

from __future__ import annotations

import pytest

from medsft.model.kernels import choose


@pytest.mark.parametrize("requested,cuda,liger,hub,expected,says", [
    ("off", True, True, True, "off", None),
    ("auto", False, True, True, "off", "no GPU"),
    ("liger", False, True, True, "off", "liger requested but there is no GPU"),
    ("auto", True, True, True, "liger", "kernels: liger"),
    ("auto", True, False, True, "off", "liger-kernel is not installed"),  # Hub kernels only when asked
    ("auto", True, False, False, "off", "liger-kernel is not installed"),
    ("liger", True, False, True, "off", "liger requested but not installed (pip install 'medsft[kernels]'"),
    ("hub", True, True, False, "off", "hub requested but not installed (pip install kernels"),
    ("hub", True, True, True, "hub", "kernels: hub"),
])
def test_choice(requested, cuda, liger, hub, expected, says):
    got = choose(requested, cuda, liger, hub)
    assert got.name == expected
    if says is None:
        assert got.notice is None
    else:
        assert says in got.notice


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
