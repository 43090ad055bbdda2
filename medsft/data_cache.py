"""Tokenized datasets cached by fingerprint; under a multi-process launch the main process prepares them
and every other rank loads the result.

Why: tokenizing 25k long reasoning rows on every rank wastes minutes per launch and, done eight times
at once, can outlast a collective's timeout. The key covers everything the tokens depend on: the raw
data's fingerprint and the data section, the tokenizer (vocabulary, special tokens, chat template),
max_length/packing/loss settings and the TRL and medsft versions. Entries are written atomically under
`$MEDSFT_HOME/datasets/<key>`; a second run with the same inputs starts training without tokenizing.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager, nullcontext
from dataclasses import asdict

from medsft.outputs import atomic_dir, package_versions
from medsft.tiny_model import medsft_home

CACHE_VERSION = "1"


def cache_key(recipe, raw_fingerprint: str, tokenizer) -> str:
    t = recipe.training
    versions = package_versions()
    parts = {
        "version": CACHE_VERSION,
        "trl": versions.get("trl"),
        "medsft": versions.get("medsft", "dev"),
        "data": asdict(recipe.data),
        "raw": raw_fingerprint,
        "training": {k: t.get(k) for k in ("max_length", "packing", "completion_only_loss")},
    }
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))).encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def raw_fingerprint(recipe, raw) -> str:
    """datasets' own fingerprint for files and hub data; the generator's identity for built-in rows."""
    if recipe.data.source.startswith("builtin:"):
        from medsft.data import TINY_ROWS
        from medsft.tiny_model import TINY_BUILD_VERSION

        return f"{recipe.data.source}:{TINY_ROWS}:{TINY_BUILD_VERSION}"
    return raw._fingerprint


@contextmanager
def trl_barriers_off():
    """TRL's dataset preparation wraps itself in main-process-first barriers; when only one rank prepares,
    those barriers would pair with the other ranks' wait below and release them early (or hang)."""
    import trl.trainer.sft_trainer as sft

    original = sft.global_then_local_main_first
    sft.global_then_local_main_first = nullcontext
    try:
        yield
    finally:
        sft.global_then_local_main_first = original


def load_cached(path):
    from datasets import DatasetDict, load_from_disk

    meta = json.loads((path / "medsft.json").read_text())
    prepared = DatasetDict({name: load_from_disk(str(path / name)) for name in meta["splits"]})
    return prepared, meta["stats"], meta["dropped"]


def prepare_and_cache(recipe, splits, tokenizer, path, say):
    from medsft import tokenized

    with trl_barriers_off():
        prepared, stats, dropped = tokenized.prepare_all(splits, tokenizer, recipe.training)
    try:
        with atomic_dir(path) as tmp:
            for name, ds in prepared.items():
                ds.save_to_disk(str(tmp / name))
            (tmp / "medsft.json").write_text(json.dumps({"splits": list(prepared), "stats": stats,
                                                         "dropped": dropped}))
    except OSError as err:  # a read-only or full cache never stops a run
        say(f"notice: could not cache the tokenized data ({err})")
    return prepared, stats, dropped


def load_or_prepare(recipe, splits, tokenizer, path, rank: int, say):
    import time

    start = time.perf_counter()
    if (path / "medsft.json").is_file():
        result = load_cached(path)
        say(f"data[rank {rank}]: loaded tokenized splits from cache {path} in {time.perf_counter() - start:.2f} s")
        return result
    result = prepare_and_cache(recipe, splits, tokenizer, path, say)
    say(f"data[rank {rank}]: tokenized and cached to {path} in {time.perf_counter() - start:.2f} s")
    return result


def prepared_splits(recipe, raw, splits, tokenizer, say=print):
    """(prepared DatasetDict, stats, dropped): the main process prepares (or loads) while the other ranks
    wait, then they load its result; a rank that cannot see the cache (node-local disk) prepares itself."""
    from accelerate import PartialState

    path = medsft_home() / "datasets" / cache_key(recipe, raw_fingerprint(recipe, raw), tokenizer)
    state = PartialState()
    result = load_or_prepare(recipe, splits, tokenizer, path, 0, say) if state.is_main_process else None
    state.wait_for_everyone()
    if result is None:
        result = load_or_prepare(recipe, splits, tokenizer, path, state.process_index, say)
    return result
