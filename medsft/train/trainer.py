"""medsft's SFTTrainer: TRL's trainer, plus what TRL does not do.

1. It records which rows each rank draws (medsft.train.shards), to show that ranks train disjoint shards.
2. A resumed run continues in the precision TRL trains QLoRA adapters in (bf16), so resuming is exact.
3. It evaluates with the NLL loss whatever the training loss (medsft/upstream.py `nll_loss`): DFT's loss
   is weighted by the model's own probabilities and can rise while the model improves, so eval_loss is
   the mean NLL per completion token, and eval_perplexity = exp(eval_loss) is logged beside it.
"""

from __future__ import annotations

import math

from medsft.train.shards import RowIdRecorder
from medsft.upstream import nll_loss


def add_perplexity(metrics: dict) -> dict:
    if "eval_loss" in metrics and metrics["eval_loss"] < 50:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    return metrics


def trainer_class():
    from trl import SFTTrainer

    class MedsftTrainer(SFTTrainer):
        rows_seen: list

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "row_id" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "row_id"]

        def _with_recorder(self, seen, build):
            collator = self.data_collator
            self.data_collator = RowIdRecorder(collator, seen)
            try:
                return build()
            finally:
                self.data_collator = collator

        def get_train_dataloader(self):
            return self._with_recorder(self.rows_seen, super().get_train_dataloader)

        def get_eval_dataloader(self, eval_dataset=None):
            return self._with_recorder([], lambda: super(MedsftTrainer, self).get_eval_dataloader(eval_dataset))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            # TRL trains a quantized model's LoRA weights in bf16, PEFT's loader upcasts them to fp32:
            # cast back, or a resumed run computes in another precision than the run it continues.
            target = model or self.model
            base = getattr(target, "base_model", target)
            inner = getattr(base, "model", base)
            if getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False):
                import torch

                for name, param in target.named_parameters():
                    if param.requires_grad and "lora_magnitude_vector" not in name:
                        param.data = param.data.to(torch.bfloat16)

        def evaluate(self, *args, **kwargs):
            with nll_loss(self):
                return super().evaluate(*args, **kwargs)

        def log(self, logs, start_time=None):
            super().log(add_perplexity(logs), start_time)

    return MedsftTrainer
