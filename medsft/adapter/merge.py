"""`medsft merge ADAPTER_DIR OUT_DIR`: the base in bf16 with the LoRA merged in, as plain safetensors.

Why: serving stacks (vLLM, TGI, llama.cpp converters) want one ordinary checkpoint, loadable with
transformers alone. The base is loaded unquantized in bf16 (merging into 4-bit weights would round the
update away), the adapter applied and merged, and the result written atomically with the tokenizer. With a
`model.chat_template`, the merged model holds the grown embeddings with the template's trained token
rows, and its generation config stops at the template's end-of-turn token as well as at the base's eos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsft.errors import MedsftError


def run_merge(adapter_dir: str | Path, out_dir: str | Path, evaluation: dict | None = None) -> Path:
    """The adapter merged into its base, written whole to `out_dir` with a model card (with `evaluation`, the
    run's held-out figures, when the command found them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medsft.adapter.card import write_card
    from medsft.adapter.load import attach, check_adapter_dir, recipe_of
    from medsft.io.outputs import atomic_dir
    from medsft.io.ownership import mark
    from medsft.model.load import offline_error, resolve_model_path

    adapter_dir = check_adapter_dir(adapter_dir)
    recipe = recipe_of(adapter_dir)
    out = check_merge_output(adapter_dir, out_dir)
    try:
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(recipe.model.name, recipe.model.revision), dtype=torch.bfloat16,
                                                    revision=recipe.model.revision,
                                                    trust_remote_code=recipe.model.trust_remote_code)
    except OSError as err:
        raise offline_error(recipe.model.name, err) from None
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    merged = attach(base, tokenizer, adapter_dir).merge_and_unload()
    if recipe.model.chat_template:
        stop_at_end_of_turn(merged, tokenizer)
    with atomic_dir(out, kind="merged") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_card(tmp, *card_inputs(adapter_dir), kind="merged", evaluation=evaluation)
        mark(tmp, "merged", adapter=str(adapter_dir))  # last: lists every file
    return out


def stop_at_end_of_turn(model: Any, tokenizer: Any) -> None:
    """Serving stacks stop at generation_config.eos_token_id: add the template's end-of-turn token (the
    tokenizer's eos after medsft/chat_templates.apply) to the base's."""
    config = model.generation_config
    ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id not in ids:
        config.eos_token_id = [tokenizer.eos_token_id, *ids]


def check_merge_output(adapter_dir: Path, out_dir: str | Path) -> Path:
    """The merged model's directory: new, empty, or an earlier medsft merge; never the adapter, the run that
    holds it, or a directory inside it (the merge would replace its own input)."""
    from medsft.io.outputs import check_writable_dir
    from medsft.io.ownership import check_ours, contains
    from medsft.paths import user_path

    out = Path(user_path(str(out_dir)))
    if contains(out, adapter_dir) or contains(adapter_dir, out):
        raise MedsftError(f"merge output {str(out)!r} would contain or sit inside its input {str(adapter_dir)!r}",
                          "choose a new directory, e.g. runs/<recipe>/merged")
    check_writable_dir(out, "the merge output")
    check_ours(out, "merged", "the merge output")
    return out


def card_inputs(adapter_dir: Path) -> tuple[dict, dict]:
    """(manifest, recipe) of an adapter, as its card reads them; empty when a file is missing."""
    import json

    import yaml

    try:
        manifest = json.loads((Path(adapter_dir) / "manifest.json").read_text(encoding="utf-8"))
        recipe = yaml.safe_load((Path(adapter_dir) / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}, {}
    return manifest, recipe
