"""`medsft data`: what will be trained, shown before any GPU time is spent.

Why: the notebook silently trained the question too. This command shows rows kept and dropped, token
length statistics against max_length, and each example with the trained span highlighted; `--json`
prints `input_ids` and `labels` exactly as the trainer receives them (the same prepared dataset). Every
format shows its own trained spans (a conversation: each assistant turn); a mixture also gets a table of
rows per source and split, and its examples start with one from each source.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from rich.table import Table

    from medsft.data.load import DropReport
    from medsft.recipe.schema import Recipe


def spans(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive runs of (trained?, token ids)."""
    runs: list[tuple[bool, list[int]]] = []
    for tok, lab in zip(input_ids, labels):
        trained = lab != -100
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(tok)
        else:
            runs.append((trained, [tok]))
    return runs


def show(recipe: Recipe, *, limit: int | None, split: str, as_json: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from medsft.console import rich_console
    from medsft.data import load as data
    from medsft.errors import MedsftError
    from medsft.launch import detect as launch
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    console = rich_console(stderr=as_json)
    spec = resolve(recipe, launch.detect(), kernels="off")
    # the data stage of `medsft train`'s own assembly: the same prepared (and cached) splits, shown here
    built = assembly.build(spec, stop_after="data", report=lambda m: console.print(m, markup=False))
    tokenizer, stage = built.tokenizer, built.data
    assert stage is not None  # the data stage ran
    report, prepared, stats, dropped = stage.report, stage.prepared, stage.stats, stage.dropped
    ds = prepared[split]

    console.print(report.summary())
    table = Table(title=f"token lengths (max_length={recipe.training.max_length})")
    for col in ("split", "rows", "min", "median", "p95", "max", "> max_length", "dropped"):
        table.add_column(col, justify="right")
    for name, st in stats.items():
        if st.get("count"):
            table.add_row(name, str(st["count"]), str(st["min"]), f"{st['median']:g}", str(st["p95"]),
                          str(st["max"]), str(st["over_max_length"]), str(dropped.get(name, 0)))
    console.print(table)
    mixture = len(report.sources) > 1
    if mixture:
        console.print(source_table(report, prepared))
    after = data.row_ids(prepared)
    outcome = data.mixture_outcome(report, stage.row_ids, after, recipe.data, spec.drop_longer_than, check=False)
    if outcome:
        console.print(outcome, markup=False)
        try:
            data.mixture_outcome(report, stage.row_ids, after, recipe.data, spec.drop_longer_than)
        except MedsftError as err:
            console.print(f"medsft train refuses this mixture: {err.line()}", markup=False)

    if as_json:
        n = len(ds) if limit is None else min(limit, len(ds))
        out = sys.stdout
        for row in ds.select(range(n)):
            source = {"source": report.source_of(row["row_id"])} if mixture else {}
            out.write(json.dumps({"row_id": row["row_id"], **source, "input_ids": row["input_ids"],
                                  "labels": row["labels"]}) + "\n")
        out.flush()
        return
    n = min(3 if limit is None else limit, len(ds))
    for row in ds.select(example_rows(ds, report, n)):
        text = Text()
        for trained, ids in spans(row["input_ids"], row["labels"]):
            text.append(tokenizer.decode(ids), style="bold green" if trained else "dim")
        trained_count = sum(lab != -100 for lab in row["labels"])
        where = f" ({report.source_of(row['row_id'])})" if mixture else ""
        console.rule(f"{split} row {row['row_id']}{where}: {len(row['input_ids'])} tokens, "
                     f"{trained_count} trained (green)")
        console.print(text)


def example_rows(ds: Dataset, report: DropReport, n: int) -> list[int]:
    """Positions of the examples to show: the first of each source (a mixture shows every source and format),
    then the first rows in order, `n` in all."""
    ids = list(ds["row_id"]) if len(ds) else []
    first: dict[str, int] = {}  # source name -> the position of its first row
    for pos, row_id in enumerate(ids):
        first.setdefault(report.source_of(row_id), pos)
    picks = list(first.values())[:n] if len(report.sources) > 1 else []
    picks += [pos for pos in range(len(ids)) if pos not in picks][:n - len(picks)]
    return sorted(picks)


def source_table(report: DropReport, prepared: DatasetDict) -> Table:
    """Rows read, kept, and examples per split for each source of a mixture."""
    from rich.table import Table

    from medsft.data.load import row_ids

    table = Table(title="sources")
    for col in ("source", "format", "weight", "rows", "kept", *prepared):
        table.add_column(col, justify="left" if col in ("source", "format") else "right", overflow="fold")
    for name, c in report.source_counts(row_ids(prepared)).items():
        table.add_row(name, c["format"], "-" if c["weight"] is None else f"{c['weight']:g}", str(c["rows"]),
                      str(c["kept"]), *(str(c[s]) for s in prepared))
    return table
