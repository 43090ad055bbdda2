"""Tokenizer and (quantized) base model, loaded the way the resolved run requires.

Why: quantization, attention kernel and placement are where QLoRA runs fail first. The attention is
chosen before loading (medsft/model/attention.py: flash-attn 2, torch's varlen kernel or row-by-row SDPA, said
in one notice), so transformers never tries to fetch a kernel from the hub. `trust_remote_code` is off
unless the recipe turns it on, and then it is announced.
The tokenizer rules (chat template required, pad token) live here for training and inference alike, with
the recipe's `model.chat_template` applied (medsft/model/chat_templates.py) and the embedding rows its tokens need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError
from medsft.model.builtin.tiny_model import builtin_model_dir, is_builtin

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig

    from medsft.launch.placement import Placement
    from medsft.model.attention import Choice
    from medsft.recipe.schema import ModelSection, QuantizationSection


def resolve_model_path(name: str, revision: str | None = None) -> str:
    """A built-in model becomes its (built-on-first-use) local directory, a local one its path; a hub id is
    checked first (medsft/hub.py: gated, missing, offline or unreachable is one line, before any download)."""
    if is_builtin(name):
        try:
            return str(builtin_model_dir(name))
        except ValueError as err:
            raise MedsftError(str(err), "use builtin:tiny-qwen2 or a hub id", "model.name") from None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    from medsft.hub import check_available

    check_available(name, "model", revision, "model.name")
    return name


def offline_error(name: str, err: Exception) -> MedsftError:
    text = " ".join(str(err).split())[:200]
    from medsft.hub import ways_in

    return MedsftError(f"base model {name!r} cannot be loaded ({type(err).__name__}: {text})",
                       ways_in(name, "model", "model.name"), "model.name")


def ready_tokenizer(tok: Any, name: str) -> Any:
    """The rules every medsft tokenizer follows: a chat template, and a pad token.

    pad = eos is safe because TRL masks labels by position, not by pad id: the closing end-of-turn token
    stays trained (tests/data/test_labels.py), so generation stops."""
    if not getattr(tok, "chat_template", None):
        raise MedsftError(f"the tokenizer of {name!r} has no chat template (a base model's usually has none)",
                          "set model.chat_template: chatml (or llama3, or the path of a .jinja file), or use an "
                          "instruct/chat model (e.g. Qwen/Qwen3-0.6B)", "model.name")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(model_cfg: ModelSection) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(model_cfg.name, model_cfg.revision), revision=model_cfg.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise offline_error(model_cfg.name, err) from None
    if model_cfg.chat_template:
        from medsft.model.chat_templates import apply

        apply(tok, model_cfg.chat_template)
    return ready_tokenizer(tok, model_cfg.name)


def fit_embeddings(model: Any, tokenizer: Any, *, training: bool = True) -> int:
    """Grow the embedding matrix (and an untied output layer) to hold every token of the tokenizer; returns the
    rows added. Only when the vocabulary outgrew it: most models keep spare rows (Qwen: 151936 for 151669
    tokens), and a matrix is never shrunk. New rows start at the mean embedding in training (transformers'
    `mean_resizing`); for inference their trained values come from the adapter (medsft/model/chat_templates.py)."""
    import torch

    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)  # mean resizing samples the new rows: the same on every rank and every run
        model.resize_token_embeddings(len(tokenizer), mean_resizing=training)
    return len(tokenizer) - rows


def trainable_tokens(model: Any, tokenizer: Any, model_cfg: ModelSection) -> dict[str, list[int]] | None:
    """PEFT `trainable_token_indices` for a run with `model.chat_template`: the rows of the tokens the template
    writes, in the input embedding and, when it is not tied to it, in the output layer. A base model never
    trained them (new, or reserved like Llama 3's `<|eot_id|>`); LoRA alone would leave them as they are.
    Cost: 2 × tokens × hidden parameters (Llama-3.1-8B with llama3: 4 tokens, 32k), saved in the adapter."""
    if not model_cfg.chat_template:
        return None
    from medsft.model.chat_templates import template_token_ids

    ids = template_token_ids(tokenizer)
    if not ids:
        return None
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    out = {names[id(model.get_input_embeddings())]: ids}
    output = model.get_output_embeddings()
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    if output is not None and not tied:
        out[names[id(output)]] = ids
    return out


def quantization_config(q: QuantizationSection, quant_storage: str, model_dtype: str) -> BitsAndBytesConfig | None:
    import torch
    from transformers import BitsAndBytesConfig

    if q.bits is None:
        return None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype or model_dtype),
        bnb_4bit_quant_storage=getattr(torch, quant_storage),
    )


def load_model(m: ModelSection, quantization: QuantizationSection, placement: Placement, cuda: bool,
               attention: Choice | None = None) -> tuple[Any, str]:
    """The base model, quantized as the quantization section says and placed as the placement says, with
    `attention` (the run's choice, else chosen here). Returns (model, the attention's name)."""
    import torch
    from transformers import AutoModelForCausalLM

    from medsft.model import attention as attention_mod

    if attention is None:
        attention = attention_mod.choose(m.attn_implementation,
                                         attention_mod.detect(cuda and torch.cuda.is_available(), m.dtype))
    attention_mod.register()
    attn = attention.name
    kwargs = dict(
        dtype=getattr(torch, m.dtype),
        attn_implementation=attention.implementation,
        quantization_config=quantization_config(quantization, placement.quant_storage, m.dtype),
        trust_remote_code=m.trust_remote_code,
        revision=m.revision,
        use_cache=False,  # training; generation turns it back on
    )
    if placement.device_map is not None:
        kwargs["device_map"] = placement.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(m.name, m.revision), **kwargs)
    except OSError as err:
        raise offline_error(m.name, err) from None
    return model, attn
