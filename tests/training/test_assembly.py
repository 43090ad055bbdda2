"""The one run assembly (medsft/train/assembly.py): what `build(spec)` hands the trainer is what `medsft data` shows,
and the model is the one `medsft train` trains (LoRA on every 4-bit layer, kept in the trainable layout)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    from medsft.launch import detect as launch
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    out = tmp_path_factory.mktemp("assembly")
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [f"output.dir={out}", "training.max_steps=1"])
    with pytest.MonkeyPatch.context() as mp:  # 4-bit layers made as on an AVX512-BF16 CPU (inference layout on)
        mp.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: True)
        return assembly.build(resolve(recipe, launch.detect()))


def test_trainer_trains_on_what_medsft_data_shows(built):
    """Every train row, in order, with the same input_ids and labels as `medsft data --json` prints."""
    res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--json", "--split", "train", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shown = [json.loads(line) for line in res.stdout.splitlines()]
    train = built.trainer.train_dataset
    assert len(shown) == len(train) == len(built.data.prepared["train"]) > 0
    assert [ex["row_id"] for ex in shown] == train["row_id"]
    assert [ex["input_ids"] for ex in shown] == train["input_ids"]
    assert [ex["labels"] for ex in shown] == train["labels"]
    assert sum(map(len, train["input_ids"])) == sum(len(ex["input_ids"]) for ex in shown)  # tokens


def test_model_has_lora_on_every_4bit_layer_in_the_trainable_layout(built):
    import bitsandbytes as bnb

    from tests.bnb_layout import packed_4bit_layers

    model = built.trainer.model
    four_bit = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert four_bit, "the tiny recipe loads its linear layers in 4-bit"
    # all-linear: each 4-bit layer is the base layer of a LoRA layer (PEFT's `<name>.base_layer`)
    adapted = {name.removesuffix(".base_layer") for name in four_bit}
    assert all(name.endswith(".base_layer") for name in four_bit)
    assert adapted == {name for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained), "only the adapter trains"
    assert not any(m.support_avx512bf16_for_cpu for m in four_bit.values()), "the 4-bit guard did not run"
    built.trainer.evaluate()  # evaluation inside training must leave the trained layers as they are
    assert packed_4bit_layers(model) == []


def test_stages_stop_where_asked(built):
    """`medsft data` stops after the data, the bare-TRL baseline after the model: the same rows either way."""
    from medsft.train import assembly

    data_only = assembly.build(built.spec, stop_after="data")
    assert data_only.model is None and data_only.trainer is None
    assert data_only.data.prepared["train"]["input_ids"] == built.data.prepared["train"]["input_ids"]
    up_to_model = assembly.build(built.spec, stop_after="model")
    assert up_to_model.trainer is None and not hasattr(up_to_model.model, "peft_config")
    assert up_to_model.attention == built.attention and up_to_model.kernels == built.kernels
