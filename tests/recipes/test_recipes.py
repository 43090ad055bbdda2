"""Every recipe in recipes/ loads; overrides and the notebook's flat config.yaml behave as documented."""

from __future__ import annotations

import re
from itertools import takewhile
from pathlib import Path

import pytest

from medsft.errors import MedsftError
from medsft.recipe.files import NOTEBOOK_TARGETS, load_recipe
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def header_configs(path: Path) -> list[str]:
    """The accelerate configs a recipe's header comment tells its reader to launch it with."""
    header = "".join(takewhile(lambda line: line.startswith("#"), path.read_text().splitlines(True)))
    named = dict.fromkeys(re.findall(r"(?:accelerate_configs/)?([\w-]+\.yaml)", header))
    return [f"accelerate_configs/{n}" for n in named if (REPO / "accelerate_configs" / n).is_file()]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_passes_the_rule_book_on_the_launches_its_header_names(path):
    """What a recipe's header tells its reader to run is a run the rule book accepts (one GPU, and each named
    accelerate config; the embedded default on a CPU too), trained on the answer only."""
    from medsft.launch.detect import from_accelerate_config, from_env
    from medsft.train.runspec import resolve

    recipe = load_recipe(path)
    launches = [from_env({}, cuda=True, num_gpus=1)]
    launches += [from_accelerate_config(str(REPO / config)) for config in header_configs(path)]
    if recipe.model.name.startswith("builtin:"):
        launches.append(from_env({}, cuda=False, num_gpus=0))
    for launch in launches:
        spec = resolve(recipe, launch, "off")
        assert spec.recipe.training.completion_only_loss is True, launch.source
        assert spec.micro_batch >= 1 and spec.grad_accum >= 1


def test_set_overrides_with_validation(tmp_path):
    r = load_recipe(REPO / "recipes" / "tiny-cpu.yaml",
                    ["training.learning_rate=1e-4", "lora.rank=32", "training.report_to=[tensorboard]"])
    assert r.training.said("learning_rate") == 1e-4  # YAML reads 1e-4 as a string; it is coerced
    assert r.lora.rank == 32
    assert r.training.report_to == ["tensorboard"]
    with pytest.raises(MedsftError, match="lora.rank must be an integer"):
        load_recipe(REPO / "recipes" / "tiny-cpu.yaml", ["lora.rank=many"])


def test_defaults(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text("model:\n  name: Qwen/Qwen3-0.6B\n")
    r = load_recipe(p)
    assert r.data.source == "FreedomIntelligence/medical-o1-reasoning-SFT" and r.data.config == "en"
    assert r.training.said("loss_type") == "dft" and r.training.padding_free is True
    assert r.training.max_length == 2048 and r.training.checkpointing is None and r.training.precision is None
    assert r.quantization.bits == 4 and r.quantization.double_quant and r.quantization.quant_type == "nf4"
    assert r.model.trust_remote_code is False
    assert r.output.dir == "runs/mini" and r.adapter_dir == Path("runs/mini/adapter")
    assert r.data.split_seed == 816


def test_notebook_config(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("base_model_name: Qwen/Qwen3-0.6B\nadapter_dir_prefix: adapters\nlora_rank: 8\n"
                 "lora_alpha: 16\nbatch_size: '2'\nepochs_to_train: 3\nmax_output_length: 1024\n")
    r = load_recipe(p)
    assert r.model.name == "Qwen/Qwen3-0.6B"
    assert r.adapter_dir == Path("adapters/Qwen/Qwen3-0.6B")
    assert (r.lora.rank, r.lora.alpha, r.lora.dropout, r.lora.target_modules) == (8, 16, 0.05, NOTEBOOK_TARGETS)
    t = r.training.as_dict()
    assert (t["per_device_train_batch_size"], t["num_train_epochs"], t["max_length"]) == (2, 3, 1024)
    assert (t["learning_rate"], t["gradient_accumulation_steps"], t["logging_steps"]) == (2e-5, 4, 50)
    assert (t["eval_steps"], t["save_steps"], t["bf16"], t["loss_type"]) == (100, 100, True, "dft")
    assert r.output.dir == "./results"
    assert r.data.source == "FreedomIntelligence/medical-o1-reasoning-SFT"


def test_notebook_config_unknown_key(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("base_model_name: m\nadapter_dir_prefix: a\nlora_rnak: 8\n")
    with pytest.raises(MedsftError, match="did you mean 'lora_rank'"):
        load_recipe(p)
