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

import json

from medsft.console import is_main, rank
from medsft.io.hashing import file_digest, text_digest, tree_digest
from medsft.io.outputs import atomic_dir
from medsft.paths import medsft_home
from medsft.versions import package_versions

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
        "content": content_fingerprint(spec.recipe.data),  # datasets' fingerprint of a local file omits its bytes
        "training": spec.cache_inputs(),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return text_digest(json.dumps(parts, sort_keys=True, default=str),
                       backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items())),
                       tokenizer.chat_template or "",
                       json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))[:20]


def raw_fingerprint(raw) -> str:
    """datasets' own fingerprint of the rows load_raw returned (derived from its sources': datasets' for files and
    hub data, the generator's identity for built-in rows, medsft/data/load.py)."""
    return raw._fingerprint


def content_fingerprint(data_section) -> dict[str, str]:
    """What each source's rows are, known before anything is loaded (the run identity's data part, and the
    tokenized cache's): a local file's bytes, the built-in generator's parameters, a hub dataset's commit.
    Why bytes: a file corrected in place keeps its path (and can keep its mtime); its rows are what count."""
    from medsft.data.mixture import sources_of

    return {src.name: source_fingerprint(src.source, src.revision) for src in sources_of(data_section)}


def source_fingerprint(source: str, revision: str | None = None) -> str:
    from pathlib import Path

    if source.startswith("builtin:"):
        from medsft.data.load import builtin_fingerprint

        return builtin_fingerprint(source)
    path = Path(source).expanduser()
    try:
        if path.is_file():
            return "sha256:" + file_digest(path)[:16]
        if path.is_dir():  # a local dataset folder: every file's name and bytes
            return "sha256:" + tree_digest(path, (p for p in path.rglob("*") if p.is_file()))[:16]
    except OSError as err:  # loading the data says so in one line; the identity only records it
        return f"unreadable: {err.strerror}"
    from medsft.hub import commit

    return "hub:" + commit(source, "dataset", revision)


def load_cached(path):
    from datasets import DatasetDict, load_from_disk

    meta = json.loads((path / "medsft.json").read_text())
    prepared = DatasetDict({name: load_from_disk(str(path / name)) for name in meta["splits"]})
    return prepared, meta["stats"], meta["dropped"]


def prepare_and_cache(spec, splits, tokenizer, path, report):
    from medsft.data import tokenized

    prepared, stats, dropped = tokenized.prepare_all(splits, tokenizer, spec)
    try:
        with atomic_dir(path) as tmp:
            for name, ds in prepared.items():
                ds.save_to_disk(str(tmp / name))
            (tmp / "medsft.json").write_text(json.dumps({"splits": list(prepared), "stats": stats,
                                                         "dropped": dropped}))
    except OSError as err:  # a read-only or full cache never stops a run
        report(f"data: could not cache the tokenized data ({err})")
    return prepared, stats, dropped


def load_or_prepare(spec, splits, tokenizer, path, rank: int, report):
    import time

    start = time.perf_counter()
    if (path / "medsft.json").is_file():
        result = load_cached(path)
        report(f"data[rank {rank}]: loaded tokenized splits from cache {path} in {time.perf_counter() - start:.2f} s")
        return result
    result = prepare_and_cache(spec, splits, tokenizer, path, report)
    report(f"data[rank {rank}]: tokenized and cached to {path} in {time.perf_counter() - start:.2f} s")
    return result


def prepared_splits(spec, raw, splits, tokenizer, report):
    """(prepared DatasetDict, stats, dropped): the main process prepares (or loads) while the other ranks
    wait, then they load its result; a rank that cannot see the cache (node-local disk) prepares itself.
    `report` receives one line per rank (the per-rank cache lines are the multi-process tests' evidence)."""
    from accelerate import PartialState

    path = medsft_home() / "datasets" / cache_key(spec, raw_fingerprint(raw), tokenizer)
    state = PartialState()
    result = load_or_prepare(spec, splits, tokenizer, path, 0, report) if is_main() else None
    state.wait_for_everyone()
    if result is None:
        result = load_or_prepare(spec, splits, tokenizer, path, rank(), report)
    return result
