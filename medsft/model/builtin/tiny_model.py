"""The embedded default model `builtin:tiny-qwen2`: a random-init Qwen2 of a few layers, with a
byte-level BPE tokenizer trained here on the generated rows.

Why: no model hub is reachable offline, yet a newcomer must run the whole pipeline on a laptop. The
model is a real architecture (Qwen2ForCausalLM, loadable by plain transformers) with a ChatML chat
template and `<think>`/`</think>` as single tokens, built deterministically on first use and cached
under `$MEDSFT_HOME` (default `~/.cache/medsft`). Several ranks may ask at once: a file lock and an
rename into place (medsft/io/outputs.py) make exactly one build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medsft.paths import medsft_home

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BUILTIN_PREFIX = "builtin:"
TINY_MODEL = "builtin:tiny-qwen2"
TINY_BUILD_VERSION = "2"  # bump when the built files change, so caches rebuild

PAD_TOKEN = "<|endoftext|>"
REASONING_TOKENS = ("<think>", "</think>")  # single tokens, as in Qwen3's vocabulary
VOCAB_SIZE = 2048


def is_builtin(name: str) -> bool:
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def builtin_model_dir(name: str) -> Path:
    """Local directory of a built-in model, built on first use."""
    if name != TINY_MODEL:
        raise ValueError(f"unknown built-in model {name!r}; the only one is {TINY_MODEL!r}")
    target = medsft_home() / "models" / f"tiny-qwen2-v{TINY_BUILD_VERSION}"
    if complete(target):
        return target
    from filelock import FileLock

    from medsft.io.outputs import atomic_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not complete(target):  # absent, or medsft's own cache left incomplete: built anew, renamed into place
            with atomic_dir(target) as tmp:
                build_tiny(tmp)
    return target


def complete(target: Path) -> bool:
    return all((target / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE over the generated corpus; any UTF-8 text still encodes (byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from medsft.model.builtin.tiny_data import corpus, generate
    from medsft.model.chat_templates import NAMED

    chatml = NAMED["chatml"]  # the template, its tokens and its end of turn are the named template's

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, *chatml.tokens, *REASONING_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(generate(2000, seed=1)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=chatml.end_of_turn,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=4096,
    )
    fast.chat_template = chatml.plain()
    return fast


def build_tiny(out_dir: Path) -> None:
    """Write tokenizer + random-init Qwen2 weights (safetensors) into `out_dir`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32", initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard progress bar on a user's first command says nothing
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)
