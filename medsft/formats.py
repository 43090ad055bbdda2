"""The shape of a training example and of a model's answer: written once, read everywhere.

Why: training (medsft/data.py), `medsft data`, inference, evaluation and the answer extractor must agree
on how a question becomes a prompt and how reasoning and answer are laid out in the completion; when
they were written in two places they drifted. A format is the assistant turn's layout:

    think   <think>{Complex_CoT}</think>{Response}                  (medsft's default, Qwen3-style)
    huatuo  ## Thinking\\n\\n{Complex_CoT}\\n\\n## Final Response\\n\\n{Response}   (HuatuoGPT-o1's own)
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HUATUO_THINKING, HUATUO_FINAL = "## Thinking", "## Final Response"
FORMATS = ("think", "huatuo")


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    answer: str
    well_formed: bool  # the reasoning block is where the format puts it, closed, followed by an answer marker


def prompt_messages(question: str, system_prompt: str | None = None) -> list[dict]:
    """The conversation the model sees before it answers."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]


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
