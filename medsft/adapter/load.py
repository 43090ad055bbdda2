"""Load a trained adapter directory the way it was trained: base model, quantization, dtype, tokenizer.

Why: inference and evaluation must see the model training saw. The adapter directory carries the
resolved recipe (recipe.yaml) and the manifest, so nothing has to be remembered or passed again. The
tokenizer is the adapter's own (chat template as trained); when training added tokens for
`model.chat_template`, the base's embeddings are grown to the same size before the adapter is loaded
(`attach`), and the trained rows come from the adapter (PEFT's trainable tokens; the whole matrices too
when PEFT saved them because the vocabulary grew).
Bad directories (missing, no adapter files, corrupted weights) are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from peft import PeftModel

    from medsft.launch.detect import Launch
    from medsft.recipe.schema import Recipe

REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json")


def check_adapter_dir(path: str | Path) -> Path:
    """A complete LoRA adapter written by `medsft train`, checked before anything heavy is imported."""
    from medsft.paths import user_path

    p = Path(user_path(str(path)))
    if not p.is_dir():
        raise MedsftError(f"adapter directory {str(p)!r} not found", "pass the adapter/ directory a training wrote")
    missing = [f for f in REQUIRED if not (p / f).is_file()]
    if missing:
        raise MedsftError(f"{str(p)!r} has no {', '.join(missing)}", "pass the adapter/ directory a training wrote "
                          "(runs/<recipe>/adapter)")
    try:
        config = json.loads((p / "adapter_config.json").read_text())
        from safetensors import safe_open

        with safe_open(str(p / "adapter_model.safetensors"), framework="pt") as fh:
            if not list(fh.keys()):
                raise ValueError("no tensors")
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise MedsftError(f"{str(p)!r} holds a corrupted adapter ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:120]})", "re-run training, or restore the file") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise MedsftError(f"{str(p)!r} is not a LoRA adapter (peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})",
                          "pass an adapter directory written by medsft train")
    recipe_of(p)  # the recipe it was trained with must still validate
    return p


def recipe_of(adapter_dir: Path) -> Recipe:
    """The recipe the adapter was trained with (recipe.yaml), as a Recipe."""
    from medsft.recipe.schema import build

    path = adapter_dir / "recipe.yaml"
    if not path.is_file():
        raise MedsftError(f"{str(adapter_dir)!r} has no recipe.yaml", "pass a directory written by medsft train")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MedsftError(f"{str(path)!r} is not valid YAML", "restore the recipe.yaml the training wrote") from None
    if not isinstance(raw, dict):
        raise MedsftError(f"{str(path)!r} is not a recipe", "restore the recipe.yaml the training wrote")
    carried_template(raw, adapter_dir)
    # the adapter travels without its training data: infer, merge and benchmarks never read it
    return build({k: v for k, v in raw.items() if v is not None}, str(path), data_files=False)


def carried_template(raw: dict, adapter_dir: Path) -> None:
    """A template file named by model.chat_template need not exist where the adapter is used: the adapter
    carries the template (chat_template.jinja), so that copy stands in for a missing file."""
    model = raw.get("model")
    value = model.get("chat_template") if isinstance(model, dict) else None
    carried = adapter_dir / "chat_template.jinja"
    if (isinstance(model, dict) and isinstance(value, str) and not Path(value).expanduser().exists()
            and carried.is_file()):
        from medsft.recipe.chat_template_value import is_path

        if is_path(value):
            model["chat_template"] = str(carried)


def attach(base: Any, tokenizer: Any, adapter_dir: str | Path) -> PeftModel:
    """The adapter on `base`, embeddings first grown to the adapter's vocabulary (a chat template's tokens)."""
    from peft import PeftModel

    from medsft.model.load import fit_embeddings

    fit_embeddings(base, tokenizer, training=False)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def adapter_tokenizer(adapter_dir: str | Path, recipe: Recipe) -> Any:
    """The tokenizer as trained (its chat template included), ready for the base model."""
    from transformers import AutoTokenizer

    from medsft.model.load import ready_tokenizer

    return ready_tokenizer(AutoTokenizer.from_pretrained(adapter_dir), recipe.model.name)


def inference_launch(data_parallel: bool) -> Launch:
    """Where this process's copy of the model goes. One lone process (placed over every visible GPU), or,
    data-parallel under a multi-GPU `accelerate launch`, a whole replica on this rank's GPU: placement's DDP
    row whatever the accelerate config (a lone process's placement would spread every rank's copy over all
    the GPUs)."""
    import torch

    from medsft.launch.detect import Launch, from_env

    cuda = torch.cuda.is_available()
    num_gpus = torch.cuda.device_count() if cuda else 0
    lone = from_env({}, cuda=cuda, num_gpus=num_gpus)
    launch = from_env(cuda=cuda, num_gpus=num_gpus) if data_parallel else lone
    if launch.world_size == 1 or not launch.cuda:
        return lone
    return Launch(world_size=launch.world_size, rank=launch.rank, local_rank=launch.local_rank, distributed="ddp",
                  cuda=True, num_gpus=launch.num_gpus)


def load_for_inference(adapter_dir: str | Path, *, use_adapter: bool = True, data_parallel: bool = False
                       ) -> tuple[Any, Any, Recipe]:
    """(model, tokenizer, recipe): the quantized base as trained, with the adapter unless told not to; one
    replica per rank when `data_parallel` (inference_launch)."""
    from medsft.launch.placement import decide
    from medsft.model import load as model_mod

    adapter_dir = check_adapter_dir(adapter_dir)
    recipe = recipe_of(adapter_dir)
    launch = inference_launch(data_parallel)
    placement = decide(launch, bits=recipe.quantization.bits, dtype=recipe.model.dtype)
    tokenizer = adapter_tokenizer(adapter_dir, recipe)
    base, _ = model_mod.load_model(recipe.model, recipe.quantization, placement, launch.cuda)
    base.config.use_cache = True
    if not use_adapter:
        model_mod.fit_embeddings(base, tokenizer, training=False)  # the template's tokens must have rows
        return base.eval(), tokenizer, recipe
    return attach(base, tokenizer, adapter_dir).eval(), tokenizer, recipe
