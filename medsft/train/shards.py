"""Which rows each rank trained on, recorded as the batches are collated.

Why: under DDP/ZeRO each rank must see a disjoint shard of the data; a sampler mistake (every rank
training the same rows) looks healthy in the loss but wastes N-1 GPUs. TRL's collator is used
unchanged; it is only wrapped to note the `row_id` of every example it collates for training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any


class RowIdRecorder:
    """A collator wrapper: notes `row_id`s, then hands the examples (without them) to TRL's collator."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], seen: list[int]) -> None:
        self.collator, self.seen = collator, seen

    def __call__(self, examples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        stripped = []
        for ex in examples:
            ex = dict(ex)
            row_id = ex.pop("row_id", None)
            if row_id is not None:
                self.seen.append(int(row_id))
            stripped.append(ex)
        return self.collator(stripped)


def gather_rows_seen(trainer: Any) -> dict[int, list[int]] | None:
    """{rank: row ids} on the main process (None elsewhere); every rank must call it."""
    from accelerate.utils import gather_object

    from medsft.console import is_main, rank

    per_rank = gather_object([(rank(), trainer.rows_seen)])
    if not is_main():
        return None
    return {rank: rows for rank, rows in per_rank}
