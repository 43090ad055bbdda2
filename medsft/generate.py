"""Chat-templated generation that stops at the end-of-turn token, batched or streamed.

Why: both `infer` and `eval` need the prompt built exactly as in training (the chat template saved with
the adapter), greedy by default, stopping at end-of-turn, and the `<think>` part split from the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from medsft.formats import prompt_messages, split_reasoning


@dataclass
class Settings:
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8


def stop_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured])
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _decode(tokenizer, ids: list[int], stops: list[int]) -> tuple[str, bool]:
    stopped = False
    for i, t in enumerate(ids):
        if t in stops:
            ids, stopped = ids[:i], True
            break
    ids = [t for t in ids if t != tokenizer.pad_token_id]
    return tokenizer.decode(ids, skip_special_tokens=False), stopped


def generate_batch(model, tokenizer, questions: list[str], settings: Settings, system_prompt=None,
                   fmt: str = "think") -> list[dict]:
    """One record per question: question, text, reasoning, answer, well_formed, stopped, tokens, seconds."""
    import torch

    stops = stop_ids(tokenizer, model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    out = []
    try:
        for start in range(0, len(questions), settings.batch_size):
            chunk = questions[start:start + settings.batch_size]
            texts = [tokenizer.apply_chat_template(prompt_messages(q, system_prompt), add_generation_prompt=True,
                                                   tokenize=False) for q in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                     temperature=settings.temperature if settings.do_sample else None,
                                     top_p=settings.top_p if settings.do_sample else None,
                                     eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            seconds = (time.perf_counter() - t0) / len(chunk)
            for q, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:].tolist()):
                text, stopped = _decode(tokenizer, row, stops)
                parsed = split_reasoning(text, fmt)
                out.append({"question": q, "text": text, "reasoning": parsed.reasoning, "answer": parsed.answer,
                            "well_formed": parsed.well_formed, "stopped": stopped,
                            "tokens": len([t for t in row if t != tokenizer.pad_token_id]), "seconds": seconds})
    finally:
        tokenizer.padding_side = side
    return out


def stream_one(model, tokenizer, question: str, settings: Settings, console, system_prompt=None,
               fmt: str = "think") -> dict:
    """Generate one answer, printing tokens as they come (rich), reasoning dim and answer bold."""
    import threading

    import torch
    from transformers import TextIteratorStreamer

    stops = stop_ids(tokenizer, model)
    enc = tokenizer.apply_chat_template(prompt_messages(question, system_prompt), add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    kwargs = dict(**enc, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                  eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    t0 = time.perf_counter()
    result = {}

    def work():
        try:
            with torch.no_grad():
                result["ids"] = model.generate(**kwargs)[0, enc["input_ids"].shape[1]:].tolist()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which re-raises it
            result["error"] = err
            streamer.end()  # else the main thread waits for tokens forever

    thread = threading.Thread(target=work)
    thread.start()
    in_think = False
    end_strings = {tokenizer.decode([i]) for i in stops}
    for piece in streamer:
        for end in end_strings:
            piece = piece.replace(end, "")
        if "<think>" in piece:
            in_think = True
        style = "dim" if in_think else "bold"
        console.print(piece, end="", style=style, markup=False, highlight=False)
        if "</think>" in piece:
            in_think = False
    thread.join()
    if "error" in result:
        raise result["error"]
    console.print()
    text, stopped = _decode(tokenizer, result["ids"], stops)
    parsed = split_reasoning(text, fmt)
    return {"question": question, "text": text, "reasoning": parsed.reasoning, "answer": parsed.answer,
            "well_formed": parsed.well_formed, "stopped": stopped, "tokens": len(result["ids"]),
            "seconds": time.perf_counter() - t0}
