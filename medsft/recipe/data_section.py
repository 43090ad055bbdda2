"""The recipe's data section: one source or a weighted mixture, its columns and format, and the split.

Why its own module: which rows train is the part of a recipe that grows (formats, mixtures), and its
checks touch the filesystem (a named file must exist, with a type datasets can read) — all still
before torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from medsft.recipe.checks import Float, Fraction, Int, Label, PathText, PositiveInt, Section, Text, rule
from medsft.errors import MedsftError
from medsft.paths import looks_local

DEFAULT_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
OTHER_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".arrow", ".yaml", ".yml", ".gz", ".zip")

Format = Literal["think", "huatuo", "messages"]  # medsft/data/formats.py
Role = Literal["system", "user", "assistant"]
Weight = Annotated[Float, rule(lambda v: 0 < v <= 1, "must be in (0, 1] — weights are shares of the training "
                                                     "split, e.g. 0.75 and 0.25")]
MaxRows = Annotated[Int, rule(lambda v: v > 0, "must be positive — use null for all rows")]


SINGLE_SOURCE_KEYS = ("source", "config", "split", "revision", "max_rows")  # data.sources names them per source


class SourceSection(Section):
    """One entry of data.sources; a key left out takes the data section's value (columns, format)."""
    source: PathText  # hub id, local .json/.jsonl/.parquet, or builtin:tiny-medical
    config: Label | None = None  # hub dataset config name (null: the dataset's default)
    split: Text = "train"
    revision: Label | None = None
    weight: Weight | None = None  # share of the training split (all sources weighted, or none)
    max_rows: MaxRows | None = None  # the source's first N rows
    format: Format | None = None
    question_column: Text | None = None
    reasoning_column: Text | None = None
    response_column: Text | None = None
    messages_column: Text | None = None

class DataSection(Section):
    source: PathText = DEFAULT_DATASET  # hub id, local .json/.jsonl/.parquet, or builtin:tiny-medical
    config: Label | None = "en"  # hub dataset config name
    split: Text = "train"
    revision: Label | None = None
    format: Format = "think"  # the assistant turn's layout, or conversations (medsft/data/formats.py)
    question_column: Text = "Question"
    reasoning_column: Text = "Complex_CoT"
    response_column: Text = "Response"
    messages_column: Text | None = None  # format messages: null = `messages`, else `conversations`
    roles: dict[Text, Role] | None = None  # format messages: dataset role -> system/user/assistant (+ ShareGPT's)
    sources: list[SourceSection] | None = None  # a mixture, instead of source/config/split/revision/max_rows
    weighting: Literal["downsample", "upsample"] = "downsample"  # how weights shape the training split
    max_repeats: PositiveInt = 100  # upsample: the most times one row may appear in the training split
    # a source's training share may end far from its weight (long rows dropped), or a source vanish entirely
    allow_share_drift: bool = False
    system_prompt: str | None = None
    max_bad_fraction: Annotated[Float, rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")] = 0.05
    max_rows: MaxRows | None = None
    split_seed: Annotated[Int, rule(lambda v: 0 <= v < 2**32, "must be in [0, 2**32) — the split's random "
                                                              "seed, e.g. 816")] = 816  # the notebook's seed
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1

    def source_entries(self) -> list[tuple[str, SourceSection]]:
        """The sources as one list, with the key each is written under: data.sources, or a mixture of one made
        of data.source and its keys (the one place the two ways of writing a recipe differ)."""
        if self.sources is not None:
            return [(f"data.sources[{i}]", s) for i, s in enumerate(self.sources)]
        return [("data.source", SourceSection(**{key: getattr(self, key) for key in SINGLE_SOURCE_KEYS}))]


def check_data_files(d: DataSection, where: str) -> None:
    """Every file the data section names exists and is a type datasets reads; conversation settings are
    only set where a source reads conversations."""
    check_conversation_keys(d, where)
    check_sources(d, where)
    for key, entry in d.source_entries():
        check_data_file(entry.source, f"{key}.source" if key != "data.source" else key, where)


def check_data_file(source: str, key: str, where: str) -> None:
    """A data source that names a file must be an existing .json/.jsonl/.parquet file."""
    suffix = Path(source).suffix.lower()
    if looks_local(source) or suffix in DATA_SUFFIXES + OTHER_FILE_SUFFIXES or Path(source).is_file():
        if suffix not in DATA_SUFFIXES:
            raise MedsftError(f"{key} {source!r} has an unsupported file type",
                              "use a .json, .jsonl or .parquet file, or a hub dataset id", where)
        if not Path(source).is_file():
            raise MedsftError(f"{key} file {source!r} not found",
                              "check the path (relative paths are read from the current directory)", where)


def check_conversation_keys(d: DataSection, where: str) -> None:
    """data.roles and messages_column are read only by `format: messages`; set beside another format they
    would be silently ignored."""
    entries = [(key, s.format or d.format, s.messages_column) for key, s in d.source_entries()]
    for key, fmt, column in entries:
        if column is not None and fmt != "messages":
            raise MedsftError(f"{key}.messages_column is set but its format is {fmt}",
                              f"set {key}.format: messages, or remove messages_column", where)
    if any(fmt == "messages" for _, fmt, _ in entries):
        return
    for key in ("roles", "messages_column"):
        if getattr(d, key) is not None:
            fmt = f"data.format is {entries[0][1]}" if len(entries) == 1 else "no source has format: messages"
            raise MedsftError(f"data.{key} is set but {fmt}, and only conversations read it",
                              f"set data.format: messages (or remove data.{key})", where)


def check_sources(d: DataSection, where: str) -> None:
    """data.sources: not empty, single-source keys are not set beside it, weights are all-or-none shares that
    sum to 1 (within 0.01, then normalized)."""
    if d.sources is None:  # written as one data.source: no list to check
        return
    if len(d.sources) == 0:
        raise MedsftError("data.sources is empty", "list at least one source, or remove data.sources and use "
                          "data.source", where)
    for key in SINGLE_SOURCE_KEYS:
        if getattr(d, key) != DataSection.model_fields[key].default:
            raise MedsftError(f"data.{key} is set beside data.sources", f"move it into each entry of data.sources "
                              f"(`- source: ...` with `{key}:`), or remove data.sources", where)
    weights = [s.weight for s in d.sources]
    given = [w for w in weights if w is not None]
    if given and len(given) != len(weights):
        missing = ", ".join(f"data.sources[{i}]" for i, w in enumerate(weights) if w is None)
        raise MedsftError(f"only some sources have a weight ({missing} has none)",
                          "give every source a weight (shares that sum to 1), or none", where)
    if given and abs(sum(given) - 1) > 0.01:
        raise MedsftError(f"data.sources weights sum to {sum(given):g}, not 1",
                          "weights are shares of the training split: make them sum to 1, e.g. 0.75 and 0.25", where)
