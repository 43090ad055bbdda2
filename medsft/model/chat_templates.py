"""The chat template a run trains with: the tokenizer's own, a named one (`chatml`, `llama3`), or a Jinja file.

Why: a base model's tokenizer (Llama-3.1-8B, Qwen3-*-Base without one, Mistral) ships no chat template, and
many users fine-tune base models; TRL (`chat_template_path`, `clone_chat_template`), axolotl
(`chat_template:`) and LLaMA-Factory (`template:`) all let them pick one. `model.chat_template` does here:

- a named template brings the special tokens it writes. Tokens the vocabulary lacks are added; the
  embedding matrix grows to hold them when it has no spare rows (medsft/model/load.py `fit_embeddings`), and
  the template's end-of-turn token becomes `eos` (generation stops on it, as TRL's clone_chat_template
  does). The rows of every token the template writes are trained through PEFT's `trainable_token_indices`
  (medsft/model/load.py `trainable_tokens`): in a base model they were never trained, whether just added or
  reserved (Llama 3's `<|eot_id|>`);
- a `.jinja` file is used as written; it must render a conversation (checked before torch is imported; a
  template that refuses system turns is accepted for data without them), and it must end an assistant turn
  with one token of the vocabulary, which becomes eos (`stop_token`);
- the template is saved with the adapter (`tokenizer.save_pretrained` writes chat_template.jinja), and
  infer/eval/merge read it from there.

Training every assistant turn of a conversation (`data.format: messages`) takes TRL's `assistant_only_loss`
path, which needs `{% generation %}` markers; `training_template` finds the variant with markers: the
template's own, medsft's (chatml_training.jinja, TRL's llama3_training.jinja), or TRL's
`get_training_chat_template` for the templates TRL knows, and checks that the end-of-turn token is inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsft.errors import MedsftError
from medsft.recipe.chat_template_value import PROBE, read_template


def _package_file(name: str) -> str:
    return (Path(__file__).parent / "templates" / name).read_text(encoding="utf-8")


def _trl_template(attribute: str) -> str:
    from medsft.upstream import trl_chat_template

    return trl_chat_template(attribute)


@dataclass(frozen=True)
class Named:
    plain: Callable[[], str]  # what the adapter carries and inference uses
    training: Callable[[], str]  # the same text with {% generation %} around what the model writes
    tokens: tuple[str, ...]  # the special tokens it writes
    end_of_turn: str
    bos: str | None = None  # written through `bos_token`: set when the tokenizer has none


NAMED = {
    "chatml": Named(lambda: _package_file("chatml.jinja"), lambda: _package_file("chatml_training.jinja"),
                    ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": Named(lambda: _trl_template("llama3_chat_template"), lambda: _trl_template("llama3_training_chat_template"),
                    ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
                    bos="<|begin_of_text|>"),
}


def template_text(value: str) -> str:
    return NAMED[value].plain() if value in NAMED else read_template(value)


def apply(tokenizer: Any, value: str) -> list[str]:
    """Give `tokenizer` the recipe's template; a named one also gets the special tokens it writes, its
    end-of-turn token as eos, and a bos when it uses one. Returns the tokens added to the vocabulary."""
    from tokenizers import AddedToken

    named = NAMED.get(value)
    tokenizer.chat_template = template_text(value)
    if named is None:
        tokenizer.eos_token = stop_token(tokenizer, value)
        return []
    vocab = tokenizer.get_vocab()
    added = [t for t in named.tokens if t not in vocab]
    if added:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in added], special_tokens=True)
    if named.bos and tokenizer.bos_token is None:
        tokenizer.bos_token = named.bos
    tokenizer.eos_token = named.end_of_turn
    return added


def stop_token(tokenizer: Any, value: str) -> str:
    """The token a template file ends an assistant turn with, which becomes eos (generation stops on it, as on
    a named template's end-of-turn). It must be one special or added token of the vocabulary: a marker the
    vocabulary lacks (`<|eot_id|>` written for a ChatML tokenizer) is tokenized as plain pieces and eos never
    follows an answer, so the model never learns to stop. Refused rather than added: which strings of an
    arbitrary Jinja file are markers is a guess; a named template adds its own tokens."""
    turns = [{"role": "user", "content": "medsft-probe-user"}, {"role": "assistant", "content": "medsft-probe-assistant"}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception as err:  # noqa: BLE001 - jinja2's many types: e.g. bos_token undefined for this tokenizer
        raise MedsftError(f"{value!r} does not render with this tokenizer "
                          f"({type(err).__name__}: {' '.join(str(err).split())[:160]})",
                          "fix the template for this tokenizer, or use " + " or ".join(NAMED),
                          "model.chat_template") from None
    after = text.split("medsft-probe-assistant", 1)[-1].strip()
    fix = ("write the end-of-turn with a token this tokenizer has (its eos is "
           f"{tokenizer.eos_token!r}), or use model.chat_template: {' or '.join(NAMED)} (which add their tokens)")
    if not after:
        raise MedsftError(f"{value!r} writes nothing after an assistant's message (no "
                          "end-of-turn token: the model would never learn to stop)", fix, "model.chat_template")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    whole = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if ids and ids[0] in whole:
        return tokenizer.convert_ids_to_tokens(ids[0])
    found = re.match(r"<[^<>\s]+>|\S+", after)
    assert found is not None  # `after` is stripped and not empty
    marker = found.group(0)
    pieces = len(tokenizer(marker, add_special_tokens=False)["input_ids"])
    raise MedsftError(f"{value!r} ends an assistant turn with {marker!r}, which is not a token "
                      f"of this vocabulary (it is read as {pieces} plain tokens, and no stop token follows the "
                      "answer: the model would never learn to stop)", fix, "model.chat_template")


def template_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the added/special tokens the tokenizer's template writes (PROBE rendered), sorted."""
    try:
        ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=True, return_dict=True)
    except Exception:  # noqa: BLE001 - a template that refuses a system turn: probe without it
        ids = tokenizer.apply_chat_template(PROBE[1:], add_generation_prompt=True, tokenize=True, return_dict=True)
    added = set(tokenizer.get_added_vocab().values())
    return sorted({i for i in ids["input_ids"] if i in added})


def renders_like(tokenizer: Any, text: str) -> bool:
    """The tokenizer's own template writes exactly what `text` writes (conversations with and without a
    system turn, with and without a generation prompt)."""
    for messages in (PROBE, PROBE[1:], PROBE[1:3]):
        for gen in (False, True):
            try:
                own = tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
                other = tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False,
                                                      chat_template=text)
            except Exception:  # noqa: BLE001 - either template refusing a probe means "not the same"
                return False
            if own != other:
                return False
    return True


def training_template(tokenizer: Any, where: str = "model.chat_template") -> str | None:
    """The template to tokenize conversations with for assistant-only loss (None: the tokenizer's own has
    `{% generation %}` markers). Raises MedsftError when there is none or it leaves the end-of-turn untrained."""
    from medsft.upstream import get_training_chat_template, has_generation_markers, is_stop_token_trained

    own = tokenizer.chat_template
    if has_generation_markers(own):
        chosen = None
    else:
        chosen = next((named.training() for named in NAMED.values()
                       if own == named.plain() or renders_like(tokenizer, named.plain())), None)
        if chosen is None:
            try:
                chosen = get_training_chat_template(tokenizer)
            except ValueError:
                raise MedsftError("the chat template has no {% generation %} markers, which data.format: messages "
                                  "needs to train every assistant turn (and TRL has no patched version of it)",
                                  f"set model.chat_template: {' or '.join(NAMED)}, or a .jinja file with "
                                  "{% generation %}…{% endgeneration %} around each assistant turn and its "
                                  "end-of-turn token", where) from None
    if not is_stop_token_trained(tokenizer, chosen):
        raise MedsftError("the chat template's {% generation %} block leaves out the assistant's end-of-turn token "
                          "(the model would never learn to stop)",
                          "move the end-of-turn token inside {% generation %}…{% endgeneration %}, or set "
                          f"model.chat_template: {' or '.join(NAMED)}", where)
    return chosen
