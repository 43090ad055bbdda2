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
    RootModel,
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




class TrainingSection(RootModel[dict[str, Any]]):
    """The validated `training:` section, read through typed properties: the values medsft itself decides with,
    each default written here once. `as_dict()` is every key as set (medsft's defaults applied): SFTConfig's
    arguments. It serializes as the plain mapping the recipe file holds."""

    model_config = ConfigDict(frozen=True)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.root)

    def said(self, key: str) -> Any:
        """What the section sets for `key` (None: not set)."""
        return self.root.get(key)

    @property
    def max_length(self) -> int | None:
        """Tokens per row (None: no limit)."""
        value = self.root.get("max_length", TRAINING_DEFAULTS["max_length"])
        return None if value is None else int(value)

    @property
    def completion_only_loss(self) -> bool:
        return self.root.get("completion_only_loss", True) is not False

    @property
    def padding_free(self) -> bool:
        return bool(self.root.get("padding_free"))

    @property
    def packing(self) -> bool:
        return bool(self.root.get("packing"))

    @property
    def checkpointing(self) -> bool | None:
        """Activation checkpointing under either name (None: not said)."""
        value = self.root.get("activation_checkpointing", self.root.get("gradient_checkpointing"))
        return None if value is None else bool(value)

    @property
    def activation_offloading(self) -> bool:
        return bool(self.root.get("activation_offloading"))

    @property
    def micro_batch(self) -> int | str:
        """per_device_train_batch_size: rows per device and step, or `auto`."""
        value = self.root.get("per_device_train_batch_size", 8)
        return value if value == "auto" else int(value)

    @property
    def grad_accum(self) -> int | str | None:
        """gradient_accumulation_steps, `auto`, or None (not said)."""
        value = self.root.get("gradient_accumulation_steps")
        return value if value is None or value == "auto" else int(value)

    @property
    def batch_is_auto(self) -> bool:
        return "auto" in (self.micro_batch, self.grad_accum)

    @property
    def global_batch_size(self) -> int | None:
        value = self.root.get("global_batch_size")
        return None if value is None else int(value)

    @property
    def eval_batch(self) -> int:
        return int(self.root.get("per_device_eval_batch_size", 8))

    @property
    def dataset_num_proc(self) -> int | None:
        value = self.root.get("dataset_num_proc")
        return None if value is None else int(value)

    @property
    def evaluates(self) -> bool:
        return self.root.get("eval_strategy") != "no"

    @property
    def precision(self) -> str | None:
        """bf16 or fp16 when the section turns one on, "no" when it turns them off, None when it is silent."""
        bf16, fp16 = self.root.get("bf16"), self.root.get("fp16")
        if bf16 is None and fp16 is None:
            return None
        return "bf16" if bf16 else "fp16" if fp16 else "no"

    @property
    def report_to(self) -> list[str]:
        """The reporting integrations named (none and all left out)."""
        wanted = self.root.get("report_to") or []
        return [w for w in ([wanted] if isinstance(wanted, str) else list(wanted)) if w not in ("none", "all")]

    @property
    def push_to_hub(self) -> bool:
        return bool(self.root.get("push_to_hub"))

    @property
    def hub_model_id(self) -> str | None:
        return self.root.get("hub_model_id")
