"""Model cards in the Hub's convention: a YAML header naming the hub base model, the hub datasets and the
adapter tag; local paths and medsft's built-in model are never written as ids."""

from __future__ import annotations

import yaml

from medsft.adapter.card import card

MANIFEST = {"data": {"sources": {"FreedomIntelligence/medical-o1-reasoning-SFT": {"train": 16000, "format": "think"},
                                 "/data/private/rows.json": {"train": 200, "format": "think"}},
                     "token_lengths": {"train": {"count": 16200, "median": 612, "max_length": 2048}}},
            "train": {"global_step": 500}, "micro_batch": 4, "gradient_accumulation": 8,
            "launch": {"world_size": 4, "described": "DDP, 4 processes"}, "precision": "bf16",
            "versions": {"trl": "1.16.0"}}
RECIPE = {"model": {"name": "Qwen/Qwen3-8B"}, "lora": {"rank": 16, "alpha": 32, "dropout": 0.05,
                                                       "target_modules": "all-linear"},
          "quantization": {"bits": 4, "quant_type": "nf4"}, "training": {"loss_type": "dft", "learning_rate": 2e-4}}


def test_hub_ids_in_the_header_local_paths_nowhere():
    text = card(MANIFEST, RECIPE, license="apache-2.0")
    header = yaml.safe_load(text.split("---")[1])
    assert header["base_model"] == "Qwen/Qwen3-8B" and header["library_name"] == "peft"
    assert header["datasets"] == ["FreedomIntelligence/medical-o1-reasoning-SFT"] and header["license"] == "apache-2.0"
    assert "base_model:adapter:Qwen/Qwen3-8B" in header["tags"]
    assert "/data/private" not in text and "a local file, rows.json" in text  # named, but never by its path
    assert "| optimizer steps | 500 |" in text and "4 × 8 × 4" in text


def test_a_local_base_model_is_not_an_id():
    text = card(MANIFEST, {**RECIPE, "model": {"name": "/models/llama"}}, kind="merged")
    header = yaml.safe_load(text.split("---")[1])
    assert "base_model" not in header and header["library_name"] == "transformers" and "license" not in header
    assert "/models/llama" not in text and "None" not in text


def test_the_loss_row_says_which_tokens_were_trained():
    assert "| loss | dft, completion only |" in card(MANIFEST, RECIPE)
    every = {**RECIPE, "training": {**RECIPE["training"], "completion_only_loss": False}}
    assert "| loss | dft, every token |" in card(MANIFEST, every)
