"""Tokenized datasets cached by fingerprint; under a multi-process launch the main process prepares them
and every other rank loads the result.

Why: tokenizing 25k long reasoning rows on every rank wastes minutes per launch and, done eight times
at once, can outlast a collective's timeout. The key covers everything the tokens depend on: the raw
data's fingerprint and the data section (format, sources, weights, seed), the tokenizer (vocabulary and
added tokens, special tokens, chat template — `model.chat_template` applied — which also fixes the
training variant `messages` rows are tokenized with),
max_length/packing/loss settings and the TRL and medsft versions. Entries are written atomically under
`$MEDSFT_HOME/datasets/<key>`; a second run with the same inputs starts training without tokenizing.
"""

from __future__ import annotations

import hashlib
import json

from medsft.console import notice, say
from medsft.outputs import atomic_dir, package_versions
from medsft.paths import medsft_home

CACHE_VERSION = "1"


def cache_key(spec, raw_fingerprint: str, tokenizer) -> str:
    versions = package_versions()
    parts = {
        "version": CACHE_VERSION,
        "trl": versions.get("trl"),
        "medsft": versions.get("medsft", "dev"),
        "data": spec.recipe.data.model_dump(mode="json"),
        "chat_template": spec.recipe.model.chat_template,
        "raw": raw_fingerprint,
        "training": spec.cache_inputs(),
    }
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))).encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def raw_fingerprint(data_section, raw) -> str:
    """datasets' own fingerprint for files and hub data; the generator's identity for built-in rows (a mixture's
    is derived by datasets from its sources', the built-in one fixed by medsft/data.py)."""
    if data_section.sources is None and data_section.source.startswith("builtin:"):
        from medsft.data import TINY_ROWS
        from medsft.tiny_model import TINY_BUILD_VERSION

        return f"{data_section.source}:{TINY_ROWS}:{TINY_BUILD_VERSION}"
    return raw._fingerprint


def load_cached(path):
    from datasets import DatasetDict, load_from_disk

    meta = json.loads((path / "medsft.json").read_text())
    prepared = DatasetDict({name: load_from_disk(str(path / name)) for name in meta["splits"]})
    return prepared, meta["stats"], meta["dropped"]


def prepare_and_cache(spec, splits, tokenizer, path):
    from medsft import tokenized

    prepared, stats, dropped = tokenized.prepare_all(splits, tokenizer, spec)
    try:
        with atomic_dir(path) as tmp:
            for name, ds in prepared.items():
                ds.save_to_disk(str(tmp / name))
            (tmp / "medsft.json").write_text(json.dumps({"splits": list(prepared), "stats": stats,
                                                         "dropped": dropped}))
    except OSError as err:  # a read-only or full cache never stops a run
        notice(f"could not cache the tokenized data ({err})")
    return prepared, stats, dropped


def load_or_prepare(spec, splits, tokenizer, path, rank: int, report):
    import time

    start = time.perf_counter()
    if (path / "medsft.json").is_file():
        result = load_cached(path)
        report(f"data[rank {rank}]: loaded tokenized splits from cache {path} in {time.perf_counter() - start:.2f} s")
        return result
    result = prepare_and_cache(spec, splits, tokenizer, path)
    report(f"data[rank {rank}]: tokenized and cached to {path} in {time.perf_counter() - start:.2f} s")
    return result


def prepared_splits(spec, raw, splits, tokenizer, report=say):
    """(prepared DatasetDict, stats, dropped): the main process prepares (or loads) while the other ranks
    wait, then they load its result; a rank that cannot see the cache (node-local disk) prepares itself.
    `report` receives one line per rank (the per-rank cache lines are the multi-process tests' evidence)."""
    from accelerate import PartialState

    path = medsft_home() / "datasets" / cache_key(spec, raw_fingerprint(spec.recipe.data, raw), tokenizer)
    state = PartialState()
    result = load_or_prepare(spec, splits, tokenizer, path, 0, report) if state.is_main_process else None
    state.wait_for_everyone()
    if result is None:
        result = load_or_prepare(spec, splits, tokenizer, path, state.process_index, report)
    return result
