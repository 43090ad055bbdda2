"""Which rows each rank trained on, recorded as the batches are collated.

Why: under DDP/ZeRO each rank must see a disjoint shard of the data; a sampler mistake (every rank
training the same rows) looks healthy in the loss but wastes N-1 GPUs. TRL's collator is used
unchanged; it is only wrapped to note the `row_id` of every example it collates for training.
"""

from __future__ import annotations


class RowIdRecorder:
    """A collator wrapper: notes `row_id`s, then hands the examples (without them) to TRL's collator."""

    def __init__(self, collator, seen: list):
        self.collator, self.seen = collator, seen

    def __call__(self, examples):
        stripped = []
        for ex in examples:
            ex = dict(ex)
            row_id = ex.pop("row_id", None)
            if row_id is not None:
                self.seen.append(int(row_id))
            stripped.append(ex)
        return self.collator(stripped)


def recording_trainer_class():
    """SFTTrainer whose training dataloader records row ids into `trainer.rows_seen`."""
    from trl import SFTTrainer

    class RecordingSFTTrainer(SFTTrainer):
        rows_seen: list

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "row_id" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "row_id"]

        def get_train_dataloader(self):
            collator = self.data_collator
            self.data_collator = RowIdRecorder(collator, self.rows_seen)
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = collator

        def get_eval_dataloader(self, eval_dataset=None):
            collator = self.data_collator
            self.data_collator = RowIdRecorder(collator, [])
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = collator

    return RecordingSFTTrainer


def gather_rows_seen(trainer) -> dict[int, list[int]] | None:
    """{rank: row ids} on the main process (None elsewhere); every rank must call it."""
    from accelerate.utils import gather_object

    per_rank = gather_object([(trainer.accelerator.process_index, trainer.rows_seen)])
    if not trainer.accelerator.is_main_process:
        return None
    return {rank: rows for rank, rows in per_rank}
