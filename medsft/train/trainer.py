"""medsft's SFTTrainer: TRL's trainer, plus what TRL does not do.

1. It records which rows each rank draws (medsft.train.shards), to show that ranks train disjoint shards.
2. A resumed run continues in the precision TRL trains QLoRA adapters in (bf16), so resuming is exact.
3. It evaluates with the NLL loss whatever the training loss (medsft/upstream.py `nll_loss`): DFT's loss
   is weighted by the model's own probabilities and can rise while the model improves, so eval_loss is
   the mean NLL per completion token, and eval_perplexity = exp(eval_loss) is logged beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medsft.train.shards import RowIdRecorder
from medsft.upstream import nll_loss

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from trl import SFTTrainer


def add_perplexity(metrics: dict[str, float]) -> dict[str, float]:
    if "eval_loss" in metrics and metrics["eval_loss"] < 50:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    return metrics


def trainer_class() -> type[SFTTrainer]:
    from trl import SFTTrainer

    class MedsftTrainer(SFTTrainer):
        rows_seen: list[int]

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            # transformers' Trainer starts it as None (so typed); the call above made it the list of names
            if "row_id" not in self._signature_columns:  # type: ignore[operator]
                self._signature_columns = [*self._signature_columns, "row_id"]  # type: ignore[assignment, misc]

        def _with_recorder(self, seen: list[int], build: Callable[[], DataLoader]) -> DataLoader:
            collator = self.data_collator
            self.data_collator = RowIdRecorder(collator, seen)
            try:
                return build()
            finally:
                self.data_collator = collator

        def get_train_dataloader(self) -> DataLoader:
            return self._with_recorder(self.rows_seen, super().get_train_dataloader)

        def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
            return self._with_recorder([], lambda: super(MedsftTrainer, self).get_eval_dataloader(eval_dataset))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            # TRL trains a quantized model's LoRA weights in bf16, PEFT's loader upcasts them to fp32:
            # cast back, or a resumed run computes in another precision than the run it continues.
            target = model or self.model
            base = getattr(target, "base_model", target)
            inner = getattr(base, "model", base)
            if getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False):
                import torch

                assert target is not None  # it holds the 4-bit model checked above
                for name, param in target.named_parameters():
                    if param.requires_grad and "lora_magnitude_vector" not in name:
                        param.data = param.data.to(torch.bfloat16)

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            with nll_loss(self):
                return super().evaluate(*args, **kwargs)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            super().log(add_perplexity(logs), start_time)

    return MedsftTrainer
