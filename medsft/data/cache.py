"""The data stage behind a cache: rows → tokenized splits, keyed by what the tokens depend on, computed cheaply.

Why: tokenizing 25k long reasoning rows on every rank and every launch wastes minutes, and done eight times at
once can outlast a collective's timeout. The key is known before any row is read: each source's identity
(a local file's streamed SHA-256, a dataset folder's files, a hub dataset's commit, the built-in generator's
parameters), the data section, the tokenizer (vocabulary, added and special tokens, chat template —
`model.chat_template` applied), the tokenization settings and the TRL/medsft versions. So a warm run
memory-maps the tokenized Arrow files and never reads the raw rows; a file corrected in place (same size,
same mtime) has other bytes and another key. The main process prepares while the other ranks wait, then
they load its result; on a node that cannot see that cache (node-local disk) its first rank prepares while
the node's other ranks wait. Entries are written atomically under `$MEDSFT_HOME/datasets/<key>`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.console import rank
from medsft.data.tokenized import Tokenization
from medsft.io.hashing import file_digest, text_digest, tree_digest
from medsft.io.outputs import atomic_dir
from medsft.launch.agreement import main_decides
from medsft.paths import medsft_home
from medsft.versions import package_versions

if TYPE_CHECKING:
    from datasets import DatasetDict

    from medsft.data.load import DropReport
    from medsft.recipe.data_section import DataSection

CACHE_VERSION = "2"


@dataclass
class PreparedData:
    """The data stage's result: what the trainer receives and what the run reports about it."""

    prepared: DatasetDict  # row_id, input_ids, labels per split, long training rows dropped
    report: DropReport  # rows read, kept, dropped (why), per source
    row_ids: dict[str, list[int]]  # each split's row ids before long rows were dropped
    questions: list[str]  # the validation split's questions, in order (generations during training)
    stats: dict[str, dict]  # token-length statistics per split, before dropping
    dropped: dict[str, int]  # long rows dropped per split
    content: dict[str, str]  # each source's identity (the cache key's data part)
    cache_lines: list[str] = field(default_factory=list)  # this rank's cache lines

    def meta(self) -> dict[str, Any]:
        return {"splits": list(self.prepared), "report": self.report.to_dict(), "row_ids": self.row_ids,
                "questions": self.questions, "stats": self.stats, "dropped": self.dropped, "content": self.content}


def content_fingerprint(data_section: DataSection) -> dict[str, str]:
    """What each source's rows are, known before anything is loaded (the run identity's data part, and the
    cache key's): a local file's bytes, the built-in generator's parameters, a hub dataset's commit.
    Why bytes: a file corrected in place keeps its path (and can keep its mtime); its rows are what count."""
    from medsft.data.mixture import sources_of

    return {src.name: source_fingerprint(src.source, src.revision) for src in sources_of(data_section)}


def source_fingerprint(source: str, revision: str | None = None) -> str:
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


def tokenizer_identity(tokenizer: Any) -> str:
    """The tokenizer's vocabulary, merges, added and special tokens and chat template, as one digest."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return text_digest(backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items())),
                       tokenizer.chat_template or "",
                       json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str))


def cache_key(data_section: DataSection, content: dict[str, str], chat_template: str | None, tokenizer: Any,
              tokenization: Tokenization) -> str:
    versions = package_versions()
    parts = {"version": CACHE_VERSION, "trl": versions.get("trl"), "medsft": versions.get("medsft", "dev"),
             "transformers": versions.get("transformers"), "data": data_section.model_dump(mode="json"),
             "content": content, "chat_template": chat_template, "tokenization": tokenization.key()}
    return text_digest(json.dumps(parts, sort_keys=True, default=str), tokenizer_identity(tokenizer))[:20]


def load_cached(path: Path) -> PreparedData:
    """The tokenized splits memory-mapped from the cache, and what the run reports, from its metadata."""
    from datasets import DatasetDict, load_from_disk

    from medsft.data.load import DropReport

    meta = json.loads((path / "medsft.json").read_text())
    prepared = DatasetDict({name: load_from_disk(str(path / name)) for name in meta["splits"]})
    return PreparedData(prepared, DropReport.from_dict(meta["report"]), meta["row_ids"], meta["questions"],
                        meta["stats"], meta["dropped"], meta["content"])


def prepare(data_section: DataSection, tokenizer: Any, tokenization: Tokenization, content: dict[str, str]
            ) -> PreparedData:
    """Rows loaded, checked, split and weighed (medsft/data/load.py), tokenized once for every split, long
    training rows dropped."""
    from datasets import DatasetDict

    from medsft.data import load, tokenized

    formatted, report = load.formatted_rows(data_section)
    splits = load.split_rows(formatted, report, data_section)
    tokens = tokenized.tokenize(formatted, tokenizer, tokenization)
    position = {row_id: i for i, row_id in enumerate(formatted["row_id"])}
    out, stats, dropped, row_ids = {}, {}, {}, {}
    for name, part in splits.items():
        row_ids[name] = list(part["row_id"])
        prepared = tokens.select([position[r] for r in row_ids[name]])
        stats[name] = tokenized.length_stats(tokenized.lengths(prepared), tokenization.max_length)
        if name != "test":  # the test split is kept whole for evaluation, which uses the raw rows
            prepared, dropped[name] = tokenized.drop_overlong(prepared, tokenization.drop_longer_than, name=name)
        out[name] = prepared
    return PreparedData(DatasetDict(out), report, row_ids, load.eval_questions(splits["validation"]), stats,
                        dropped, content)


def prepare_and_cache(data_section: DataSection, tokenizer: Any, tokenization: Tokenization, content: dict[str, str],
                      path: Path, report: Callable[[str], None]) -> PreparedData:
    result = prepare(data_section, tokenizer, tokenization, content)
    try:
        with atomic_dir(path) as tmp:
            for name, ds in result.prepared.items():
                ds.save_to_disk(str(tmp / name))
            (tmp / "medsft.json").write_text(json.dumps(result.meta()))
    except OSError as err:  # a read-only or full cache never stops a run
        report(f"data: could not cache the tokenized data ({err})")
        return result
    return load_cached(path)  # memory-mapped, as every later run and every other rank reads it


def load_or_prepare(data_section: DataSection, tokenizer: Any, tokenization: Tokenization, content: dict[str, str],
                    path: Path, rank: int, report: Callable[[str], None]) -> PreparedData:
    start = time.perf_counter()
    if (path / "medsft.json").is_file():
        result = load_cached(path)
        report(f"data[rank {rank}]: loaded tokenized splits from cache {path} in {time.perf_counter() - start:.2f} s")
        return result
    result = prepare_and_cache(data_section, tokenizer, tokenization, content, path, report)
    report(f"data[rank {rank}]: tokenized and cached to {path} in {time.perf_counter() - start:.2f} s")
    return result


def prepared_data(data_section: DataSection, tokenizer: Any, tokenization: Tokenization, *,
                  chat_template: str | None = None, content: dict[str, str] | None = None,
                  report: Callable[[str], None] | None = None) -> PreparedData:
    """The data stage through the cache, on every rank: the main process prepares (or loads) while the others
    wait, then they load its result, or raise its MedsftError (bad rows refuse on every rank with one line).
    `content`: the sources' identities when the caller has them (the run identity computed them); `report`
    receives this rank's cache lines as they happen (also kept in `cache_lines`: the multi-process tests'
    evidence)."""
    from accelerate import PartialState

    lines: list[str] = []

    def line(text: str) -> None:
        lines.append(text)
        if report is not None:
            report(text)

    content = content if content is not None else content_fingerprint(data_section)
    path = medsft_home() / "datasets" / cache_key(data_section, content, chat_template, tokenizer, tokenization)
    result = main_decides(lambda: load_or_prepare(data_section, tokenizer, tokenization, content, path, 0, line))
    with PartialState().local_main_process_first():  # a node that cannot see that cache prepares once, not per rank
        if result is None:
            result = load_or_prepare(data_section, tokenizer, tokenization, content, path, rank(), line)
    result.cache_lines = lines
    return result
