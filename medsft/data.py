"""Rows → conversational prompt/completion → seeded 80/10/10 split.

Why prompt/completion and not `messages`: TRL applies `completion_only_loss` only to prompt/completion
datasets; with a `messages` column (the notebook's format) the question is trained too. The prompt is
the user's Question; the completion is the assistant turn in the recipe's format (medsft/formats.py).
Malformed rows are dropped and counted, and too many of them stop the run. The split reproduces the
notebook's two `train_test_split` calls with seed 816, so a migrating user gets the same test rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medsft.errors import MedsftError
from medsft.formats import completion_text, prompt_messages

TINY_DATASET = "builtin:tiny-medical"
TINY_ROWS = 800
MIN_ROWS = 10


@dataclass
class DropReport:
    total: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.total - self.kept

    def summary(self) -> str:
        text = f"data: {self.kept} of {self.total} rows kept"
        if self.dropped:
            why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
            text += f"; {self.dropped} dropped ({why})"
        return text


def load_raw(d):
    """The dataset as published: hub id + config, a local file, or the built-in generated rows."""
    from datasets import Dataset, load_dataset

    source = d.source
    if source == TINY_DATASET:
        from medsft.tiny_data import generate

        return Dataset.from_list(generate(TINY_ROWS))
    if source.startswith("builtin:"):
        raise MedsftError(f"unknown built-in dataset {source!r}", f"use {TINY_DATASET!r}", "data.source")
    suffix = Path(source).suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet") and Path(source).stat().st_size == 0:
        raise MedsftError(f"{source!r} has no rows (the file is empty)", "point data.source at a file with rows",
                          "data.source")
    try:
        if suffix in (".json", ".jsonl"):
            check_utf8(source)
            ds = load_dataset("json", data_files=source, split="train")
        elif suffix == ".parquet":
            ds = load_dataset("parquet", data_files=source, split="train")
        else:
            ds = load_dataset(source, d.config, split=d.split, revision=d.revision)
    except MedsftError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        raise MedsftError(*describe_load_error(source, err), "data.source") from None
    if len(ds) == 0:
        raise MedsftError(f"{source!r} has no rows", "point data.source at a file with rows", "data.source")
    return ds


def check_utf8(path: str) -> None:
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MedsftError(f"{path} line {number} is not valid UTF-8 (byte {err.start})",
                                  "re-encode the file as UTF-8", "data.source") from None


def describe_load_error(source: str, err: Exception) -> tuple[str, str]:
    text = " ".join(str(err).split())[:300]
    name = type(err).__name__
    if "corresponds to no data" in text or "EmptyDatasetError" in name:
        return f"{source} has no rows", "point data.source at a file with rows"
    if Path(source).suffix.lower() in (".json", ".jsonl", ".parquet"):
        return (f"cannot read {source} ({name}: {text})",
                "check that it is valid JSON/JSONL/Parquet with one object per row and consistent types")
    if "offline" in text.lower() or "connect" in text.lower() or name in ("ConnectionError", "DatasetNotFoundError",
                                                                          "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return (f"dataset {source!r} is not available offline ({name})",
                "download it once where the hub is reachable (it is then read from the HF cache), "
                "or set data.source to a local .json/.jsonl/.parquet file")
    return (f"cannot load dataset {source!r} ({name}: {text})", "check data.source, data.config and data.split")


def check_columns(ds, d) -> None:
    for key in ("question_column", "reasoning_column", "response_column"):
        col = getattr(d, key)
        if col not in ds.column_names:
            raise MedsftError(f"column {col!r} not found; the dataset has {', '.join(ds.column_names)}",
                              f"set data.{key} to the right column", "data")


def row_problem(row: dict, d) -> str | None:
    """Why a row is unusable, or None."""
    for key in ("question_column", "reasoning_column", "response_column"):
        value = row.get(getattr(d, key))
        if value is None:
            return f"missing {getattr(d, key)}"
        if not isinstance(value, str):
            return f"non-string {getattr(d, key)}"
        if not value.strip():
            return f"empty {getattr(d, key)}"
    return None


def to_prompt_completion(ds, d):
    """Keep good rows as prompt/completion with their original `row_id`; report what was dropped."""
    check_columns(ds, d)
    report = DropReport(total=len(ds))
    keep = []
    for i, row in enumerate(ds):
        problem = row_problem(row, d)
        if problem:
            report.reasons[problem] += 1
        else:
            keep.append(i)
    report.kept = len(keep)
    if report.total and report.dropped / report.total > d.max_bad_fraction:
        raise MedsftError(f"{report.dropped} of {report.total} rows are malformed "
                          f"({', '.join(f'{n} {r}' for r, n in report.reasons.most_common(3))}), "
                          f"more than data.max_bad_fraction={d.max_bad_fraction}",
                          "fix the data or raise data.max_bad_fraction", "data")
    good = ds.select(keep)

    def fmt(row, idx):
        text = completion_text(row[d.reasoning_column], row[d.response_column], d.format)
        return {"row_id": keep[idx], "prompt": prompt_messages(row[d.question_column], d.system_prompt),
                "completion": [{"role": "assistant", "content": text}]}

    formatted = good.map(fmt, with_indices=True, remove_columns=good.column_names)
    return formatted, report


def split(ds, d):
    """train/validation/test exactly as the notebook: 80/20 with the seed, then the 20 halved."""
    from datasets import DatasetDict

    if len(ds) < MIN_ROWS:
        raise MedsftError(f"only {len(ds)} usable rows; at least {MIN_ROWS} are needed for a train/validation/test "
                          "split", "use a larger dataset", "data")
    held = d.val_fraction + d.test_fraction
    if held == 0:
        return DatasetDict(train=ds, validation=ds.select([]), test=ds.select([]))
    first = ds.train_test_split(test_size=held, seed=d.split_seed)
    if d.test_fraction == 0:
        return DatasetDict(train=first["train"], validation=first["test"], test=ds.select([]))
    if d.val_fraction == 0:
        return DatasetDict(train=first["train"], validation=ds.select([]), test=first["test"])
    second = first["test"].train_test_split(test_size=d.test_fraction / held, seed=d.split_seed)
    return DatasetDict(train=first["train"], validation=second["train"], test=second["test"])


def load_splits(d):
    """Everything above in order: (DatasetDict, DropReport, raw dataset)."""
    raw = load_raw(d)
    if d.max_rows is not None:
        raw = raw.select(range(min(d.max_rows, len(raw))))
    formatted, report = to_prompt_completion(raw, d)
    return split(formatted, d), report, raw
