"""One run assembly: RunSpec → tokenizer → data → model → trainer, in that order, for every caller.

Why one place: `medsft train`, `medsft data`, the benchmarks and the tests must train on the same rows with
the same model; copies of this sequence drifted apart (one skipped the embedding fit and the kernels).
Like torchtune's recipes, setup is a fixed series of stages, each a plain function a caller can stop after:
`build(spec, stop_after="data")` is `medsft data`, `stop_after="model"` is the bare-TRL baseline's share
(everything up to the trainer, which is TRL's own there). Printing and refusing belong to the commands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medsft.console import notice
from medsft.data.cache import PreparedData
from medsft.errors import MedsftError

if TYPE_CHECKING:
    from datasets import DatasetDict
    from peft import LoraConfig
    from trl import SFTConfig

    from medsft.recipe.schema import Recipe
    from medsft.train.runspec import RunSpec

STAGES = ("tokenizer", "data", "model", "trainer")


@dataclass
class Assembly:
    """What the stages built, so far as they ran (later stages' fields stay None)."""

    spec: RunSpec
    tokenizer: Any = None
    data: PreparedData | None = None  # the tokenized splits as the trainer receives them, and their account
    cache_lines_by_rank: list[list[str]] = field(default_factory=list)  # every rank's (the manifest records them)
    model: Any = None  # the base model: quantized, placed, embeddings fitted, trainable 4-bit layout
    attention: str | None = None  # the attention implementation the model was loaded with
    embedding_rows_added: int = 0
    kernels: Any = None  # what kernels.apply ran
    args: Any = None  # the SFTConfig
    trainer: Any = None


def lora_config(recipe: Recipe, trainable_tokens: dict[str, list[int]] | None = None) -> LoraConfig:
    """LoRA as the recipe says; `trainable_tokens` (medsft/model/load.py) also trains the rows of a chat template's
    tokens (PEFT's trainable_token_indices: only those rows, saved in the adapter)."""
    from peft import LoraConfig

    lo = recipe.lora
    # PEFT annotates lora_alpha `int`; it only divides by it (scaling = alpha / r), and a recipe's may be 16.5
    return LoraConfig(r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout, bias=lo.bias,  # type: ignore[arg-type]
                      target_modules=lo.target_modules, task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_tokens)


def load_tokenizer(spec: RunSpec) -> Any:
    from medsft.model import load as model_mod

    return model_mod.load_tokenizer(spec.recipe.model)


def prepare_data(spec: RunSpec, tokenizer: Any, into: Assembly | None = None,
                 report: Callable[[str], None] | None = None) -> Assembly:
    """Rows loaded, checked, split and tokenized with long rows dropped, through the shared cache
    (medsft/data/cache.py: the main process prepares, the others load). `report` receives each cache line
    as it happens (they are kept in `data.cache_lines` either way)."""
    from medsft.data.cache import prepared_data

    run = into or Assembly(spec)
    run.tokenizer = tokenizer
    run.data = prepared_data(spec.recipe.data, tokenizer, spec.tokenization(), chat_template=spec.recipe.model.chat_template,
                             content=spec.identity()["data"]["content"], report=report)
    return run


def prepare_model(spec: RunSpec, tokenizer: Any, into: Assembly | None = None) -> Assembly:
    """The base model as this run trains it: loaded quantized and placed with the run's attention, the
    embedding matrix grown for a chat template's new tokens, bitsandbytes' CPU inference layout kept away
    (evaluation inside training must not repack trained 4-bit weights), and the run's kernels applied."""
    from medsft.model import kernels
    from medsft.model import load as model_mod
    from medsft.upstream import keep_4bit_trainable_layout

    run = into or Assembly(spec, tokenizer=tokenizer)
    run.model, run.attention = model_mod.load_model(spec.recipe.model, spec.recipe.quantization, spec.placement, spec.launch.cuda, spec.attention)
    notice(spec.attention.notice)
    run.embedding_rows_added = model_mod.fit_embeddings(run.model, tokenizer)
    keep_4bit_trainable_layout(run.model)
    run.kernels, unavailable = kernels.apply(spec.kernels, run.model)
    if unavailable:
        notice(unavailable)
    return run


def make_trainer(spec: RunSpec, args: SFTConfig, model: Any, tokenizer: Any, prepared: DatasetDict,
                 eval_questions: Sequence[str] = ()) -> Any:
    """medsft's SFTTrainer (medsft/train/trainer.py) with LoRA, medsft's progress view, metrics file, identity
    check and, when asked, generation metrics; TRL's tqdm and printer callbacks removed."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as TqdmCallback

    from medsft.model import load as model_mod
    from medsft.train.format_metrics import GenerationEvalCallback
    from medsft.train.progress import IdentityCallback, MetricsFileCallback, ProgressCallback
    from medsft.train.trainer import trainer_class
    from medsft.upstream import expose_lm_head_bias

    recipe = spec.recipe
    eval_ds = prepared["validation"] if args.eval_strategy != "no" and len(prepared["validation"]) else None
    trainer: Any  # medsft's SFTTrainer (train/trainer.py), with the rows_seen it records
    try:
        trainer = trainer_class()(model=model, args=args, train_dataset=prepared["train"], eval_dataset=eval_ds,
                                  processing_class=tokenizer, peft_config=lora_config(
                                      recipe, model_mod.trainable_tokens(model, tokenizer, recipe.model)))
    except ValueError as err:
        text = " ".join(str(err).split())
        if "Target modules" in text or "target_modules" in text:
            raise MedsftError(f"lora.target_modules {recipe.lora.target_modules!r} match no module of "
                              f"{recipe.model.name!r}", "use names like q_proj, v_proj or 'all-linear'",
                              recipe.source_file) from None
        raise
    expose_lm_head_bias(trainer.model)  # TRL's fused LM head on a PEFT trainable-tokens output layer
    trainer.rows_seen = []
    trainer.remove_callback(TqdmCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressCallback())
    trainer.add_callback(MetricsFileCallback(recipe.output.dir))
    trainer.add_callback(IdentityCallback(spec.identity()))
    if eval_questions and eval_ds is not None:
        if spec.launch.sharded_params:
            notice("evaluation.generations is skipped when parameters are sharded (ZeRO-3, FSDP)")
        else:
            trainer.add_callback(GenerationEvalCallback(trainer, list(eval_questions), tokenizer,
                                                        recipe.evaluation.max_new_tokens, recipe.data))
    return trainer


def build(spec: RunSpec, *, stop_after: str = "trainer", args: SFTConfig | None = None,
          report: Callable[[str], None] | None = None, after_data: Callable[[Assembly], None] | None = None) -> Assembly:
    """Every stage up to and including `stop_after` (one of STAGES), in order. `args`: the SFTConfig when the
    caller made it already (`medsft train` does, before its preflight gate: it sets up the distributed
    state); otherwise it is made first, as there, when the trainer stage runs. `after_data(assembly)` runs
    between the data and the model (`medsft train` reports the data and may refuse it there, before any
    model loads)."""
    if stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, not {stop_after!r}")
    last = STAGES.index(stop_after)
    run = Assembly(spec, args=args if args is not None or last < STAGES.index("trainer") else spec.sft_config())
    run.tokenizer = load_tokenizer(spec)
    if last >= STAGES.index("data"):
        prepare_data(spec, run.tokenizer, into=run, report=report)
        if after_data is not None:
            after_data(run)
    if last >= STAGES.index("model"):
        prepare_model(spec, run.tokenizer, into=run)
    if last >= STAGES.index("trainer"):
        assert run.data is not None
        questions = run.data.questions[:spec.recipe.evaluation.generations]
        run.trainer = make_trainer(spec, run.args, run.model, run.tokenizer, run.data.prepared, questions)
    return run
