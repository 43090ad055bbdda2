"""Memory preflight: will this run fit on this launch, per device, before any weight is loaded?

Why: an 8B QLoRA run that dies of OOM after 20 minutes of loading and tokenizing is the most common waste
of GPU time. The architecture comes from the model's config.json (a local directory, the hub cache, or
the configs medsft ships for its recipes: no weights, no network), the rest from the run's memory setup
(medsft/memory/model.py `Setup`, which the resolved run fills: ZeRO/FSDP/offload included). The arithmetic is medsft/memory/model.py;
this module reads the inputs, renders persistent terms and phases, names the dominant term, and ranks
the changes that would make a run fit. Verdict: fits below 85% of the device, tight up to 100%.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError
from medsft.memory.model import Arch, Estimate, GiB, Setup, estimate

if TYPE_CHECKING:
    from medsft.recipe.schema import ModelSection

SHIPPED = Path(__file__).resolve().parent / "architectures"


def verdict(total: float, device: float) -> str:
    if total <= 0.85 * device:
        return "fits"
    return "tight" if total <= device else "won't fit"


def read_config(model_name: str, revision: str | None = None) -> tuple[dict, str]:
    """(config.json, where it came from) for a built-in, local, hub-cached or shipped architecture; never
    downloads. A login node without internet can check every recipe medsft ships."""
    from medsft.model.builtin.tiny_model import builtin_model_dir, is_builtin

    if is_builtin(model_name):
        return json.loads((builtin_model_dir(model_name) / "config.json").read_text()), "the built-in model"
    local = Path(model_name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MedsftError(f"{model_name!r} has no config.json", "point model.name at a model directory", "model.name")
        return json.loads((local / "config.json").read_text()), str(local / "config.json")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_name, "config.json", revision=revision)
    if isinstance(found, str):
        return json.loads(Path(found).read_text()), "the hub cache"
    index = json.loads((SHIPPED / "index.json").read_text())
    if model_name in index:
        return json.loads((SHIPPED / index[model_name]).read_text()), "medsft's shipped architecture (no hub cache)"
    raise MedsftError(f"config.json of {model_name!r} is not in the hub cache",
                      f"on a machine that reaches the hub run `hf download {model_name} config.json` and copy its "
                      "HF_HOME (~/.cache/huggingface) here, or set model.name to a local directory", "model.name")


def parse_size(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|G|MiB|MB|M|TiB|TB|T)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise MedsftError(f"--gpu-memory {text!r} is not a positive size", "write e.g. 80GiB or 24GB")
    unit = (m.group(2) or "GiB").upper()
    scale = {"GIB": GiB, "G": GiB, "GB": 1e9, "MIB": 2**20, "M": 2**20, "MB": 1e6, "TIB": 2**40, "T": 2**40,
             "TB": 1e12}[unit]
    return float(m.group(1)) * scale


# (label, --set overrides, Setup changes): each candidate is re-estimated and ranked by effect
CHANGES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("turn activation checkpointing on", ["training.activation_checkpointing=true"], dict(checkpointing=True)),
    ("4-bit NF4 quantization", ["quantization.bits=4"], dict(bits=4)),
    ("LoRA dropout 0 (no copy of each adapter's input)", ["lora.dropout=0"], dict(dropout=0.0)),
]


def candidates(s: Setup, gradient_accumulation: int) -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    yield from CHANGES
    mb = s.micro_batch
    while mb > 1:
        mb //= 2
        ga = gradient_accumulation * (s.micro_batch // mb)
        yield (f"micro-batch {mb} with accumulation {ga} (same effective batch)",
               [f"training.per_device_train_batch_size={mb}", f"training.gradient_accumulation_steps={ga}"],
               dict(micro_batch=mb))
    if s.eval_batch > 1:
        yield ("eval batch 1", ["training.per_device_eval_batch_size=1"], dict(eval_batch=1))
    length = s.max_length
    while length > 256:
        length //= 2
        yield f"max_length {length} (longer rows are dropped)", [f"training.max_length={length}"], dict(max_length=length)
    if s.micro_batch > 1:
        accumulation = gradient_accumulation * s.micro_batch
        for length in (s.max_length // 2, s.max_length // 4):
            if length >= 256:
                yield (f"micro-batch 1, accumulation {accumulation}, max_length {length}",
                       ["training.per_device_train_batch_size=1", f"training.gradient_accumulation_steps={accumulation}",
                        f"training.max_length={length}"], dict(micro_batch=1, max_length=length))
    if s.world_size > 1 and not s.shard_params:
        yield (f"ZeRO-3 over {s.world_size} processes", ["(launch with accelerate_configs/zero3.yaml)"],
               dict(shard_params=True, zero_stage=3, optimizer="deepspeed"))


def suggestions(arch: Arch, s: Setup, device: float, gradient_accumulation: int) -> list[tuple[str, list[str], float]]:
    """Up to three changes that make the run fit: for each kind of change the mildest that fits (the longest
    max_length, the largest micro-batch), ranked by effect (the smallest resulting total first)."""
    mildest: dict[str, tuple[str, list[str], float]] = {}
    for label, overrides, changes in candidates(s, gradient_accumulation):
        kind = " ".join(o.split("=")[0] for o in overrides)
        new = s.replace(**changes)
        if kind in mildest or new == s:
            continue
        total = estimate(arch, new).total
        if verdict(total, device) == "fits":
            mildest[kind] = (label, overrides, total)
    return sorted(mildest.values(), key=lambda x: x[2])[:3]


def device_memory(gpu_memory: str | None) -> tuple[float, str]:
    if gpu_memory:
        return parse_size(gpu_memory), "as given by --gpu-memory"
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return float(free), f"free on {torch.cuda.get_device_name()}"
    raise MedsftError("no GPU here to measure", "pass --gpu-memory SIZE (e.g. 80GiB) to say what to assume")


@dataclass(frozen=True)
class Preflight:
    """What `medsft preflight` (and a training's gate) found: the estimate against the device, and what to change
    when it won't fit. The commands render it (medsft/views.py)."""
    model: str
    source: str  # where the architecture was read
    attention: str  # the attention it was estimated with, as its notice says it
    launch: str
    setup: Setup
    estimate: Estimate
    device: float
    where: str
    verdict: str
    # (label, overrides, total bytes) when it won't fit
    tips: list[tuple[str, list[str], float]] = field(default_factory=list)


def run_preflight(setup: Setup, model: ModelSection, *, grad_accum: int, attention: str, launch: str,
                  gpu_memory: str | None = None) -> Preflight:
    """The estimate of a run's `setup` for `model` on its device (or `gpu_memory`), its verdict and suggestions.
    `attention`, `launch`: how the run was resolved, as the report says it."""
    config, source = read_config(model.name, model.revision)
    try:
        arch = Arch.from_config(config)
    except KeyError as err:
        raise MedsftError(f"config.json lacks {err.args[0]!r}", "preflight supports decoder-only transformers "
                          "(Llama, Qwen, Mistral …)", "model.name") from None
    device, where = device_memory(gpu_memory)
    est = estimate(arch, setup)
    v = verdict(est.total, device)
    tips = suggestions(arch, setup, device, grad_accum) if v == "won't fit" else []
    return Preflight(model.name, source, attention, launch, setup, est, device, where, v, tips)
