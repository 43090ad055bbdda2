"""Format metrics during training: at each evaluation, generate for a few validation questions.

Why: a falling loss does not show whether the model writes its reasoning block, closes it, answers and
stops; generating for N validation rows does (eval_format_compliance, eval_well_formed_think,
eval_stopped_at_end_of_turn). Off by default (`evaluation.generations: N`): generation is slow. Main
process only; skipped when parameters are sharded (generating would need every rank).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from medsft.console import is_main
from medsft.data.formats import format_metrics
from medsft.evaluation.generate import Settings, generate_batch

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from medsft.recipe.data_section import DataSection


class GenerationEvalCallback(TrainerCallback):
    def __init__(self, trainer: Any, questions: list[str], tokenizer: Any, max_new_tokens: int,
                 data_section: DataSection) -> None:
        self.trainer, self.questions, self.tokenizer = trainer, questions, tokenizer
        self.max_new_tokens, self.data = max_new_tokens, data_section

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not is_main() or not self.questions or model is None:
            return
        was_training = model.training
        model.eval()
        use_cache = getattr(model.config, "use_cache", False)
        model.config.use_cache = True
        try:
            records = generate_batch(model, self.tokenizer, self.questions, Settings(max_new_tokens=self.max_new_tokens),
                                     self.data.system_prompt, self.data.format)
        finally:
            model.config.use_cache = use_cache
            if was_training:
                model.train()
        logs = {f"eval_{k}": v for k, v in format_metrics(records, self.tokenizer, self.data.format).items() if k != "n"}
        if metrics is not None:
            metrics.update(logs)
        self.trainer.log(logs)
