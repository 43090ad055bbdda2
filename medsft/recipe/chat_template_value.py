"""`model.chat_template` checked before torch: one of the named templates medsft ships, or a Jinja file that
exists, is UTF-8 and renders a conversation showing every message.

Why here, in recipe/: the recipe's checks run before any model code, and the model layer reads recipe sections;
the named templates themselves (their text, tokens, training variants) are medsft/model/chat_templates.py's
`NAMED`, keyed by TEMPLATE_NAMES.
"""

from __future__ import annotations

from pathlib import Path

from medsft.errors import MedsftError, did_you_mean

TEMPLATE_NAMES = ("chatml", "llama3")  # the keys of medsft.model.chat_templates.NAMED
TEMPLATE_SUFFIXES = (".jinja", ".j2")
# A conversation every template must render (system, two user turns, an assistant turn between them).
PROBE = [{"role": "system", "content": "medsft-probe-system"}, {"role": "user", "content": "medsft-probe-user"},
         {"role": "assistant", "content": "medsft-probe-assistant"}, {"role": "user", "content": "medsft-probe-again"}]


def is_path(value: str) -> bool:
    return value not in TEMPLATE_NAMES and (Path(value).suffix.lower() in TEMPLATE_SUFFIXES or "/" in value
                                            or Path(value).exists())


def check_value(value: str, where: str = "") -> None:
    """model.chat_template before torch: a known name, or a Jinja file that exists and renders a conversation."""
    if value in TEMPLATE_NAMES:
        return
    if not is_path(value):
        raise MedsftError(f"model.chat_template {value!r} is not a template medsft knows",
                          f"use {' or '.join(TEMPLATE_NAMES)} ({did_you_mean(value, TEMPLATE_NAMES)}) or the path of a .jinja file",
                          where)
    path = Path(value)
    if not path.is_file():
        raise MedsftError(f"model.chat_template file {value!r} not found",
                          "check the path (relative paths are read from the current directory), or use "
                          + " or ".join(TEMPLATE_NAMES), where)
    if path.suffix.lower() not in TEMPLATE_SUFFIXES:
        raise MedsftError(f"model.chat_template {value!r} is not a .jinja file",
                          "point it at a Jinja chat template (.jinja or .j2)", where)
    text = read_template(value, where)
    problem = render_problem(text)
    if problem:
        raise MedsftError(f"model.chat_template {value!r} {problem}",
                          "fix the template (it receives `messages`, `add_generation_prompt`, `bos_token`, "
                          "`eos_token`), or use " + " or ".join(TEMPLATE_NAMES), where)


def read_template(value: str, where: str = "model.chat_template") -> str:
    try:
        return Path(value).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedsftError(f"model.chat_template {value!r} is not UTF-8 text", "save the template as UTF-8",
                          where) from None
    except OSError as err:  # gone since the recipe was read, a directory, no permission
        raise MedsftError(f"cannot read model.chat_template {value!r} ({err.strerror or type(err).__name__})",
                          "check the path and its permissions, or use " + " or ".join(TEMPLATE_NAMES), where) from None


def render_problem(text: str) -> str | None:
    """Why a template text cannot be trained with, or None: it must render PROBE, and show every message. A
    template that refuses system turns (Gemma's, Mistral's) is accepted when it renders PROBE without one: data
    without system turns trains with it (a row that has one is refused by name, medsft/data/tokenized.py)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    probe = PROBE
    for probe in (PROBE, PROBE[1:]):
        try:
            # transformers annotates it `-> str`; it returns (rendered conversations, generation indices)
            rendered, _ = render_jinja_template([probe], chat_template=text, add_generation_prompt=True,  # type: ignore[str-unpack]
                                                bos_token="", eos_token="")
            break
        except Exception as err:  # jinja2 raises many types (syntax, undefined, raise_exception)
            problem = f"does not render ({type(err).__name__}: {' '.join(str(err).split())[:160]})"
    else:
        return problem
    missing = [m["role"] for m in probe if m["content"] not in rendered[0]]
    if missing:
        return f"does not render the conversation (the {missing[0]} message is missing from its output)"
    return None
