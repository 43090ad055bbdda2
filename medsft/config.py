"""Recipes: YAML files with sections model, quantization, lora, data, training, output.

Why this module exists: a recipe is the only thing a user writes, so it is validated completely, and
before torch is imported, with one-line errors that name the file, the key, and the fix. `training:`
accepts any `trl.SFTConfig` field (checked against the installed TRL's own fields). The notebook's
flat `config.yaml` is read too, mapped onto the notebook's settings. `--set section.key=value`
overrides go through the same checks.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsft.errors import MedsftError, did_you_mean
from medsft.kernels import KERNEL_CHOICES
from medsft.sft_fields import check_value, sft_config_fields

DEFAULT_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"
NOTEBOOK_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
DTYPES = ("bfloat16", "float16", "float32")
ATTN_IMPLS = ("auto", "flash_attention_2", "sdpa", "eager")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
FILE_SUFFIXES = {*DATA_SUFFIXES, ".csv", ".tsv", ".txt", ".arrow", ".yaml", ".yml", ".gz", ".zip"}


@dataclass
class ModelSection:
    name: str = "builtin:tiny-qwen2"  # hub id, local directory, or builtin:tiny-qwen2
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str = "auto"  # auto = flash_attention_2 when usable, else sdpa
    dtype: str = "bfloat16"
    device_map: Any = None  # None = chosen from the launch (placement.py); set only to force one
    kernels: str = "auto"  # auto | liger | hub | off (medsft/kernels.py); off with a notice where unusable


@dataclass
class QuantizationSection:
    bits: int | None = 4  # 4 (NF4 QLoRA), 8, or null for plain LoRA
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str | None = None  # null = model.dtype


@dataclass
class LoraSection:
    rank: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class DataSection:
    source: str = DEFAULT_DATASET  # hub id, local .json/.jsonl/.parquet, or builtin:tiny-medical
    config: str | None = "en"  # hub dataset config name
    split: str = "train"
    revision: str | None = None
    question_column: str = "Question"
    reasoning_column: str = "Complex_CoT"
    response_column: str = "Response"
    system_prompt: str | None = None
    max_bad_fraction: float = 0.05  # stop if more rows than this are malformed
    max_rows: int | None = None  # use only the first N rows (debugging)
    split_seed: int = 816  # the notebook's seed
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class EvaluationSection:
    generations: int = 0  # at each eval step, generate for this many validation rows (format metrics); 0 = off
    max_new_tokens: int = 256


@dataclass
class OutputSection:
    dir: str = "runs/medsft"  # checkpoints, metrics; the final adapter goes to <dir>/adapter
    adapter_dir: str | None = None  # override where the final adapter is written


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    training: dict = field(default_factory=dict)  # SFTConfig fields, validated
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    output: OutputSection = field(default_factory=OutputSection)
    source_file: str = ""  # where it was read from (for messages)

    @property
    def adapter_dir(self) -> Path:
        return Path(self.output.adapter_dir) if self.output.adapter_dir else Path(self.output.dir) / "adapter"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("source_file")
        return out


SECTIONS = {
    "model": ModelSection,
    "quantization": QuantizationSection,
    "lora": LoraSection,
    "data": DataSection,
    "evaluation": EvaluationSection,
    "output": OutputSection,
}
# Defaults medsft applies on top of SFTConfig's own, unless the recipe sets them.
TRAINING_DEFAULTS = {
    "loss_type": "dft",
    "completion_only_loss": True,
    "padding_free": True,
    "gradient_checkpointing": True,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "save_strategy": "steps",
    "save_steps": 100,
    "logging_steps": 10,
    "report_to": "none",
    "max_length": 2048,
}
# training keys medsft owns: the recipe says them elsewhere.
TRAINING_OWNED = {
    "output_dir": "output.dir",
    "model_init_kwargs": "the model and quantization sections",
    "use_cpu": "nothing: it is set from the launch (no CUDA → CPU)",
    "ddp_find_unused_parameters": "nothing: it is set from the launch",
    "dataset_text_field": "data.*_column",
    "use_liger_kernel": "model.kernels (liger, or auto)",
}
TRAINING_CHOICES = {
    "loss_type": ("nll", "dft"),
    "eval_strategy": ("no", "steps", "epoch"),
    "save_strategy": ("no", "steps", "epoch", "best"),
    "logging_strategy": ("no", "steps", "epoch"),
    "truncation_mode": ("keep_start", "keep_end"),
    "packing_strategy": ("bfd", "bfd_split", "wrapped"),
}
TRAINING_POSITIVE = {
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "num_train_epochs", "max_length", "eval_steps", "save_steps", "logging_steps",
}

# The notebook's flat config.yaml: key -> (section.key, how to read the value as the notebook did)
NOTEBOOK_KEYS = {
    "base_model_name": ("model.name", str),
    "adapter_dir_prefix": ("output.adapter_dir", str),
    "lora_rank": ("lora.rank", None),
    "lora_alpha": ("lora.alpha", None),
    "batch_size": ("training.per_device_train_batch_size", int),
    "epochs_to_train": ("training.num_train_epochs", int),
    "max_output_length": ("training.max_length", int),
}
NOTEBOOK_SETTINGS = {
    "lora": {"dropout": 0.05, "bias": "none", "target_modules": NOTEBOOK_TARGETS},
    "training": {
        "learning_rate": 2e-5, "gradient_accumulation_steps": 4, "logging_steps": 50,
        "save_strategy": "steps", "eval_strategy": "steps", "eval_steps": 100, "save_steps": 100,
        "bf16": True, "gradient_checkpointing": True, "loss_type": "dft", "completion_only_loss": True,
    },
    "output": {"dir": "./results"},
}


# ---------------------------------------------------------------- loading


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, convert (notebook format), override and validate a recipe. Raises MedsftError."""
    where = str(path)
    raw = read_yaml(path)
    try:
        if is_notebook_config(raw):
            raw = from_notebook(raw)
        raw = copy.deepcopy(raw)
        for item in overrides or []:
            apply_override(raw, item)
        recipe = build(raw)
        if not (raw.get("output") or {}).get("dir"):
            recipe.output.dir = f"runs/{Path(path).stem}"  # one run directory per recipe by default
        validate(recipe)
    except MedsftError as err:
        raise err.at(where)
    recipe.source_file = where
    return recipe


def read_yaml(path) -> dict:
    p = Path(path)
    if not p.exists():
        raise MedsftError("recipe file not found", "check the path (recipes live in recipes/)", str(path))
    if p.is_dir():
        raise MedsftError("is a directory, not a recipe file", "pass a .yaml file", str(path))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedsftError("is not UTF-8 text", "save the recipe as UTF-8 YAML", str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise MedsftError(f"malformed YAML{at}: {problem}", "fix the YAML syntax", str(path)) from None
    if raw is None:
        raise MedsftError("recipe is empty", "copy recipes/tiny-cpu.yaml as a start", str(path))
    if not isinstance(raw, dict):
        raise MedsftError(
            f"recipe must be a mapping of sections, got {type(raw).__name__}",
            "write `model:`, `data:`, `training:` … sections", str(path))
    return raw


def is_notebook_config(raw: dict) -> bool:
    return isinstance(raw, dict) and "base_model_name" in raw and not (set(raw) & set(SECTIONS) - {"output"})


def from_notebook(raw: dict) -> dict:
    """The notebook's flat config.yaml as a sectioned recipe with the notebook's other settings."""
    out = copy.deepcopy(NOTEBOOK_SETTINGS)
    for key, value in raw.items():
        if key not in NOTEBOOK_KEYS:
            raise MedsftError(f"unknown key '{key}' in a notebook config.yaml", did_you_mean(key, NOTEBOOK_KEYS))
        target, cast = NOTEBOOK_KEYS[key]
        if cast is not None:
            try:
                value = cast(value)  # the notebook did int(config["batch_size"]) etc.
            except (TypeError, ValueError):
                raise MedsftError(f"{key} must be {cast.__name__} (got {value!r})", f"write e.g. `{key}: 4`") from None
        section, name = target.split(".")
        out.setdefault(section, {})[name] = value
    for required in ("base_model_name", "adapter_dir_prefix"):
        if required not in raw:
            raise MedsftError(f"notebook config.yaml needs '{required}'", f"add `{required}: ...`")
    # the notebook saved the adapter to join(adapter_dir_prefix, base_model_name)
    out["output"]["adapter_dir"] = os.path.join(str(raw["adapter_dir_prefix"]), str(raw["base_model_name"]))
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise MedsftError(f"--set {item!r} is not key=value", "write e.g. --set training.learning_rate=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise MedsftError(f"--set key {key!r} must be section.key", "write e.g. --set lora.rank=32")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_override(raw: dict, item: str) -> None:
    (section, key), value = parse_override(item)
    if section not in SECTIONS and section != "training":
        raise MedsftError(f"unknown section '{section}' in --set {item}", did_you_mean(section, [*SECTIONS, "training"]))
    current = raw.get(section)
    if current is None:
        raw[section] = current = {}
    if not isinstance(current, dict):
        raise MedsftError(f"section '{section}' must be a mapping", f"write `{section}:` followed by indented keys")
    current[key] = value


# ---------------------------------------------------------------- building and checking


def build(raw: dict) -> Recipe:
    recipe = Recipe()
    for section, value in raw.items():
        if section == "training":
            recipe.training = build_training(value)
            continue
        if section not in SECTIONS:
            raise MedsftError(f"unknown key '{section}'", did_you_mean(section, [*SECTIONS, "training"]))
        if value is None:
            continue
        if not isinstance(value, dict):
            raise MedsftError(f"section '{section}' must be a mapping (got {type(value).__name__})",
                              f"write `{section}:` followed by indented keys")
        setattr(recipe, section, build_section(section, value))
    for key, value in TRAINING_DEFAULTS.items():
        recipe.training.setdefault(key, value)
    return recipe


def build_section(section: str, values: dict):
    cls = SECTIONS[section]
    obj = cls()
    fields = {f: getattr(obj, f) for f in obj.__dataclass_fields__}
    for key, value in values.items():
        if key not in fields:
            raise MedsftError(f"unknown key '{section}.{key}'", did_you_mean(key, fields))
        setattr(obj, key, check_field(section, key, value, obj.__dataclass_fields__[key].type))
    return obj


def check_field(section: str, key: str, value, annotation: str):
    """Type-check one section field from its dataclass annotation (a string under `annotations`)."""
    name = f"{section}.{key}"
    if annotation in ("Any",):
        return value
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise MedsftError(f"{name} must not be empty", f"give {name} a value or remove the key")
    base = annotation.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise MedsftError(f"{name} must be true or false (got {value!r})", f"write `{key}: true` or `{key}: false`")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise MedsftError(f"{name} must be an integer (got {value!r})", f"write e.g. `{key}: 16`")
    if base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise MedsftError(f"{name} must be a number (got {value!r})", f"write e.g. `{key}: 0.1`")
    if base == "str":
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("revision", "config"):
            return str(value)
        raise MedsftError(f"{name} must be a non-empty string (got {value!r})", f"write `{key}: \"...\"`")
    return value


def build_training(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MedsftError(f"section 'training' must be a mapping (got {type(value).__name__})",
                          "write `training:` followed by SFTConfig fields")
    fields = sft_config_fields()
    out = {}
    for key, v in value.items():
        if key in TRAINING_OWNED:
            raise MedsftError(f"training.{key} is set by medsft", f"use {TRAINING_OWNED[key]} instead")
        if key not in fields:
            raise MedsftError(f"unknown key 'training.{key}' (not a trl.SFTConfig field)", did_you_mean(key, fields))
        if key in TRAINING_CHOICES and v is False and "no" in TRAINING_CHOICES[key]:
            v = "no"  # YAML 1.1 reads a bare `no` as false
        try:
            v = check_value(v, fields[key])
        except ValueError as err:
            raise MedsftError(f"training.{key} {err} (got {v!r})", "see trl.SFTConfig's documentation") from None
        if key in TRAINING_CHOICES and v not in TRAINING_CHOICES[key]:
            raise MedsftError(f"training.{key} must be one of {', '.join(TRAINING_CHOICES[key])} (got {v!r})",
                              did_you_mean(str(v), TRAINING_CHOICES[key]))
        if key in TRAINING_POSITIVE and v is not None and v <= 0:
            raise MedsftError(f"training.{key} must be positive (got {v!r})", f"set training.{key} above 0")
        out[key] = v
    return out


def validate(recipe: Recipe) -> None:
    """Ranges, choices and cross-field rules that need no torch."""
    m, q, lo, d, t = recipe.model, recipe.quantization, recipe.lora, recipe.data, recipe.training
    if m.attn_implementation not in ATTN_IMPLS:
        raise MedsftError(f"model.attn_implementation must be one of {', '.join(ATTN_IMPLS)} "
                          f"(got {m.attn_implementation!r})", did_you_mean(m.attn_implementation, ATTN_IMPLS))
    if m.kernels not in KERNEL_CHOICES:
        raise MedsftError(f"model.kernels must be one of {', '.join(KERNEL_CHOICES)} (got {m.kernels!r})",
                          did_you_mean(str(m.kernels), KERNEL_CHOICES))
    if m.dtype not in DTYPES:
        raise MedsftError(f"model.dtype must be one of {', '.join(DTYPES)} (got {m.dtype!r})",
                          did_you_mean(m.dtype, DTYPES))
    if looks_local(m.name) and not Path(m.name).expanduser().is_dir():
        raise MedsftError(f"model.name {m.name!r} looks like a local path but no such directory exists",
                          "point it at a directory with config.json, or use a hub id like Qwen/Qwen3-0.6B")
    if q.bits not in (4, 8, None):
        raise MedsftError(f"quantization.bits must be 4, 8 or null (got {q.bits!r})",
                          "use 4 for QLoRA, 8 for 8-bit, null for plain LoRA")
    if q.quant_type not in ("nf4", "fp4"):
        raise MedsftError(f"quantization.quant_type must be nf4 or fp4 (got {q.quant_type!r})", "use nf4")
    if q.compute_dtype is not None and q.compute_dtype not in DTYPES:
        raise MedsftError(f"quantization.compute_dtype must be one of {', '.join(DTYPES)} (got {q.compute_dtype!r})",
                          did_you_mean(q.compute_dtype, DTYPES))
    if lo.rank <= 0:
        raise MedsftError(f"lora.rank must be a positive integer (got {lo.rank})", "use e.g. 16")
    if lo.alpha <= 0:
        raise MedsftError(f"lora.alpha must be positive (got {lo.alpha})", "use e.g. 2 × lora.rank")
    if not 0 <= lo.dropout < 1:
        raise MedsftError(f"lora.dropout must be in [0, 1) (got {lo.dropout})", "use e.g. 0.05")
    if lo.bias not in ("none", "all", "lora_only"):
        raise MedsftError(f"lora.bias must be none, all or lora_only (got {lo.bias!r})", "use none")
    tm = lo.target_modules
    if not (tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(x, str) and x for x in tm))):
        raise MedsftError(f"lora.target_modules must be a non-empty list of module names or 'all-linear' (got {tm!r})",
                          "write e.g. [q_proj, k_proj, v_proj, o_proj]")
    ev = recipe.evaluation
    if ev.generations < 0 or ev.max_new_tokens <= 0:
        raise MedsftError(f"evaluation.generations must be ≥ 0 and evaluation.max_new_tokens > 0 "
                          f"(got {ev.generations}, {ev.max_new_tokens})", "use e.g. generations: 8, max_new_tokens: 256")
    if not 0 <= d.max_bad_fraction <= 1:
        raise MedsftError(f"data.max_bad_fraction must be in [0, 1] (got {d.max_bad_fraction})", "use e.g. 0.05")
    for name in ("val_fraction", "test_fraction"):
        v = getattr(d, name)
        if not 0 <= v < 1:
            raise MedsftError(f"data.{name} must be in [0, 1) (got {v})", "use e.g. 0.1")
    if d.val_fraction + d.test_fraction >= 1:
        raise MedsftError("data.val_fraction + data.test_fraction leave no training rows",
                          "keep their sum below 1 (the notebook uses 0.1 + 0.1)")
    if d.max_rows is not None and d.max_rows <= 0:
        raise MedsftError(f"data.max_rows must be positive (got {d.max_rows})", "use null for all rows")
    for col in ("question_column", "reasoning_column", "response_column"):
        if not getattr(d, col):
            raise MedsftError(f"data.{col} must name a column", "use the dataset's column name")
    if looks_local(d.source) or Path(d.source).suffix.lower() in FILE_SUFFIXES or Path(d.source).is_file():
        p = Path(d.source).expanduser()
        if not d.source.endswith(DATA_SUFFIXES):
            raise MedsftError(f"data.source {d.source!r} has an unsupported file type",
                              "use a .json, .jsonl or .parquet file, or a hub dataset id")
        if not p.is_file():
            raise MedsftError(f"data.source file {d.source!r} not found",
                              "check the path (relative paths are read from the current directory)")
    if t.get("eval_strategy") != "no" and d.val_fraction == 0:
        raise MedsftError("training.eval_strategy needs a validation split but data.val_fraction is 0",
                          "set data.val_fraction above 0 or training.eval_strategy: no")
    if t.get("packing") and t.get("max_length") is None:
        raise MedsftError("training.packing needs training.max_length", "set training.max_length, e.g. 2048")
    if t.get("bf16") and t.get("fp16"):
        raise MedsftError("training.bf16 and training.fp16 are both on", "choose one")
    for key in ("dir", "adapter_dir"):
        value = getattr(recipe.output, key)
        if value is not None:
            check_writable_dir(Path(value), f"output.{key}")


def check_writable_dir(out: Path, name: str) -> None:
    """A directory we can create or write: not a file, not inside a file, not read-only."""
    if out.exists() and not out.is_dir():
        raise MedsftError(f"{name} {str(out)!r} is a file", f"choose a directory path for {name}")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MedsftError(f"{name} {str(out)!r} is inside {str(ancestor)!r}, which is a file",
                          f"choose a directory path for {name}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MedsftError(f"{name} {str(out)!r} is not writable ({str(ancestor)!r} is read-only)",
                          f"choose a writable location for {name}")


def looks_local(name: str) -> bool:
    return isinstance(name, str) and (name.startswith(("/", "./", "../", "~")) or os.path.isabs(name))
