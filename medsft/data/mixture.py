"""Where a run's rows come from: its sources (a mixture under `data.sources`, or the mixture of one that
`data.source` names), their columns, and the shares a mixture's weights give each source in the training split.

Why a module: a mixture is more than a list of files. Each source keeps its own hub config, split, columns
and format, so the medical-o1 `en` and `zh` configs, the authors' `huatuo` layout and a general ShareGPT
instruction set can train together. Their rows are concatenated in recipe order under the data section's
column names (row ids stay indices into that concatenation, which evaluation reloads); a column some
sources lack is null in the others. Weights are shares of the training split, realised by seeded
sampling of each source's training rows (medsft/data/load.py splits each source first, so validation and
test never hold a trained row):
- `downsample` (default): the largest mixture with those shares in which no row repeats — the source that
  runs out first sets the total; an epoch never sees a row twice;
- `upsample`: the source with the most rows for its share keeps them all, the others repeat theirs
  (every row as often as fits, the remainder drawn without replacement).
`max_rows` caps a source before anything else (its first N rows; `data.max_rows` for a single source).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError
from medsft.recipe.data_section import DATA_SUFFIXES

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from medsft.recipe.data_section import DataSection

SOURCE_COLUMN = "medsft_source"  # in a mixture's raw rows: the index of the source in data.sources


@dataclass(frozen=True)
class Source:
    """One source, with every setting resolved (a mixture entry's missing keys come from the data section)."""
    name: str
    source: str
    config: str | None
    split: str
    revision: str | None
    format: str
    question_column: str
    reasoning_column: str
    response_column: str
    messages_column: str | None  # None: `messages`, else `conversations`
    roles: dict | None = None
    weight: float | None = None
    max_rows: int | None = None
    where: str = "data.source"


def sources_of(d: DataSection) -> list[Source]:
    """The recipe's sources, one pipeline for each: data.sources, or the mixture of one data.source names."""
    common = dict(question_column=d.question_column, reasoning_column=d.reasoning_column,
                  response_column=d.response_column, messages_column=d.messages_column, format=d.format)
    entries = d.source_entries()
    labels = [label(s.source, s.config) for _, s in entries]
    out = []
    for i, (where, s) in enumerate(entries):
        name = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]}#{i + 1}"
        own = {k: getattr(s, k) for k in common if getattr(s, k) is not None}
        out.append(Source(name=name, source=s.source, config=s.config, split=s.split, revision=s.revision,
                          roles=d.roles, weight=s.weight, max_rows=s.max_rows, where=where, **{**common, **own}))
    return out


def label(source: str, config: str | None) -> str:
    """A short name for a source: the file name, or hub id:config."""
    if Path(source).suffix.lower() in DATA_SUFFIXES:
        return Path(source).name
    return f"{source}:{config}" if config and not source.startswith("builtin:") else source


def combine(parts: list[Dataset], d: DataSection) -> Dataset:
    """The sources' datasets (in recipe order, each capped) as one: columns renamed to the data section's, a
    `medsft_source` column, the union of columns."""
    from datasets import concatenate_datasets

    named = [canonical_columns(ds, src, d) for ds, src in zip(parts, sources_of(d))]
    tagged = [ds.add_column(SOURCE_COLUMN, [index] * len(ds)) for index, ds in enumerate(named)]
    return concatenate_datasets(align_columns(tagged, d))


def capped(ds: Dataset, src: Source) -> Dataset:
    """A source's first max_rows rows (all of them when it has no cap)."""
    return ds.select(range(min(src.max_rows, len(ds)))) if src.max_rows is not None else ds


def messages_column(column_names: list[str], src: Source) -> str:
    """The conversation column: data.messages_column, else `messages`, else ShareGPT's `conversations`."""
    if src.messages_column:
        return src.messages_column
    return "conversations" if "messages" not in column_names and "conversations" in column_names else "messages"


def used_columns(ds: Dataset, src: Source) -> dict[str, str]:
    """{setting: column} this source's format reads."""
    if src.format == "messages":
        return {"messages_column": messages_column(ds.column_names, src)}
    return {key: getattr(src, key) for key in ("question_column", "reasoning_column", "response_column")}


def canonical_names(d: DataSection) -> dict[str, str]:
    """The columns every row of a mixture is read through: the data section's."""
    return {"messages_column": d.messages_column or "messages", "question_column": d.question_column,
            "reasoning_column": d.reasoning_column, "response_column": d.response_column}


def reading_sources(d: DataSection) -> list[Source]:
    """The Source each row of `combine`'s result is read with: its own, through the data section's columns."""
    columns: dict[str, Any] = canonical_names(d)  # str values for Source's str fields
    return [replace(s, **columns) for s in sources_of(d)]


def check_columns(ds: Dataset, src: Source) -> None:
    for key, col in used_columns(ds, src).items():
        if col not in ds.column_names:
            setting = f"{src.where}.{key}" if src.where != "data.source" else f"data.{key}"
            raise MedsftError(f"column {col!r} not found in {src.name}; it has {', '.join(ds.column_names)}",
                              f"set {setting} to the right column", "data")


def canonical_columns(ds: Dataset, src: Source, d: DataSection) -> Dataset:
    """A source's columns renamed to the data section's names, so every row is read (and evaluated) through
    the same names."""
    check_columns(ds, src)
    target = canonical_names(d)
    rename = {col: target[key] for key, col in used_columns(ds, src).items() if col != target[key]}
    clash = [new for new in rename.values() if new in ds.column_names and new not in rename]
    if clash:
        raise MedsftError(f"{src.name} has a column {clash[0]!r} besides the column medsft reads under that name",
                          "rename or remove it in the data, or give the data section's column another name", src.where)
    ds = ds.rename_columns(rename) if rename else ds
    return openai_turns(ds, target["messages_column"]) if src.format == "messages" else ds


def openai_turns(ds: Dataset, column: str) -> Dataset:
    """A conversation column as OpenAI turns ({role, content}, other keys left out), so ShareGPT sources
    ({from, value}) and OpenAI ones concatenate; formats.conversation reads the result as it read the
    original. A column whose role or text is not plain strings is left as it is."""
    from datasets import List, Value

    inner = getattr(ds.features.get(column), "feature", None)
    if not isinstance(inner, dict):
        return ds
    pairs = [(r, c) for r, c in (("role", "content"), ("from", "value")) if r in inner and c in inner]
    if not pairs or any(inner[key] != Value("string") for pair in pairs for key in pair):
        return ds
    if set(inner) == {"role", "content"}:
        return ds

    def turn(t: dict) -> dict:
        role, content = pairs[0] if t.get(pairs[0][0]) is not None or len(pairs) == 1 else pairs[1]
        return {"role": t.get(role), "content": t.get(content)}

    features = ds.features.copy()
    features[column] = List({"role": Value("string"), "content": Value("string")})
    return ds.map(lambda batch: {column: [None if conv is None else [turn(t) for t in conv]
                                          for conv in batch[column]]},
                  batched=True, features=features, desc=f"{column}: OpenAI turns")


def align_columns(parts: list[Dataset], d: DataSection) -> list[Dataset]:
    """The union of the sources' columns (a column a source lacks is null there), so they concatenate. A column
    two sources give different types is dropped unless medsft reads it (then: one line)."""
    names = list(dict.fromkeys(c for ds in parts for c in ds.column_names))
    kinds: dict[str, list] = {}
    for ds in parts:
        for col, feature in ds.features.items():
            if getattr(feature, "dtype", None) != "null" and feature not in kinds.setdefault(col, []):
                kinds[col].append(feature)
    conflicting = {col for col, fs in kinds.items() if len(fs) > 1}
    read = {d.question_column, d.reasoning_column, d.response_column, d.messages_column or "messages"}
    if conflicting & read:
        col = sorted(conflicting & read)[0]
        raise MedsftError(f"the sources give column {col!r} different types ({', '.join(map(str, kinds[col]))})",
                          "make the column the same type in every source", "data.sources")
    out = []
    for ds in parts:
        ds = ds.remove_columns([c for c in ds.column_names if c in conflicting])
        for col in names:
            if col not in conflicting and col not in ds.column_names:
                ds = ds.add_column(col, [None] * len(ds))
        out.append(ds.select_columns([c for c in names if c not in conflicting]))
    return out  # a null column aligns with any type in concatenate_datasets


def weighted_sizes(sizes: list[int], weights: list[float], how: str) -> list[int]:
    """Training examples per source for the given shares: `downsample` — the largest mixture in which no row
    repeats (the source that runs out first sets the total); `upsample` — the mixture in which the source with
    the most rows for its share keeps them all and the others repeat theirs."""
    total = sum(weights)
    shares = [w / total for w in weights]
    scale = (min if how == "downsample" else max)(n / s for n, s in zip(sizes, shares))
    want = [round(s * scale) for s in shares]
    return [min(n, w) if how == "downsample" else max(n, w) for n, w in zip(want, sizes)]


def sample_rows(n_rows: int, n_out: int, seed: int, index: int) -> list[int]:
    """`n_out` row positions out of `n_rows`: every row as often as fits, the rest drawn without replacement by a
    generator seeded with (split seed, source index); sorted, so the result reads in dataset order."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    whole, rest = divmod(n_out, n_rows)
    picks = list(range(n_rows)) * whole + rng.choice(n_rows, size=rest, replace=False).tolist()
    return sorted(picks)


def weigh(parts: list[DatasetDict], weights: list[float | None], d: DataSection, names: list[str] | None = None
          ) -> None:
    """Each source's training split (`parts`: one DatasetDict per source) sampled to its weight, in place;
    nothing when the sources are not weighted. Refused: a weight that leaves its source no row, and
    upsampling that repeats a row more than data.max_repeats times (440 rows at 0.999/0.001 would become
    220,000: hours of one row over and over, never what a user meant)."""
    if not parts or any(w is None for w in weights):
        return
    names = names or [f"data.sources[{i}]" for i in range(len(parts))]
    rows = [len(p["train"]) for p in parts]
    sizes = weighted_sizes(rows, [w for w in weights if w is not None], d.weighting)  # every one, past the check
    for name, weight, n, size in zip(names, weights, rows, sizes):
        if size == 0 and n and not d.allow_share_drift:
            raise MedsftError(f"weight {weight:g} gives {name} none of its {n} training rows "
                              f"(weighting: {d.weighting})",
                              "raise its weight, use weighting: upsample, or set data.allow_share_drift: true to "
                              "train without it", "data.sources")
        if n and -(-size // n) > d.max_repeats:
            raise MedsftError(f"weighting: upsample would repeat each of {name}'s {n} training rows about "
                              f"{size / n:.0f} times ({n} rows → {size}), more than data.max_repeats={d.max_repeats}",
                              "use weighting: downsample, weights nearer the sources' sizes, or raise "
                              "data.max_repeats", "data.weighting")
    for index, (part, n) in enumerate(zip(parts, sizes)):
        part["train"] = part["train"].select(sample_rows(len(part["train"]), n, d.split_seed, index))


def share_tolerance(weight: float, total: int) -> float:
    """How far a source's share of the training split may end from its weight: 2 percentage points or a tenth
    of the weight, whichever is larger, plus one row (rounding on small splits)."""
    return max(0.02, 0.1 * weight) + 1 / max(total, 1)
