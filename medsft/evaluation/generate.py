"""Chat-templated generation that stops at the end-of-turn token: batched, data-parallel, or streamed.

Why: `infer`, `eval` and `eval --benchmark` need the prompt built exactly as in training (the chat
template saved with the adapter), greedy by default, stopping at end-of-turn, and the `<think>` part
split from the answer. Reasoning traces are long (~700 tokens, up to 2,048), so batches are cut from
prompts sorted by length (little left padding) and, under `accelerate launch`, whole batches are dealt
to the ranks: a batch holds the same prompts whatever the number of processes, so greedy answers do not
depend on it, and a sampled batch is seeded by its number, so sampled answers do not either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from medsft.data.formats import prompt_messages, split_reasoning

if TYPE_CHECKING:
    from vllm import LLM

    from medsft.recipe.schema import Recipe

Advance = Callable[[int], None]  # `advance(n)`: n more items done
Progress = Callable[[str, int], AbstractContextManager[Advance]]  # `progress(label, total)` yields an Advance


@dataclass
class Settings:
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8
    seed: int | None = None  # transformers.set_seed before generating (sampling reproducibility)


# the papers' benchmark sampling (HuatuoGPT-o1's evaluation): `medsft eval --benchmark` without flags
PAPERS = Settings(max_new_tokens=2048, do_sample=True, temperature=0.5, top_p=0.9, seed=42)


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """eos, the model's configured eos ids, and every named template's end of turn the vocabulary holds (a
    tokenizer whose eos is not its template's end of turn still stops at the turn's end)."""
    from medsft.model.chat_templates import NAMED

    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured])
    for token in sorted({named.end_of_turn for named in NAMED.values()}):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _decode(tokenizer: Any, ids: list[int], stops: list[int]) -> tuple[str, bool]:
    stopped = False
    for i, t in enumerate(ids):
        if t in stops:
            ids, stopped = ids[:i], True
            break
    ids = [t for t in ids if t != tokenizer.pad_token_id]
    return tokenizer.decode(ids, skip_special_tokens=False), stopped


def _record(question: str, text: str, stopped: bool, tokens: int, seconds: float, fmt: str) -> dict:
    parsed = split_reasoning(text, fmt)
    return {"question": question, "text": text, "reasoning": parsed.reasoning, "answer": parsed.answer,
            "well_formed": parsed.well_formed, "stopped": stopped, "tokens": tokens, "seconds": seconds}


def chat_prompts(tokenizer: Any, questions: list[str], system_prompt: str | None = None) -> list[str]:
    return [tokenizer.apply_chat_template(prompt_messages(q, system_prompt), add_generation_prompt=True,
                                          tokenize=False) for q in questions]


def _prompts_and_lengths(tokenizer: Any, questions: list[str], system_prompt: str | None = None
                         ) -> tuple[list[str], list[int]]:
    texts = chat_prompts(tokenizer, questions, system_prompt)
    return texts, [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices cut into batches of similar length, longest first (an out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their order
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@contextmanager
def no_progress(label: str, total: int) -> Iterator[Advance]:
    """The default `progress` of generate_parallel: nothing shown (a command passes medsft/views.py's bar)."""
    yield lambda n: None


def generate_batch(model: Any, tokenizer: Any, questions: list[str], settings: Settings,
                   system_prompt: str | None = None, fmt: str = "think", advance: Advance | None = None) -> list[dict]:
    """One record per question, in the questions' order: question, text, reasoning, answer, well_formed,
    stopped, tokens, seconds. Batches are length-sorted and left-padded; `advance(n)` after each (a progress bar)."""
    import torch

    if settings.seed is not None:
        from transformers import set_seed

        set_seed(settings.seed)
    stops = stop_ids(tokenizer, model)
    texts, lengths = _prompts_and_lengths(tokenizer, questions, system_prompt)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    out: list[dict | None] = [None] * len(questions)
    try:
        for batch in length_sorted_batches(lengths, settings.batch_size):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                     temperature=settings.temperature if settings.do_sample else None,
                                     top_p=settings.top_p if settings.do_sample else None,
                                     eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            seconds = (time.perf_counter() - t0) / len(batch)
            for i, row in zip(batch, gen[:, enc["input_ids"].shape[1]:].tolist()):
                text, stopped = _decode(tokenizer, row, stops)
                out[i] = _record(questions[i], text, stopped, len([t for t in row if t != tokenizer.pad_token_id]),
                                 seconds, fmt)
            if advance is not None:
                advance(len(batch))
    finally:
        tokenizer.padding_side = side
    return cast("list[dict]", out)  # every question is in one batch


def generate_parallel(model: Any, tokenizer: Any, questions: list[str], settings: Settings,
                      system_prompt: str | None = None, fmt: str = "think", label: str = "generating",
                      progress: Progress = no_progress) -> list[dict]:
    """generate_batch over every process of an `accelerate launch` (one process works too): the
    length-sorted batches are dealt round-robin, batch k seeded with seed + k, and the records gathered
    back into the questions' order on every rank. `progress(label, total)`: a context yielding `advance(n)`
    (the commands pass a bar with items/s and an ETA, shown on the main rank)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from medsft.upstream import destroy_process_group_at_exit

    state = PartialState(cpu=not torch.cuda.is_available())  # without CUDA, accelerate needs cpu=True for gloo
    if state.num_processes > 1:
        destroy_process_group_at_exit()
    _, lengths = _prompts_and_lengths(tokenizer, questions, system_prompt)
    batches = list(enumerate(length_sorted_batches(lengths, settings.batch_size)))
    mine = batches[state.process_index::state.num_processes]
    where = f" [rank 0/{state.num_processes}]" if state.num_processes > 1 else ""
    done: list[tuple[int, dict]] = []
    with progress(f"{label}{where}", sum(len(b) for _, b in mine)) as advance:
        for number, batch in mine:
            seeded = replace(settings, batch_size=len(batch),
                             seed=None if settings.seed is None else settings.seed + number)
            records = generate_batch(model, tokenizer, [questions[i] for i in batch], seeded, system_prompt, fmt)
            done.extend(zip(batch, records))
            advance(len(batch))
    out: list[dict | None] = [None] * len(questions)
    for i, record in gather_object(done):
        out[i] = record
    return cast("list[dict]", out)  # every batch was some rank's


def load_vllm(recipe: Recipe, adapter_dir: str | Path, seed: int | None) -> LLM:
    """A vLLM engine on the recipe's base model (unquantized, in the model dtype) with LoRA enabled.
    The GPU-only optional path of `eval --benchmark --engine vllm`; cli.py checks that vllm imports."""
    from vllm import LLM

    from medsft.model.load import resolve_model_path

    m = recipe.model
    rank = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= recipe.lora.rank), recipe.lora.rank)
    return LLM(model=resolve_model_path(m.name, m.revision), tokenizer=str(adapter_dir), dtype=m.dtype, revision=m.revision,
               trust_remote_code=m.trust_remote_code, enable_lora=True, max_lora_rank=rank,  # vLLM's allowed ranks
               seed=0 if seed is None else seed)


def generate_vllm(llm: LLM, tokenizer: Any, questions: list[str], settings: Settings, system_prompt: str | None = None,
                  fmt: str = "think", adapter_dir: str | Path | None = None) -> list[dict]:
    """The records of generate_batch, from vLLM (its own batching and progress bar); the adapter as a
    LoRA request, or the base alone when adapter_dir is None. Prompt tokens are exactly medsft's."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    stops = stop_ids(tokenizer, None)
    ids = tokenizer(chat_prompts(tokenizer, questions, system_prompt), add_special_tokens=False)["input_ids"]
    params = [SamplingParams(max_tokens=settings.max_new_tokens, temperature=settings.temperature if settings.do_sample
                             else 0.0, top_p=settings.top_p if settings.do_sample else 1.0, stop_token_ids=stops,
                             skip_special_tokens=False,
                             seed=None if settings.seed is None else settings.seed + i) for i in range(len(ids))]
    lora = LoRARequest("adapter", 1, str(adapter_dir)) if adapter_dir else None
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, lora_request=lora, use_tqdm=True)
    seconds = (time.perf_counter() - t0) / max(len(ids), 1)
    return [_record(q, o.outputs[0].text, o.outputs[0].finish_reason == "stop", len(o.outputs[0].token_ids), seconds,
                    fmt) for q, o in zip(questions, outs)]


def stream_one(model: Any, tokenizer: Any, question: str, settings: Settings, show: Callable[[str, bool], None],
               system_prompt: str | None = None, fmt: str = "think") -> dict:
    """Generate one answer, handing each decoded piece to `show(piece, thinking)` as it comes (the command prints
    it, or not when its output is piped); returns the record."""
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
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            with torch.no_grad():
                result["ids"] = model.generate(**kwargs)[0, enc["input_ids"].shape[1]:].tolist()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which re-raises it
            result["error"] = err
            streamer.end()  # else the main thread waits for tokens forever

    thread = threading.Thread(target=work, daemon=True)  # daemon: Ctrl-C ends the process, not waits for it
    thread.start()
    in_think = False
    end_strings = {tokenizer.decode([i]) for i in stops}
    for piece in streamer:
        for end in end_strings:
            piece = piece.replace(end, "")
        if "<think>" in piece:
            in_think = True
        show(piece, in_think)
        if "</think>" in piece:
            in_think = False
    thread.join()
    if "error" in result:
        raise result["error"]
    text, stopped = _decode(tokenizer, result["ids"], stops)
    return _record(question, text, stopped, len(result["ids"]), time.perf_counter() - t0, fmt)
