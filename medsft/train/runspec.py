"""One resolved run: the recipe, the launch, the placement and the kernels, with every training value
decided once.

Why: SFTConfig, the memory preflight (command and training gate), the tokenized-data cache key and the
manifest must describe the same run: each reading `training:` with its own defaults would drift (a gate that
estimates a ZeRO-3 launch as if it ran on one GPU). They all read a `RunSpec`, built once by `resolve()` and
immutable; a value that depends on several inputs (checkpointing under either name,
the length above which rows are dropped, mixed precision from the recipe or the accelerate config) is
decided here and nowhere else.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from medsft.data.tokenized import Tokenization
from medsft.errors import MedsftError
from medsft.launch.detect import Launch
from medsft.launch.detect import check as check_launch
from medsft.launch.placement import Placement, check_chat_template, check_devices, decide
from medsft.memory.micro_batch import FALLBACK_MICRO_BATCH, BatchRequest
from medsft.memory.micro_batch import decide as decide_batch
from medsft.recipe.schema import Recipe

if TYPE_CHECKING:
    from trl import SFTConfig

    from medsft.memory.micro_batch import BatchChoice, Memory
    from medsft.memory.model import Setup
    from medsft.memory.preflight import Preflight
    from medsft.model.attention import Choice

Number = TypeVar("Number", int, float)  # adopted(): the type of the default

# training fields that do not change what is learned (a resumed run may change them freely)
NOT_TRAJECTORY = {
    "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level",
    "log_level_replica", "log_on_each_node", "save_steps", "save_strategy", "save_total_limit", "save_only_model",
    "save_on_each_node", "eval_steps", "eval_strategy", "eval_delay", "eval_on_start", "per_device_eval_batch_size",
    "eval_accumulation_steps", "prediction_loss_only", "report_to", "run_name", "project", "disable_tqdm",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataset_num_proc", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision", "include_num_input_tokens_seen", "skip_memory_metrics",
    "torch_empty_cache_steps", "activation_checkpointing", "gradient_checkpointing", "activation_checkpointing_kwargs",
    "gradient_checkpointing_kwargs", "bf16", "fp16", "gradient_accumulation_steps", "max_grad_norm",
    "per_device_train_batch_size", "global_batch_size", "max_length", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "ddp_timeout", "ddp_backend", "ddp_bucket_cap_mb", "trackio_space_id",
    "trackio_bucket_id", "trackio_static_space_id",
}


@dataclass(frozen=True)
class RunSpec:
    recipe: Recipe
    launch: Launch
    placement: Placement
    kernels: str = "off"  # what medsft/model/kernels.py chose: liger | hub | off
    checkpointing: bool = True
    drop_longer_than: int | None = 2048  # rows longer than this many tokens are dropped, not truncated
    trl_max_length: int | None = None  # SFTConfig.max_length: None under padding-free (rows already dropped)
    micro_batch: int = 8
    eval_batch: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    precision: str = "no"  # mixed precision: bf16 | fp16 | no
    batch: BatchChoice | None = None  # how micro_batch and grad_accum were decided
    notices: tuple[str, ...] = field(default=())

    @functools.cached_property
    def attention(self) -> Choice:
        """The attention this run uses (medsft.model.attention.Choice), decided once (imports torch). A CUDA launch
        planned without CUDA here (preflight) gets the one chosen for an assumed GPU."""
        from medsft.model.attention import attention_dtype, choose, detect

        m = self.recipe.model
        return choose(m.attn_implementation, detect(self.launch.cuda, attention_dtype(m.dtype, self.precision)))

    def sft_kwargs(self) -> dict:
        """Every SFTConfig argument of this run."""
        t = self.recipe.training.as_dict()
        for key in ("gradient_checkpointing", "activation_checkpointing", "bf16", "fp16", "max_length",
                    "gradient_accumulation_steps", "max_grad_norm", "per_device_train_batch_size",
                    "global_batch_size"):
            t.pop(key, None)
        user_kwargs = t.pop("activation_checkpointing_kwargs", None) or t.pop("gradient_checkpointing_kwargs", None)
        t.pop("gradient_checkpointing_kwargs", None)
        return dict(
            output_dir=self.recipe.output.dir, use_cpu=self.placement.use_cpu,
            ddp_find_unused_parameters=self.placement.ddp_find_unused_parameters,
            activation_checkpointing=self.checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": self.placement.use_reentrant,
                                             **(user_kwargs if isinstance(user_kwargs, dict) else {})},
            use_liger_kernel=self.kernels == "liger", max_length=self.trl_max_length,
            per_device_train_batch_size=self.micro_batch, gradient_accumulation_steps=self.grad_accum,
            max_grad_norm=self.max_grad_norm,
            bf16=self.precision == "bf16", fp16=self.precision == "fp16", **t)

    def sft_config(self) -> SFTConfig:
        """trl.SFTConfig for this run (sets up the distributed state); its own checks become one line."""
        from trl import SFTConfig

        try:
            return SFTConfig(**self.sft_kwargs())
        except (ValueError, TypeError, ImportError) as err:
            raise MedsftError(f"training section rejected by trl.SFTConfig: {' '.join(str(err).split())[:300]}",
                              "fix the training section", self.recipe.source_file) from None

    def tokenization(self) -> Tokenization:
        """What the data stage needs of the training section (medsft/data/tokenized.py)."""
        t = self.recipe.training
        return Tokenization(completion_only_loss=t.completion_only_loss, max_length=t.max_length,
                            drop_longer_than=self.drop_longer_than, num_proc=t.dataset_num_proc)

    def memory_setup(self) -> Setup:
        """The memory estimate's inputs (medsft/memory/model.py), read from this run (launch included)."""
        from medsft.memory.model import Setup
        from medsft.recipe.training_section import TRAINING_DEFAULTS

        recipe, launch = self.recipe, self.launch
        t = recipe.training
        distributed = launch.distributed != "none"
        return Setup(
            bits=recipe.quantization.bits, double_quant=recipe.quantization.double_quant, dtype=recipe.model.dtype,
            rank=recipe.lora.rank, targets=recipe.lora.target_modules, dropout=recipe.lora.dropout,
            micro_batch=self.micro_batch, eval_batch=self.eval_batch,
            max_length=t.max_length or TRAINING_DEFAULTS["max_length"], checkpointing=self.checkpointing,
            attention=self.attention.memory_kind, padding_free=t.padding_free or t.packing,
            world_size=launch.world_size if distributed else 1, shard_params=launch.sharded_params and distributed,
            zero_stage=launch.zero_stage, fsdp=launch.distributed == "fsdp",
            offload_optimizer=launch.offload_optimizer, offload_params=launch.offload_params,
            offload_activations=t.activation_offloading,
            optimizer="deepspeed" if launch.distributed == "deepspeed" else "adamw")

    def preflight(self, gpu_memory: str | None = None) -> Preflight:
        """The memory preflight of this run (medsft/memory/preflight.py) on its device or `gpu_memory`."""
        from medsft.memory.preflight import run_preflight

        return run_preflight(self.memory_setup(), self.recipe.model, grad_accum=self.grad_accum,
                             attention=self.attention.notice, launch=self.launch.describe(),
                             gpu_memory=gpu_memory)

    def identity(self) -> dict:
        """The run's identity (`trained_identity`), taken once: at the start, before any row is read, so a data
        file corrected while the run trains is a different run afterwards."""
        return self.trained_identity

    @cached_property
    def trained_identity(self) -> dict:
        """What makes two runs the same training: everything that changes the optimization trajectory (model,
        quantization, LoRA, data, the resolved training values) and the checkpoint format (the kind of
        distribution). Logging, saving, evaluation and output settings may change between resumes. `data.content`
        is what the rows are (a local file's bytes), so data corrected in place is a different run."""
        from medsft.data.cache import content_fingerprint

        r, launch = self.recipe, self.launch
        training = {k: v for k, v in r.training.as_dict().items() if k not in NOT_TRAJECTORY}
        training.update(precision=self.precision, micro_batch=self.micro_batch, grad_accum=self.grad_accum,
                        max_grad_norm=self.max_grad_norm, drop_longer_than=self.drop_longer_than)
        model = r.model.model_dump(mode="json", include={"name", "revision", "dtype", "chat_template"})
        return {"model": model, "quantization": r.quantization.model_dump(mode="json"),
                "lora": r.lora.model_dump(mode="json"),
                "data": {**r.data.model_dump(mode="json"), "content": content_fingerprint(r.data)},
                "training": json.loads(json.dumps(training, default=str)),
                "distribution": f"{launch.distributed}{launch.zero_stage or ''}"}

    def manifest(self) -> dict:
        return {"launch": {**self.launch.to_dict(), "described": self.launch.describe()},
                "placement": self.placement.to_dict(), "kernels": self.kernels, "checkpointing": self.checkpointing,
                "precision": self.precision, "micro_batch": self.micro_batch, "gradient_accumulation": self.grad_accum,
                "drop_longer_than": self.drop_longer_than, "substituted": self.placement.substituted,
                "batch": self.batch.to_dict() if self.batch is not None else None,
                "attention": self.attention.to_dict()}


def resolve(recipe: Recipe, launch: Launch, kernels: str | None = None, memory: Memory | None = None,
            previous_micro_batch: int | None = None) -> RunSpec:
    """The run, decided once, and the one caller of every launch compatibility rule (the launch's own
    `launch.check`, placement, devices, chat template, precision, DeepSpeed JSON, reporting), so `medsft
    launch` before any worker starts, `medsft preflight` and each worker refuse the same runs. `kernels` None: chosen here for this machine (imports transformers). `memory`
    (micro_batch.Memory): the device memory an `auto` micro-batch is chosen for (None: measured, or the
    fallback without CUDA); `previous_micro_batch`: the one a resumed checkpoint was trained with."""
    where = recipe.source_file
    check_launch(launch)
    mixed = precision(recipe, launch)
    try:
        placement = decide(launch, bits=recipe.quantization.bits, dtype=recipe.model.dtype,
                           forced_device_map=recipe.model.device_map, precision=mixed)
        check_devices(recipe.model.device_map, launch)
        check_chat_template(recipe.model.chat_template, launch)
    except MedsftError as err:
        raise err.at(f"{launch.source} with {where}" if launch.source != "environment" else where) from None
    notices: list[str] = []
    if recipe.model.trust_remote_code:
        notices.append(f"trust_remote_code is on: code from {recipe.model.name!r} will run on this machine")
    if placement.substituted:
        notices.append(f"launch: {placement.substituted}")
    if kernels is None:
        from medsft.model.kernels import detect

        choice = detect(recipe.model.kernels, launch.cuda)
        kernels = choice.name
        if choice.notice:
            notices.append(choice.notice)
    t = recipe.training
    length = t.max_length
    spec = RunSpec(
        recipe=recipe, launch=launch, placement=placement, kernels=kernels,
        checkpointing=t.checkpointing is not False,
        drop_longer_than=None if t.packing else length,
        trl_max_length=length if t.packing or not t.padding_free else None,
        micro_batch=FALLBACK_MICRO_BATCH, eval_batch=t.eval_batch,
        max_grad_norm=adopted(recipe, launch, "max_grad_norm", launch.gradient_clipping, 1.0),
        precision=mixed, notices=tuple(notices))
    accum = t.grad_accum
    if accum != "auto" and (accum is not None or launch.gradient_accumulation is not None):
        accum = adopted(recipe, launch, "gradient_accumulation_steps", launch.gradient_accumulation, 1)
    elif accum == "auto" and launch.gradient_accumulation is not None:
        accum = launch.gradient_accumulation  # the DeepSpeed config fixes it
    request = BatchRequest(t.micro_batch, accum, t.global_batch_size, where)
    batch = decide_batch(request, spec.memory_setup(), recipe.model, launch, memory, previous_micro_batch, notices)
    spec = replace(spec, micro_batch=batch.micro_batch, grad_accum=batch.grad_accum, batch=batch,
                   notices=tuple(notices))
    check_deepspeed_json(spec)
    check_reporting(spec)
    return spec


def check_reporting(spec: RunSpec) -> None:
    """`report_to` names integrations transformers knows and this environment has installed; otherwise the
    trainer fails after the model has loaded."""
    wanted = spec.recipe.training.report_to
    if not wanted:
        return  # nothing to check, and transformers (torch) is not imported for it: `medsft preflight` stays quick
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = get_available_reporting_integrations()
    for name in wanted:
        if name not in INTEGRATION_TO_CALLBACK:
            raise MedsftError(f"training.report_to {name!r} is not an integration transformers knows",
                              f"use one of {', '.join(INTEGRATION_TO_CALLBACK)}, or none", spec.recipe.source_file)
        if name not in installed:
            raise MedsftError(f"training.report_to {name!r} is not installed", f"pip install {name.replace('_', '-')}, "
                              "or set training.report_to: none", spec.recipe.source_file)


def accelerate_name(launch: Launch) -> str:
    return launch.source if launch.source != "environment" else "the accelerate config"


def adopted(recipe: Recipe, launch: Launch, key: str, theirs: float | None, default: Number) -> Number:
    """A training value an accelerate DeepSpeed config may also set: the recipe's when it says one (and the
    config agrees or is silent), the config's when only it says one, else the default."""
    ours = recipe.training.said(key)
    if theirs is not None and ours is not None and float(ours) != float(theirs):
        config_key = {"max_grad_norm": "gradient_clipping"}.get(key, key)
        raise MedsftError(f"{accelerate_name(launch)} sets deepspeed_config.{config_key}: {theirs} but "
                          f"{recipe.source_file} says training.{key}: {ours}",
                          f"remove {config_key} from the accelerate config (the recipe decides) or make them equal")
    return type(default)(ours if ours is not None else theirs if theirs is not None else default)


def check_deepspeed_json(spec: RunSpec) -> None:
    """A DeepSpeed JSON config's concrete values (not "auto") must match the run, or transformers stops every
    rank with a multi-line mismatch report after loading; one line before loading instead."""
    from medsft.launch.detect import deepspeed_json

    ds = deepspeed_json(spec.launch.deepspeed_config_file)
    world = spec.launch.world_size
    expected = {"train_micro_batch_size_per_gpu": spec.micro_batch, "gradient_accumulation_steps": spec.grad_accum,
                "train_batch_size": spec.micro_batch * spec.grad_accum * world, "gradient_clipping": spec.max_grad_norm,
                "bf16.enabled": spec.precision == "bf16", "fp16.enabled": spec.precision == "fp16"}
    for key, want in expected.items():
        section, _, name = key.rpartition(".")
        value = (ds.get(section) or {}).get(name) if section else ds.get(key)
        if value not in (None, "auto") and value != want:
            raise MedsftError(f"{spec.launch.deepspeed_config_file} sets {key}: {value} but {spec.recipe.source_file} "
                              f"resolves it to {want}", f"write \"auto\" for {key} in the DeepSpeed config (medsft "
                              "fills it from the recipe) or change the recipe")


def precision(recipe: Recipe, launch: Launch) -> str:
    """Mixed precision from the recipe. An accelerate config's `mixed_precision: bf16|fp16|fp8` is adopted when
    the recipe says nothing and refused when it says otherwise (transformers would keep the config's value
    beside `bf16: false` and DeepSpeed would fail in every rank); its `no` is no statement: the recipe decides.
    fp8 is refused where it cannot run, before any worker starts (accelerate or transformers would stop each
    one with a traceback)."""
    said = recipe.training.precision  # bf16 | fp16 | no, or None
    ours = None if said in (None, "no") else said
    theirs = launch.mixed_precision if launch.mixed_precision in ("bf16", "fp16", "fp8") else None
    if theirs and said and ours != theirs:
        name = accelerate_name(launch)
        recipe_says = f"training.{ours}: true" if ours else "training.bf16/fp16: false"
        fix = f"training.{theirs}: true in the recipe" if theirs != "fp8" else "remove training.bf16/fp16 from the recipe"
        raise MedsftError(f"{name} says mixed_precision: {theirs} but {recipe.source_file} says {recipe_says}",
                          f"make them agree: set mixed_precision: '{ours or 'no'}' in {name}, or {fix}")
    if theirs == "fp8":
        check_fp8(recipe, launch)
    if said:
        return ours or "no"
    if theirs:
        return theirs
    return "bf16" if launch.cuda else "no"  # TRL's default is bf16; on CPUs fp32 runs faster than bf16 autocast


def check_fp8(recipe: Recipe, launch: Launch) -> None:
    """FP8 needs an Ada/Hopper-or-newer GPU (compute capability 8.9) here and one of accelerate's FP8 backends;
    and it swaps every nn.Linear for an FP8 layer, copying its weight, which a bitsandbytes layer's packed
    weight cannot survive."""
    import torch
    from accelerate.utils import is_fp8_available

    name = accelerate_name(launch)
    needs = ("mixed_precision: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and "
             "Transformer Engine, MS-AMP or torchao installed")
    fix = f"set mixed_precision: bf16 in {name} (or 'no' on a CPU)"
    if not torch.cuda.is_available():
        raise MedsftError(f"{name}: {needs}; this machine has no CUDA GPU", fix)
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise MedsftError(f"{name}: {needs}; this machine's {torch.cuda.get_device_name()} is {major}.{minor}", fix)
    if not is_fp8_available():
        raise MedsftError(f"{name}: {needs}; none of them is installed", "pip install torchao, or " + fix)
    if recipe.quantization.bits is not None:
        raise MedsftError(f"{name}: mixed_precision: fp8 replaces every linear layer with an FP8 one, and "
                          f"quantization.bits: {recipe.quantization.bits} layers cannot be converted",
                          f"{fix}, or set quantization.bits: null (plain LoRA)")
