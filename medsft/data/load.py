"""Rows → training examples in the recipe's format → seeded 80/10/10 split, from one source or a mixture.

Why prompt/completion and not `messages` for single-turn rows: TRL applies `completion_only_loss` only to
prompt/completion datasets; with a `messages` column (the notebook's format) the question is trained too.
The prompt is the user's Question; the completion is the assistant turn in the recipe's format
(medsft/data/formats.py: `think`, `huatuo`). Conversations (`data.format: messages`, OpenAI or ShareGPT turns,
any number of them) stay `messages`: their loss is on every assistant turn and nothing else, through TRL's
`assistant_only_loss` (medsft/data/tokenized.py, medsft/model/chat_templates.py).
Malformed rows are dropped and counted, and too many of them stop the run. The split reproduces the
notebook's two `train_test_split` calls with seed 816, so a migrating user gets the same test rows.

Every recipe is a mixture (`data.sources`, or the mixture of one `data.source` names; medsft/data/mixture.py),
and each source runs one pipeline: load → cap → canonical columns → format → split with the seed, so
validation and test hold every source in its natural share and never a row that is also trained; weights
then sample the training split only. Row ids index the sources' rows concatenated in recipe order (what
`load_raw` returns), so `test_ids.json` still names rows evaluation can reload.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.data.formats import completion_text, conversation, prompt_messages
from medsft.data.mixture import SOURCE_COLUMN, Source, capped, combine, reading_sources, sources_of, weigh
from medsft.errors import MedsftError
from medsft.recipe.data_section import DATA_SUFFIXES

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from medsft.recipe.data_section import DataSection

TINY_DATASET = "builtin:tiny-medical"
TINY_ROWS = 800
MIN_ROWS = 10
SPLITS = ("train", "validation", "test")


@dataclass
class DropReport:
    total: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    sources: list[SourceReport] = field(default_factory=list)  # SourceReport per source, in recipe order

    @property
    def dropped(self) -> int:
        return self.total - self.kept

    def summary(self) -> str:
        text = f"data: {self.kept} of {self.total} rows kept"
        if self.dropped:
            why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
            text += f"; {self.dropped} dropped ({why})"
        if len(self.sources) > 1:
            text += " — " + "; ".join(s.summary() for s in self.sources)
        return text

    def source_of(self, row_id: int) -> str:
        for s in self.sources:
            if s.start <= row_id < s.end:
                return s.name
        return "?"

    def source_counts(self, splits: Mapping[str, list[int]], before: Mapping[str, list[int]] | None = None) -> dict:
        """Per source: rows read, kept, dropped (why), weight, and examples per split of `splits` (each split's row
        ids: the formatted split's or the tokenized one's, after long rows are dropped), with the share of the
        training split each has. With `before` (the formatted splits' row ids): the distinct rows each trains and
        the rows longer than max_length dropped per split."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.sources:
            out[s.name] = {"source": s.source, "config": s.config, "format": s.format, "weight": s.weight,
                           "max_rows": s.max_rows, "rows": s.total, "kept": s.kept, "dropped": dict(s.reasons),
                           **{name: 0 for name in splits}}
        for name, count in self.per_source(splits).items():
            for source, n in count.items():
                if source in out:
                    out[source][name] = n
        total = len(splits["train"]) if "train" in splits else 0
        for entry in out.values():
            entry["share"] = round(entry.get("train", 0) / total, 4) if total else 0.0
        if before is not None:
            ahead = self.per_source(before)
            distinct = Counter(map(self.source_of, set(before.get("train", []))))
            for source, entry in out.items():
                entry["overlong_dropped"] = {name: ahead[name][source] - entry.get(name, 0) for name in splits
                                             if name in ahead}
                entry["distinct_train_rows"] = distinct[source]
        return out

    def per_source(self, splits: Mapping[str, list[int]]) -> dict[str, Counter]:
        """{split: Counter(source name -> examples)}."""
        return {name: Counter(self.source_of(r) for r in ids) for name, ids in splits.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "reasons": dict(self.reasons),
                "sources": [{**asdict(s), "reasons": dict(s.reasons)} for s in self.sources]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DropReport:
        sources = [SourceReport(**{**s, "reasons": Counter(s["reasons"])}) for s in d["sources"]]
        return cls(d["total"], d["kept"], Counter(d["reasons"]), sources)


def row_ids(splits: Mapping[str, Any]) -> dict[str, list[int]]:
    """Each split's row ids (a DatasetDict's, tokenized or not)."""
    return {name: list(ds["row_id"]) if len(ds) else [] for name, ds in splits.items()}


@dataclass
class SourceReport:
    name: str
    source: str
    config: str | None
    format: str
    weight: float | None
    max_rows: int | None
    start: int  # row ids [start, end) are this source's rows
    end: int
    total: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.name}: {self.kept} of {self.total}"
        if self.weight is not None:
            text += f" (weight {self.weight:g})"
        return text


def load_raw(d: DataSection) -> Dataset:
    """The rows as published, every source's (hub id + config, a local file, the built-in generated rows)
    capped to its max_rows and concatenated in recipe order, its columns renamed to the data section's, a
    `medsft_source` column saying which source a row came from."""
    return combine([capped(load_source(src), src) for src in sources_of(d)], d)


def load_source(src: Source) -> Dataset:
    """One source's rows as published (its `max_rows` is applied by the caller)."""
    from datasets import Dataset, load_dataset

    source, where = src.source, src.where
    if source == TINY_DATASET:
        from medsft.model.builtin.tiny_data import generate

        ds = Dataset.from_list(generate(TINY_ROWS))  # a fixed fingerprint: the generator is deterministic
        return Dataset(ds.data, info=ds.info, fingerprint=builtin_fingerprint(source))
    if source.startswith("builtin:"):
        raise MedsftError(f"unknown built-in dataset {source!r}", f"use {TINY_DATASET!r}", where)
    suffix = Path(source).suffix.lower()
    if suffix in DATA_SUFFIXES and Path(source).stat().st_size == 0:
        raise MedsftError(f"{source!r} has no rows (the file is empty)", f"point {where} at a file with rows", where)
    try:
        if suffix in (".json", ".jsonl"):
            check_utf8(source, where)
            ds = load_dataset("json", data_files=source, split="train")
        elif suffix == ".parquet":
            ds = load_dataset("parquet", data_files=source, split="train")
        else:
            ds = load_dataset(source, src.config, split=src.split, revision=src.revision)
    except MedsftError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        raise MedsftError(*describe_load_error(source, err), where) from None
    if len(ds) == 0:
        raise MedsftError(f"{source!r} has no rows", f"point {where} at a file with rows", where)
    return ds


def builtin_fingerprint(source: str) -> str:
    """The built-in rows' identity: the generator's parameters (it is deterministic), before and after loading."""
    from medsft.model.builtin.tiny_model import TINY_BUILD_VERSION

    return f"builtin-{source.removeprefix('builtin:')}-{TINY_ROWS}-v{TINY_BUILD_VERSION}"


def check_utf8(path: str, where: str = "data.source") -> None:
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MedsftError(f"{path} line {number} is not valid UTF-8 (byte {err.start})",
                                  "re-encode the file as UTF-8", where) from None


def describe_load_error(source: str, err: Exception) -> tuple[str, str]:
    text = " ".join(str(err).split())[:300]
    name = type(err).__name__
    if "corresponds to no data" in text or "EmptyDatasetError" in name:
        return f"{source} has no rows", "point data.source at a file with rows"
    if Path(source).suffix.lower() in DATA_SUFFIXES:
        return (f"cannot read {source} ({name}: {text})",
                "check that it is valid JSON/JSONL/Parquet with one object per row and consistent types")
    if "offline" in text.lower() or "connect" in text.lower() or name in ("ConnectionError", "DatasetNotFoundError",
                                                                          "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        from medsft.hub import ways_in

        return f"dataset {source!r} is not available offline ({name})", ways_in(source, "dataset", "data.source")
    return (f"cannot load dataset {source!r} ({name}: {text})", "check data.source, data.config and data.split")


# ---------------------------------------------------------------- rows → examples


def row_problem(row: dict, d: DataSection, src: Source | None = None) -> str | None:
    """Why a row is unusable, or None."""
    src = src or reading_sources(d)[row.get(SOURCE_COLUMN) or 0]
    if src.format == "messages":
        return conversation(row.get(src.messages_column), src.roles)[1]
    for key in ("question_column", "reasoning_column", "response_column"):
        value = row.get(getattr(src, key))
        if value is None:
            return f"missing {getattr(src, key)}"
        if not isinstance(value, str):
            return f"non-string {getattr(src, key)}"
        if not value.strip():
            return f"empty {getattr(src, key)}"
    return None


def to_prompt_completion(ds: Dataset, d: DataSection) -> tuple[Dataset, DropReport]:
    """Keep good rows as training examples with their original `row_id`; report what was dropped (per source
    too). Single-turn formats become prompt/completion, `messages` rows a `messages` column (both columns,
    one of them empty per row, when a mixture has both kinds)."""
    from datasets import Dataset, Features, List, Value

    if SOURCE_COLUMN not in ds.column_names:  # rows of a one-source recipe not read by load_raw (tests, bench)
        ds = combine([ds], d)
    sources = reading_sources(d)
    owner = list(ds[SOURCE_COLUMN])
    bounds = source_bounds(owner, len(sources))
    report = DropReport(total=len(ds), sources=[
        SourceReport(s.name, s.source, s.config, s.format, s.weight, s.max_rows, *bounds[i])
        for i, s in enumerate(sources)])
    rows = []
    for i, row in enumerate(rows_of(ds)):
        src, sr = sources[owner[i]], report.sources[owner[i]]
        sr.total += 1
        problem = row_problem(row, d, src)
        if problem:
            report.reasons[problem] += 1
            sr.reasons[problem] += 1
            continue
        sr.kept += 1
        rows.append(example(row, i, src, d))
    report.kept = len(rows)
    for sr in report.sources:
        check_bad_fraction(sr.total, sr.total - sr.kept, sr.reasons, d, sr.name if len(sources) > 1 else None)
    kinds = {src.format == "messages" for src, sr in zip(sources, report.sources) if sr.total}
    turn = List({"role": Value("string"), "content": Value("string")})
    columns = {"row_id": Value("int64")}
    if False in kinds:
        columns.update(prompt=turn, completion=turn)
    if True in kinds:
        columns["messages"] = turn
    features = Features(columns)
    formatted = Dataset.from_list([{k: r.get(k, []) for k in columns} for r in rows], features=features)
    return formatted, report


def rows_of(ds: Any, batch_rows: int = 1000) -> Iterator[dict]:
    """The rows as dicts, read a batch of columns at a time (much faster than one row at a time)."""
    for batch in ds.iter(batch_size=batch_rows):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def example(row: dict, index: int, src: Source, d: DataSection) -> dict:
    if src.format == "messages":
        messages, _ = conversation(row[src.messages_column], src.roles)
        assert messages is not None  # a row row_problem passed
        if d.system_prompt and messages[0]["role"] != "system":
            messages = prompt_messages("", d.system_prompt)[:1] + messages
        return {"row_id": index, "messages": messages}
    text = completion_text(row[src.reasoning_column], row[src.response_column], src.format)
    return {"row_id": index, "prompt": prompt_messages(row[src.question_column], d.system_prompt),
            "completion": [{"role": "assistant", "content": text}]}


def source_bounds(owner: list[int], n: int) -> list[tuple[int, int]]:
    """[start, end) of each source's rows (rows are in source order)."""
    bounds = []
    for k in range(n):
        where = [i for i, o in enumerate(owner) if o == k]
        bounds.append((where[0], where[-1] + 1) if where else (0, 0))
    return bounds


def check_bad_fraction(total: int, dropped: int, reasons: Counter, d: DataSection, name: str | None) -> None:
    if total and dropped / total > d.max_bad_fraction:
        top = reasons.most_common(1)[0][0] if reasons else ""
        fix = ("map it with data.roles (e.g. roles: {bot: assistant})" if top.startswith("unknown role")
               else "fix the data or raise data.max_bad_fraction")
        of = f" of {name}" if name else ""
        raise MedsftError(f"{dropped} of {total} rows{of} are malformed "
                          f"({', '.join(f'{n} {r}' for r, n in reasons.most_common(3))}), "
                          f"more than data.max_bad_fraction={d.max_bad_fraction}", fix, "data")


def eval_questions(ds: Any, n: int | None = None) -> list[str]:
    """The questions of the first `n` examples of a formatted split (all when None): the last prompt turn, or a
    conversation's first user turn."""
    n = len(ds) if n is None else min(n, len(ds))
    if not n:
        return []
    part = ds.select(range(n))
    prompts = part["prompt"] if "prompt" in part.column_names else [None] * n
    conversations = part["messages"] if "messages" in part.column_names else [None] * n
    return [prompt[-1]["content"] if prompt else next(m["content"] for m in conv if m["role"] == "user")
            for prompt, conv in zip(prompts, conversations)]


def question_of(row: dict, d: DataSection) -> str | None:
    """A raw row's question as evaluation poses it: the question column, or a conversation's first user turn."""
    src = reading_sources(d)[row.get(SOURCE_COLUMN) or 0]
    if src.format != "messages":
        return row.get(src.question_column)
    messages, _ = conversation(row.get(src.messages_column), src.roles)
    return next((m["content"] for m in messages or [] if m["role"] == "user"), None)


# ---------------------------------------------------------------- split and weights


def split(ds: Dataset, d: DataSection, name: str | None = None) -> DatasetDict:
    """train/validation/test exactly as the notebook: 80/20 with the seed, then the 20 halved."""
    from datasets import DatasetDict

    if len(ds) < MIN_ROWS:
        of = f" in {name}" if name else ""
        raise MedsftError(f"only {len(ds)} usable rows{of}; at least {MIN_ROWS} are needed for a train/validation/test "
                          "split", "use a larger dataset", "data")
    held = d.val_fraction + d.test_fraction
    if held == 0:
        return DatasetDict(train=ds, validation=ds.select([]), test=ds.select([]))
    check_split_sizes(len(ds), d, name)
    first = ds.train_test_split(test_size=held, seed=d.split_seed)
    if d.test_fraction == 0:
        return DatasetDict(train=first["train"], validation=first["test"], test=ds.select([]))
    if d.val_fraction == 0:
        return DatasetDict(train=first["train"], validation=ds.select([]), test=first["test"])
    second = first["test"].train_test_split(test_size=d.test_fraction / held, seed=d.split_seed)
    return DatasetDict(train=first["train"], validation=second["train"], test=second["test"])


def split_sizes(n: int, d: DataSection) -> dict[str, int]:
    """The sizes `split` gets from `n` rows: datasets' own arithmetic (ceil of the held-out share, then of the
    test share of it)."""
    held = d.val_fraction + d.test_fraction
    n_held = math.ceil(held * n) if held else 0
    if not d.val_fraction or not d.test_fraction:
        n_test = n_held if d.test_fraction else 0
    else:
        n_test = math.ceil(d.test_fraction / held * n_held)
    return {"train": n - n_held, "validation": n_held - n_test, "test": n_test}


def check_split_sizes(n: int, d: DataSection, name: str | None = None) -> None:
    """Each split with a fraction above 0 gets at least one row (datasets raises a ValueError otherwise)."""
    fractions = {"train": 1 - d.val_fraction - d.test_fraction, "validation": d.val_fraction, "test": d.test_fraction}
    keys = {"train": "data.val_fraction + data.test_fraction", "validation": "data.val_fraction",
            "test": "data.test_fraction"}
    for split_name, size in split_sizes(n, d).items():
        if fractions[split_name] > 0 and size < 1:
            of = f" of {name}" if name else ""
            raise MedsftError(f"{keys[split_name]} leaves the {split_name} split of {n} usable rows{of} empty "
                              f"(val_fraction {d.val_fraction:g}, test_fraction {d.test_fraction:g})",
                              "use more rows, or change data.val_fraction / data.test_fraction (0 means no such "
                              "split)", "data")


def mixture_outcome(report: DropReport, before: Mapping[str, list[int]], prepared: Mapping[str, list[int]],
                    d: DataSection, max_length: int | None, check: bool = True) -> str | None:
    """What a mixture became, as one line: per source the rows kept, the rows trained (and how often each
    repeats), those dropped for length, and the share of the training split against its weight. Raises when
    a source lost every training row, or (weighted) its share ended far from its weight
    (mixture.share_tolerance), unless data.allow_share_drift."""
    from medsft.data.mixture import share_tolerance

    if len(report.sources) == 1:
        return None  # one source: the data line says it all
    counts = report.source_counts(prepared, before=before)
    total = len(prepared["train"])
    weights = [s.weight for s in report.sources if s.weight is not None]
    weighted = len(weights) == len(report.sources)
    asked = {s.name: w / sum(weights) for s, w in zip(report.sources, weights)} if weighted else {}
    parts = []
    for name, c in counts.items():
        long = c["overlong_dropped"].get("train", 0)
        trained = c["train"] + long
        text = f"{name}: {c['kept']} of {c['rows']} rows kept, {c['train']} trained"
        if c["distinct_train_rows"] and trained > c["distinct_train_rows"]:
            text += f" ({c['distinct_train_rows']} rows, ×{trained / c['distinct_train_rows']:.1f})"
        if long:
            text += f", {long} longer than training.max_length={max_length} dropped"
        parts.append(text + f", share {c['share']:.3f}" + (f" (weight {asked[name]:.3f})" if weighted else ""))
    checked = {} if not check or d.allow_share_drift else {n: c for n, c in counts.items() if c["kept"]}
    for name, c in checked.items():
        long = c["overlong_dropped"].get("train", 0)
        if c["train"] == 0:
            why = (f"all {long} are longer than training.max_length={max_length}" if long
                   else "the weights and split leave it none")
            raise MedsftError(f"the mixture's training split holds no row of {name} ({why}); training would use the "
                              "other sources alone",
                              "raise training.max_length (medsft data shows row lengths), remove the source, or set "
                              "data.allow_share_drift: true to train without it", "data.sources")
    for name, c in sorted(checked.items(), key=lambda item: -item[1]["overlong_dropped"].get("train", 0)):
        long = c["overlong_dropped"].get("train", 0)  # the source that lost rows is named first
        if weighted and abs(c["share"] - asked[name]) > share_tolerance(asked[name], total):
            raise MedsftError(f"{name} is {c['share']:.1%} of the training split, not its weight {asked[name]:.1%}"
                              + (f" ({long} of its rows longer than training.max_length={max_length} dropped)"
                                 if long else ""),
                              "raise training.max_length, change the weights, or set data.allow_share_drift: true "
                              "to train with these shares", "data.sources")
    return "data: mixture — " + "; ".join(parts)


def formatted_rows(d: DataSection) -> tuple[Dataset, DropReport]:
    """Every source's rows loaded and formatted as training examples, with the account of what was dropped."""
    return to_prompt_completion(load_raw(d), d)


def split_rows(formatted: Dataset, report: DropReport, d: DataSection) -> DatasetDict:
    """Each source split on its own (seeded), then the sources' splits weighed (when weighted) and concatenated."""
    from datasets import DatasetDict, concatenate_datasets

    ids = list(formatted["row_id"])
    named = len(report.sources) > 1
    parts = []
    for sr in report.sources:
        positions = [i for i, r in enumerate(ids) if sr.start <= r < sr.end]
        parts.append(split(formatted.select(positions), d, sr.name if named else None))
    weigh(parts, [sr.weight for sr in report.sources], d, [sr.name for sr in report.sources])
    return DatasetDict({name: concatenate_datasets([p[name] for p in parts]) for name in SPLITS})


def load_splits(d: DataSection) -> tuple[DatasetDict, DropReport]:
    """Everything above in order: (DatasetDict of formatted splits, DropReport)."""
    formatted, report = formatted_rows(d)
    return split_rows(formatted, report, d), report
