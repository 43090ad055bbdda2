"""The recipe's data section: one source or a weighted mixture, its columns and format, and the split.

Why its own module: which rows train is the part of a recipe that grows (formats, mixtures), and its
checks touch the filesystem (a named file must exist, with a type datasets can read) — all still
before torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from medsft.errors import MedsftError
from medsft.paths import looks_local
from medsft.recipe.checks import Float, Fraction, Int, Label, PathText, PositiveInt, Section, Text, rule

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
    source: PathText = Field(description="a hub dataset id, a local .json/.jsonl/.parquet file, or "
                             "builtin:tiny-medical")
    config: Label | None = Field(None, description="hub dataset config name; null = the dataset's default")
    split: Text = Field("train", description="the dataset split read (medsft then splits it into train, "
                        "validation and test)")
    revision: Label | None = Field(None, description="hub revision of the dataset; null = main")
    weight: Weight | None = Field(None, description="share of the training split; every source has one, or none")
    max_rows: MaxRows | None = Field(None, description="read only the source's first N rows; null = all")
    format: Format | None = Field(None, description="this source's format; null = data.format")
    question_column: Text | None = Field(None, description="null = data.question_column")
    reasoning_column: Text | None = Field(None, description="null = data.reasoning_column")
    response_column: Text | None = Field(None, description="null = data.response_column")
    messages_column: Text | None = Field(None, description="null = data.messages_column")

class DataSection(Section):
    source: PathText = Field(DEFAULT_DATASET, description="a hub dataset id, a local .json/.jsonl/.parquet file, "
                             "or builtin:tiny-medical")
    config: Label | None = Field("en", description="hub dataset config name; null = the dataset's default")
    split: Text = Field("train", description="the dataset split read (medsft then splits it into train, "
                        "validation and test)")
    revision: Label | None = Field(None, description="hub revision of the dataset; null = main")
    # medsft/data/formats.py
    format: Format = Field("think", description="think: <think>{reasoning}</think>{response}; huatuo: "
                           "## Thinking … ## Final Response …; messages: conversations")
    question_column: Text = Field("Question", description="the column holding the question")
    reasoning_column: Text = Field("Complex_CoT", description="the column holding the reasoning")
    response_column: Text = Field("Response", description="the column holding the answer")
    messages_column: Text | None = Field(None, description="format messages: the conversations column; null = "
                                         "messages, else conversations")
    roles: dict[Text, Role] | None = Field(None, description="format messages: extra role names mapped to system, "
                                           "user or assistant, e.g. {bot: assistant}")
    sources: list[SourceSection] | None = Field(None, description="a mixture, instead of source, config, split, "
                                                "revision and max_rows (entries below)")
    weighting: Literal["downsample", "upsample"] = Field("downsample", description="how weights shape the training "
                                                         "split: downsample never repeats a row, upsample repeats "
                                                         "smaller sources")
    max_repeats: PositiveInt = Field(100, description="upsample: the most times one row may appear in the training "
                                     "split")
    allow_share_drift: bool = Field(False, description="train even when a source's share of the training split ends "
                                    "far from its weight (long rows dropped) or a source vanishes")
    system_prompt: str | None = Field(None, description="a system turn put before every prompt, in training, "
                                      "inference and evaluation (a conversation's own system turn is kept)")
    max_bad_fraction: Annotated[Float, rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")] = \
        Field(0.05, description="the largest share of malformed rows that are dropped and counted; more is "
              "refused")
    max_rows: MaxRows | None = Field(None, description="read only the first N rows; null = all")
    split_seed: Annotated[Int, rule(lambda v: 0 <= v < 2**32, "must be in [0, 2**32) — the split's random "
                                                              "seed, e.g. 816")] = \
        Field(816, description="the seed of the train/validation/test split (816, the notebook's)")
    val_fraction: Fraction = Field(0.1, description="share of rows in the validation split")
    test_fraction: Fraction = Field(0.1, description="share of rows in the held-out test split")

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
            formats = f"data.format is {entries[0][1]}" if len(entries) == 1 else "no source has format: messages"
            raise MedsftError(f"data.{key} is set but {formats}, and only conversations read it",
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
