"""Model cards (the README.md of an adapter or a merged model) in the Hub's convention.

Why: PEFT's own card is a template of "[More Information Needed]" with a local path as `base_model`; a card that
says what was trained, on what, how, and how to load it with plain PEFT is what a reader of a published adapter
needs. Only hub ids are named: a local path or medsft's built-in model says so in words.
"""

from __future__ import annotations

from pathlib import Path

TAGS = ["medsft", "medical", "medical-reasoning", "lora", "qlora", "sft", "trl", "peft"]


def is_hub_id(name: str) -> bool:
    """An org/name id the card can link to on the hub."""
    from medsft import hub

    return isinstance(name, str) and "/" in name and hub.is_hub_id(name)


def card(manifest: dict, recipe: dict, *, kind: str = "adapter", evaluation: dict | None = None,
         license: str | None = None) -> str:
    """The card's text. `manifest`/`recipe`: the adapter's manifest.json and recipe.yaml; `evaluation`: the run's
    eval.json when it ran; `license`: the base model's, when it states one."""
    import yaml

    model = recipe["model"]["name"]
    sources = list((manifest.get("data") or {}).get("sources") or {})
    header: dict = {}
    if is_hub_id(model):
        header["base_model"] = model
    header["library_name"] = "peft" if kind == "adapter" else "transformers"
    hub_data = [s for s in sources if is_hub_id(s)]
    if hub_data:
        header["datasets"] = hub_data
    if license:
        header["license"] = license
    header["pipeline_tag"] = "text-generation"
    header["tags"] = TAGS + ([f"base_model:adapter:{model}"] if kind == "adapter" and is_hub_id(model) else [])
    lora, quant, training = recipe["lora"], recipe["quantization"], recipe.get("training") or {}
    train = manifest.get("train") or {}
    lengths = ((manifest.get("data") or {}).get("token_lengths") or {}).get("train") or {}
    base = model if is_hub_id(model) else ("medsft's built-in tiny random model (a pipeline check, not a model to "
                                           "use)" if model.startswith("builtin:") else "a local model")
    bits = f"{quant['bits']}-bit {quant.get('quant_type', '')} (bitsandbytes)" if quant.get("bits") else "not quantized"
    rows = "\n".join(f"| {s if is_hub_id(s) or s.startswith('builtin:') else 'a local file, ' + Path(s).name} | "
                     f"{v.get('train', '?')} | {v.get('format', '?')} |"
                     for s, v in (manifest.get("data") or {}).get("sources", {}).items())
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {'LoRA adapter' if kind == 'adapter' else 'Merged model'} for medical reasoning: {base}", "",
        f"{'A LoRA adapter' if kind == 'adapter' else 'The base weights with a LoRA adapter merged in'}, trained with "
        "medsft (QLoRA supervised fine-tuning on TRL's SFTTrainer) to answer medical questions "
        "as `<think>reasoning</think>answer`, with the loss on the answer only.", "",
        "## Training", "",
        "| | |", "|---|---|",
        f"| base model | {base} |", f"| quantization | {bits} |",
        f"| LoRA | rank {lora['rank']}, alpha {lora['alpha']}, dropout {lora['dropout']}, targets "
        f"{lora['target_modules']} |",
        f"| loss | {training.get('loss_type', 'nll')}, "
        f"{'completion only' if training.get('completion_only_loss', True) is not False else 'every token'} |",
        f"| optimizer steps | {train.get('global_step', '?')} |",
        f"| micro-batch × accumulation × processes | {manifest.get('micro_batch', '?')} × "
        f"{manifest.get('gradient_accumulation', '?')} × {(manifest.get('launch') or {}).get('world_size', '?')} |",
        f"| learning rate | {training.get('learning_rate', '?')} |",
        f"| max length | {lengths.get('max_length', training.get('max_length', '?'))} tokens (longer rows dropped, "
        "not truncated) |",
        f"| training rows | {lengths.get('count', '?')} (median {lengths.get('median', '?')} tokens) |",
        f"| launch | {(manifest.get('launch') or {}).get('described', '?')} |",
        f"| precision | {manifest.get('precision', '?')} |", "",
        "| data source | training rows | format |", "|---|---|---|", rows, "",
    ]
    if evaluation:
        lines += ["## Evaluation (held-out test split of the run)", "", "| metric | adapter | base |", "|---|---|---|"]
        for section, values in (evaluation.get("adapter") or {}).items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("n", "tokens"):
                    other = ((evaluation.get("base") or {}).get(section) or {}).get(key)
                    lines.append(f"| {section}: {key} | {value:.3f} | {'' if other is None else f'{other:.3f}'} |")
        lines.append("")
    load = model if is_hub_id(model) else "BASE_MODEL"
    lines += ["## How to use", "", "```python"]
    if kind == "adapter":
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{load}", dtype="auto")',
                  'model = PeftModel.from_pretrained(base, "PATH_OR_REPO_OF_THIS_ADAPTER")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_OF_THIS_ADAPTER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO_OF_THIS_MODEL", dtype="auto")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_OF_THIS_MODEL")']
    lines += ["```", "", "The tokenizer carries the chat template the model was trained with; generate from "
              "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`.", "",
              "## Versions", "", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()), ""]
    return "\n".join(lines)


def base_license(model: str) -> str | None:
    """The `license` a hub base model's own card states (its README.md front matter in the local hub cache)."""
    import yaml

    if not is_hub_id(model):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "README.md")
        text = Path(found).read_text(encoding="utf-8") if isinstance(found, str) else ""
        front = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, ValueError, yaml.YAMLError, IndexError):
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return value if isinstance(value, str) else None


def write_card(directory: Path, manifest: dict, recipe: dict, *, kind: str = "adapter",
               evaluation: dict | None = None) -> None:
    """README.md of `directory` (an adapter or merged model being written), replacing PEFT's template."""
    if not recipe:
        return
    text = card(manifest, recipe, kind=kind, evaluation=evaluation, license=base_license(recipe["model"]["name"]))
    (Path(directory) / "README.md").write_text(text, encoding="utf-8")
