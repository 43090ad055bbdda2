"""The shape of a training example and of a model's answer: written once, read everywhere.

Why: training (medsft/data/load.py), `medsft data`, inference, evaluation and the answer extractor must agree
on how a question becomes a prompt and how reasoning and answer are laid out in the completion, so it is
written here only. A format is the assistant turn's layout:

    think     <think>{Complex_CoT}</think>{Response}                  (medsft's default, Qwen3-style)
    huatuo    ## Thinking\\n\\n{Complex_CoT}\\n\\n## Final Response\\n\\n{Response}   (HuatuoGPT-o1's own)
    messages  a conversation as the dataset wrote it (OpenAI role/content or ShareGPT from/value turns);
              its assistant turns are read like `think` (a `## Final Response` text like `huatuo`)
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HUATUO_THINKING, HUATUO_FINAL = "## Thinking", "## Final Response"
# Dataset role names -> chat roles: OpenAI's own and ShareGPT's (`data.roles` adds to / overrides these).
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    answer: str
    well_formed: bool  # the reasoning block is where the format puts it, closed, followed by an answer marker


def prompt_messages(question: str, system_prompt: str | None = None) -> list[dict]:
    """The conversation the model sees before it answers."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]


def conversation(turns: Any, roles: dict | None = None) -> tuple[list[dict] | None, str | None]:
    """A dataset's conversation as chat messages ({role, content}), or why it cannot be trained on.

    Accepts OpenAI turns ({role, content}) and ShareGPT turns ({from, value}); roles are mapped through
    ROLES updated with `roles`. A trainable conversation has a user turn and an assistant turn, non-empty
    text in every turn, and a system turn only first (templates put it there)."""
    names = {**ROLES, **(roles or {})}
    if not isinstance(turns, (list, tuple)):
        return None, "conversation not a list"
    if not turns:
        return None, "empty conversation"
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None, "turn not a mapping"
        if turn.get("role") is not None or "content" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif turn.get("from") is not None or "value" in turn:
            role, content = turn.get("from"), turn.get("value")
        else:
            return None, "turn without role/content (or from/value)"
        if not isinstance(role, str) or role not in names:
            return None, f"unknown role {role!r}"
        if not isinstance(content, str):
            return None, f"non-string {names[role]} turn"
        if not content.strip():
            return None, f"empty {names[role]} turn"
        out.append({"role": names[role], "content": content})
    roles_seen = [m["role"] for m in out]
    if "system" in roles_seen[1:]:
        return None, "system turn after the first"
    if "assistant" not in roles_seen:
        return None, "no assistant turn"
    if "user" not in roles_seen:
        return None, "no user turn"
    return out, None


def completion_text(reasoning: str, response: str, fmt: str = "think") -> str:
    """The assistant turn the model is trained to write."""
    if fmt == "huatuo":
        return f"{HUATUO_THINKING}\n\n{reasoning}\n\n{HUATUO_FINAL}\n\n{response}"
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{response}"


def split_reasoning(text: str, fmt: str = "think") -> Parsed:
    """Reasoning apart from the answer, in the layout of `fmt` (a text in the other layout is still read)."""
    stripped = text.strip()
    if fmt == "huatuo" or (HUATUO_FINAL in stripped and THINK_CLOSE not in stripped):
        if HUATUO_FINAL in stripped:
            reasoning, answer = stripped.rsplit(HUATUO_FINAL, 1)
            well = stripped.startswith(HUATUO_THINKING) and stripped.count(HUATUO_FINAL) == 1
            return Parsed(reasoning.replace(HUATUO_THINKING, "", 1).strip(), answer.strip(), well)
        if fmt == "huatuo":
            return Parsed(stripped.replace(HUATUO_THINKING, "", 1).strip(), "", False)
    opens, closes = stripped.count(THINK_OPEN), stripped.count(THINK_CLOSE)
    if opens == 1 and closes == 1 and stripped.startswith(THINK_OPEN) and stripped.index(THINK_CLOSE) > 0:
        reasoning, answer = stripped[len(THINK_OPEN):].split(THINK_CLOSE, 1)
        return Parsed(reasoning.strip(), answer.strip(), True)
    if closes >= 1:  # some templates put <think> in the prompt; the answer still follows the last close
        reasoning, answer = stripped.rsplit(THINK_CLOSE, 1)
        return Parsed(reasoning.replace(THINK_OPEN, "").strip(), answer.strip(), False)
    return Parsed("", stripped.replace(THINK_OPEN, "").strip(), False)


def format_metrics(records: list[dict], tokenizer: Any = None, fmt: str = "think") -> dict:
    """How well generated records (generate.generate_batch's) keep the format: shares and mean lengths (tokens
    with a tokenizer, else characters); what `medsft eval` reports and the training callback logs."""
    if not records:
        return {}
    parsed = [split_reasoning(r["text"], fmt) for r in records]
    length = (lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])) if tokenizer else len
    return {
        "n": len(records),
        "well_formed_think": mean(p.well_formed for p in parsed),
        "non_empty_answer": mean(bool(p.answer.strip()) for p in parsed),
        "stopped_at_end_of_turn": mean(bool(r["stopped"]) for r in records),
        "format_compliance": mean(p.well_formed and bool(p.answer.strip()) and r["stopped"]
                                  for p, r in zip(parsed, records)),
        "mean_reasoning_length": mean(length(p.reasoning) for p in parsed),
        "mean_answer_length": mean(length(p.answer) for p in parsed),
    }
