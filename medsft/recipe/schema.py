"""Recipes: typed sections (pydantic v2), validated completely before torch is imported.

Why: a recipe is the only thing a user writes. Every value is checked once, here — types, ranges,
finite numbers, choices, paths with `~` expanded — and a mistake is one line naming the file, the key,
what is wrong and the fix. `training:` takes any field of the installed `trl.SFTConfig` with TRL's own
types and choices (medsft/recipe/sft_fields.py); checks SFTConfig does itself run when the run is resolved
(medsft/train/runspec.py), still before any model loads. The data section is medsft/recipe/data_section.py; reading
files and `--set` is medsft/recipe/files.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError

from medsft.errors import MedsftError, did_you_mean
from medsft.paths import looks_local
from medsft.recipe.checks import Float, Fraction, Int, Label, PathText, PositiveInt, Section, rule
from medsft.recipe.data_section import DataSection, SourceSection, check_data_files
from medsft.recipe.sft_fields import sft_config_fields
from medsft.recipe.training_section import TRAINING_DEFAULTS, TRAINING_OWNED, TrainingSection, training_model

DType = Literal["bfloat16", "float16", "float32"]


def device_map_ok(value: object) -> bool:
    return (value in ("auto", "balanced", "balanced_low_0", "sequential", "cpu") or isinstance(value, int)
            or (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, str)) for k, v in value.items())))


def targets_ok(value: object) -> bool:
    return value == "all-linear" or (isinstance(value, list) and bool(value)
                                     and all(isinstance(x, str) and x.strip() for x in value))


class ModelSection(Section):
    name: PathText = Field("builtin:tiny-qwen2", description="the base model: a hub id, a local directory, or "
                           "builtin:tiny-qwen2 (the embedded tiny model)")
    revision: Label | None = Field(None, description="hub revision of model.name (branch, tag or commit); null = main")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code "
                                    "(transformers' trust_remote_code)")
    attn_implementation: Literal["auto", "flash_attention_2", "flash_attention_4", "varlen", "sdpa", "eager",
                                 "flex_attention"] = Field("auto", description="the attention kernel; auto: "
                                                           "flash_attention_2 where it runs, else PyTorch's varlen "
                                                           "FlashAttention-2 kernel, else sdpa")
    # medsft/model/attention.py
    dtype: DType = Field("bfloat16", description="dtype the model is loaded in; also the 4-bit compute dtype unless "
                         "quantization.compute_dtype is set")
    device_map: Annotated[Any, rule(device_map_ok, "must be auto, cpu, a GPU index or a {module: device} mapping "
                                    "— remove it: medsft places the model from the launch")] = \
        Field(None, description="force a device map; leave it out: medsft places the model from the launch")
    # medsft/model/kernels.py; YAML 1.1 reads a bare `off` as false
    kernels: Annotated[Literal["auto", "liger", "hub", "off"], BeforeValidator(lambda v: "off" if v is False else v)] = \
        Field("auto", description="fused kernels: auto = Liger on a GPU when liger-kernel is installed, liger, "
              "hub = transformers' Hub kernels, off = none")
    # chatml | llama3 | a .jinja file: the chat template to train with (medsft/model/chat_templates.py); null = the
    # tokenizer's own. A base model's tokenizer has none.
    chat_template: PathText | None = Field(None, description="chatml, llama3 or the path of a .jinja file, for a base "
                                           "model without a chat template; null = the tokenizer's own")


class QuantizationSection(Section):
    bits: Annotated[Int | None, rule(lambda v: v in (4, 8), "must be 4, 8 or null — use 4 for QLoRA, 8 for "
                                                          "8-bit, null for plain LoRA")] = \
        Field(4, description="bitsandbytes quantization of the base model: 4 (QLoRA), 8, or null (plain LoRA)")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="also quantize the quantization constants (double quantization)")
    compute_dtype: DType | None = Field(None, description="dtype the 4-bit layers compute in; null = model.dtype")


class LoraSection(Section):
    rank: PositiveInt = Field(16, description="LoRA rank r")
    alpha: Annotated[Float, rule(lambda v: v > 0, "must be positive — use e.g. 2 × lora.rank")] = \
        Field(32, description="LoRA scaling alpha (the update is scaled by alpha / rank)")
    dropout: Fraction = Field(0.05, description="dropout on the LoRA input")
    target_modules: Annotated[Any, rule(targets_ok, "must be a non-empty list of module names or 'all-linear' "
                                        "— write e.g. [q_proj, k_proj, v_proj, o_proj]")] = \
        Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
              description="the modules that get adapters: a list of names, or all-linear")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train (PEFT's bias)")


class EvaluationSection(Section):
    generations: Annotated[Int, rule(lambda v: v >= 0, "must be ≥ 0")] = \
        Field(0, description="validation rows generated for at each evaluation during training, logging format "
              "compliance; 0 = off (skipped under ZeRO-3 and FSDP)")
    max_new_tokens: PositiveInt = Field(256, description="the most tokens generated for each of those rows")


class OutputSection(Section):
    dir: PathText = Field("runs/medsft", description="the run directory: checkpoints, metrics, the final adapter in "
                          "<dir>/adapter; a recipe file that leaves it out gets runs/<its file name without the "
                          "extension>")
    adapter_dir: PathText | None = Field(None, description="where the final adapter goes instead of <dir>/adapter")


SECTIONS: dict[str, type[Section]] = {"model": ModelSection, "quantization": QuantizationSection, "lora": LoraSection,
                                      "data": DataSection, "evaluation": EvaluationSection, "output": OutputSection}

class Recipe(Section):
    model: ModelSection = ModelSection()
    quantization: QuantizationSection = QuantizationSection()
    lora: LoraSection = LoraSection()
    data: DataSection = DataSection()
    training: TrainingSection = Field(default_factory=lambda: TrainingSection({}))  # validated by training_model()
    evaluation: EvaluationSection = EvaluationSection()
    output: OutputSection = OutputSection()
    source_file: str = Field(default="", exclude=True)  # where it was read from (for messages)

    @property
    def adapter_dir(self) -> Path:
        return Path(self.output.adapter_dir) if self.output.adapter_dir else Path(self.output.dir) / "adapter"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def build(raw: dict, source_file: str = "", *, data_files: bool = True) -> Recipe:
    """A Recipe from a sectioned mapping (YAML already read and overridden). Raises MedsftError.
    `data_files=False`: an adapter's recipe, whose training data need not be on this machine (only the
    held-out evaluation reads it, and checks it there)."""
    for section in raw:
        if section not in SECTIONS and section != "training":
            raise MedsftError(f"unknown key '{section}'", did_you_mean(section, [*SECTIONS, "training"]), source_file)
    sections = {k: v for k, v in raw.items() if v is not None}
    for section, value in sections.items():
        if not isinstance(value, dict):
            raise MedsftError(f"section '{section}' must be a mapping (got {type(value).__name__})",
                              f"write `{section}:` followed by indented keys", source_file)
    training = dict(sections.pop("training", {}))
    for key in training:
        if key in TRAINING_OWNED:
            raise MedsftError(f"training.{key} is set by medsft", f"use {TRAINING_OWNED[key]} instead", source_file)
    try:
        training = training_model()(**training).model_dump(exclude_unset=True)
        recipe = Recipe(**sections, training={**TRAINING_DEFAULTS, **training}, source_file=source_file)
    except ValidationError as err:
        raise one_line(err, training_keys="training" in raw).at(source_file) from None
    check_cross_fields(recipe, data_files=data_files)
    return recipe


def one_line(err: ValidationError, training_keys: bool = False) -> MedsftError:
    """The first problem pydantic found, as medsft's one line: what, where, and the fix."""
    e = err.errors()[0]
    loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
    section = loc[0] if len(loc) > 1 or err.title != "training" else "training"
    name = ".".join(loc) if err.title != "training" else f"training.{'.'.join(loc)}"
    key, got, kind = loc[-1] if loc else section, e.get("input"), e["type"]
    text = e["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        if err.title == "training":
            return MedsftError(f"unknown key '{name}' (not a trl.SFTConfig field)", did_you_mean(key, sft_config_fields()))
        known = SECTIONS[section].model_fields if section in SECTIONS else SECTIONS
        if loc[:2] == ["data", "sources"]:
            known = SourceSection.model_fields
        return MedsftError(f"unknown key '{name}'", did_you_mean(key, known))
    if kind == "missing":
        return MedsftError(f"{name} is required", f"add `{key}: ...`")
    if kind == "model_type" and loc[:2] == ["data", "sources"]:
        return MedsftError(f"each entry of data.sources must be a mapping (got {got!r})",
                           "write `- source: <hub id or file>` with optional config, weight, max_rows")
    if kind == "model_type":
        return MedsftError(f"section '{name}' must be a mapping (got {type(got).__name__})",
                           f"write `{name}:` followed by indented keys")
    if err.title == "training" and key in sft_config_fields() and kind in ("int_parsing", "int_type", "int_from_float", "float_parsing",
                                            "float_type", "bool_parsing", "bool_type", "string_type", "dict_type",
                                            "list_type"):
        spec = sft_config_fields()[key]
        return MedsftError(f"{name} must be {spec.describe()} (got {got!r})", "see trl.SFTConfig's documentation")
    what, _, fix = text.partition(" — ")
    messages = {
        "int_parsing": ("must be an integer", f"write e.g. `{key}: 16`"), "int_type": ("must be an integer", f"write e.g. `{key}: 16`"),
        "int_from_float": ("must be an integer", f"write e.g. `{key}: 16`"),
        "float_parsing": ("must be a number", f"write e.g. `{key}: 0.1`"), "float_type": ("must be a number", f"write e.g. `{key}: 0.1`"),
        "finite_number": ("must be a finite number", f"write e.g. `{key}: 0.1`"),
        "bool_parsing": ("must be true or false", f"write `{key}: true` or `{key}: false`"),
        "bool_type": ("must be true or false", f"write `{key}: true` or `{key}: false`"),
        "string_type": ("must be a string", f"write `{key}: \"...\"`"),
        "list_type": ("must be a list", f"write `{key}:` followed by `- ...` items"),
        "dict_type": ("must be a mapping", f"write `{key}:` followed by indented `name: value` pairs"),
    }
    if kind in messages:
        what, fix = messages[kind]
    elif kind == "literal_error":
        choices = [c.strip(" '") for c in e["ctx"]["expected"].replace(" or ", ", ").split(",")]
        what, fix = f"must be one of {', '.join(choices)}", did_you_mean(str(got), choices)
    elif text.startswith("must be one of"):
        fix = did_you_mean(str(got), text.removeprefix("must be one of ").split(", "))
    if isinstance(got, float) and math.isnan(got):
        got = float("nan")
    return MedsftError(f"{name} {what} (got {got!r})", fix or f"fix {name}")


def check_cross_fields(recipe: Recipe, *, data_files: bool = True) -> None:
    """Rules that span keys or touch the filesystem (still no torch)."""
    m, d, t, where = recipe.model, recipe.data, recipe.training, recipe.source_file
    if looks_local(m.name) and not Path(m.name).is_dir():
        raise MedsftError(f"model.name {m.name!r} looks like a local path but no such directory exists",
                          "point it at a directory with config.json, or use a hub id like Qwen/Qwen3-0.6B", where)
    if d.val_fraction + d.test_fraction >= 1:
        raise MedsftError("data.val_fraction + data.test_fraction leave no training rows",
                          "keep their sum below 1 (the notebook uses 0.1 + 0.1)", where)
    if m.chat_template is not None:
        from medsft.recipe.chat_template_value import check_value

        check_value(m.chat_template, where)
    if data_files:
        check_data_files(d, where)
    if t.evaluates and d.val_fraction == 0:
        raise MedsftError("training.eval_strategy needs a validation split but data.val_fraction is 0",
                          "set data.val_fraction above 0 or training.eval_strategy: no", where)
    if t.packing and t.max_length is None:
        raise MedsftError("training.packing needs training.max_length", "set training.max_length, e.g. 2048", where)
    if t.said("bf16") and t.said("fp16"):
        raise MedsftError("training.bf16 and training.fp16 are both on", "choose one", where)
    gc, ac = t.said("gradient_checkpointing"), t.said("activation_checkpointing")
    if gc is not None and ac is not None and gc != ac:
        raise MedsftError(f"training.gradient_checkpointing ({gc}) and training.activation_checkpointing ({ac}) "
                          "disagree", "set one of them (activation_checkpointing is transformers 5's name)", where)
