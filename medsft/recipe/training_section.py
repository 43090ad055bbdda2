"""The `training:` section: every field of the installed `trl.SFTConfig`, as a pydantic model.

Why: users write SFTConfig fields directly (TRL's documentation is theirs), so the section is built from
the installed TRL's own field list, types and choices (medsft/recipe/sft_fields.py) instead of a copy that
drifts. medsft adds its defaults, the keys it owns, and a few range rules SFTConfig leaves to later.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
)

from medsft.recipe.checks import Float, Int, rule
from medsft.recipe.sft_fields import FieldSpec, sft_config_fields

# Defaults medsft applies on top of SFTConfig's own, unless the recipe sets them.
TRAINING_DEFAULTS: dict[str, Any] = {
    "loss_type": "dft", "completion_only_loss": True, "padding_free": True, "eval_strategy": "steps",
    "eval_steps": 100, "save_strategy": "steps", "save_steps": 100, "logging_steps": 10, "report_to": "none",
    "max_length": 2048,
}
# training keys medsft owns: the recipe says them elsewhere.
TRAINING_OWNED = {
    "output_dir": "output.dir", "model_init_kwargs": "the model and quantization sections",
    "use_cpu": "nothing: it is set from the launch (no CUDA → CPU)",
    "ddp_find_unused_parameters": "nothing: it is set from the launch", "dataset_text_field": "data.*_column",
    "use_liger_kernel": "model.kernels (liger, or auto)", "resume_from_checkpoint": "medsft train --resume PATH",
    "deepspeed": "an accelerate config (accelerate_configs/zero*.yaml)", "fsdp": "accelerate_configs/fsdp2.yaml",
    "fsdp_config": "accelerate_configs/fsdp2.yaml",
}
# medsft's own range rules for SFTConfig fields that neither TRL nor transformers check early.
POSITIVE = {"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "learning_rate", "num_train_epochs", "max_length", "eval_steps", "save_steps", "logging_steps"}
NON_NEGATIVE = {"dataloader_num_workers", "warmup_steps", "weight_decay", "max_grad_norm", "save_total_limit",
                "dataset_num_proc", "label_smoothing_factor", "eval_delay", "neftune_noise_alpha"}
# SFTConfig integers that may also be `auto`: medsft/memory/micro_batch.py resolves them from the memory model.
AUTO = {"per_device_train_batch_size", "gradient_accumulation_steps"}
# training keys medsft adds (not SFTConfig fields): rows per optimizer step, kept by accumulation.
MEDSFT_KEYS = {"global_batch_size"}
TYPES: dict[str, Any] = {"bool": bool, "int": Int, "float": Float, "str": str, "dict": dict, "list": list}


def field_type(name: str, field_spec: FieldSpec) -> tuple[Any, None]:
    kinds = [TYPES[k] for k in sorted(field_spec.kinds) if k in TYPES]
    base = Any if "any" in field_spec.kinds or not kinds else kinds[0] if len(kinds) == 1 else \
        Union[tuple(kinds)]  # noqa: UP007 (a union built from a list of types)
    checks: list[Any] = []  # pydantic's validators and serializers, in order
    if field_spec.choices:
        no = "no" in field_spec.choices  # YAML 1.1 reads a bare `no` as false
        checks.append(BeforeValidator(lambda v, no=no: "no" if v is False and no else v))
        choices = field_spec.choices  # bound here, for this field
        checks.append(rule(lambda v: not isinstance(v, str) or v in choices, f"must be one of {', '.join(choices)}"))
    if name in AUTO:
        checks.append(WrapValidator(auto_or_int))
        checks.append(PlainSerializer(lambda v: v, return_type=Any))
    if name in POSITIVE:
        checks.append(rule(lambda v: not isinstance(v, (int, float)) or v > 0, "must be positive"))
    if name in NON_NEGATIVE:
        checks.append(rule(lambda v: not isinstance(v, (int, float)) or v >= 0, "must be ≥ 0"))
    return (Annotated[((base | None) if field_spec.optional else base, *checks)] if checks
            else (base | None) if field_spec.optional else base), None


def auto_or_int(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if value == "auto":
        return value
    try:
        return handler(value)
    except ValidationError:
        if isinstance(value, str):
            raise ValueError("must be int or auto — write a positive integer, or auto (the memory model chooses)") \
                from None
        raise


GLOBAL_BATCH = Annotated[Int | None, rule(lambda v: v > 0, "must be a positive integer — rows per optimizer step, "
                                          "e.g. 128")]
_TRAINING_MODEL: type[BaseModel] | None = None


def training_model() -> type[BaseModel]:
    global _TRAINING_MODEL
    if _TRAINING_MODEL is None:
        fields: dict[str, Any] = {k: field_type(k, v) for k, v in sft_config_fields().items() if k not in TRAINING_OWNED}
        fields["global_batch_size"] = (GLOBAL_BATCH, None)
        _TRAINING_MODEL = create_model("training", __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
                                       **fields)
    return _TRAINING_MODEL


