"""`per_device_train_batch_size: auto`: the largest micro-batch the memory model says fits, and the
gradient accumulation that keeps the rows per optimizer step.

Why: guessing a micro-batch, running out of memory and fixing the accumulation by hand costs a launch per
try (and the HF Trainer's `auto_find_batch_size` cannot recover under DeepSpeed or FSDP). The memory model
(medsft/memory/model.py) already knows the launch, attention, kernels and checkpointing, so the choice is
made before anything is loaded, by the same estimate the preflight prints.

Rules (one home for each):
- Fits: the preflight's own "fits" verdict, total estimate ≤ 85% of the device memory at hand. The estimate
  already adds the CUDA context and 10% fragmentation, so the stated margin is 15% of the device on top.
- Worst case of a micro-batch: every row `max_length` tokens. Longer rows are dropped, so any k rows the
  sampler draws together are at most k × max_length tokens (and TRL's packing builds rows of exactly
  max_length). The tokenized data's real lengths would allow more, but they exist only after tokenizing,
  which comes after the training gate and never happens in `medsft preflight`; the command and the training
  must choose the same size from the same inputs.
- Rows per optimizer step (the effective batch) = micro-batch × accumulation × data-parallel processes:
  `training.global_batch_size` when set; with `auto` and no fixed accumulation, 128 (the HuatuoGPT-o1
  authors' value); with fixed numbers only, their product (today's behaviour). The micro-batch is then a
  divisor of global / processes, so 1 GPU, 8 GPUs and ZeRO-3 take the same optimizer steps per epoch.
  `auto` beside a fixed accumulation and no global batch keeps that accumulation (the effective batch then
  follows the micro-batch, with a notice saying how to pin it).
- Device memory at hand: `--gpu-memory`, else the GPU's free memory for one process. Several processes
  decide from what they all share, the device's total memory (a free-memory measurement differs by rank
  and by the moment, and the process group does not exist yet); the training gate then checks the chosen
  size against the free memory. No GPU and no `--gpu-memory`: a fallback of 8 rows, with a notice.
- A resumed run keeps the micro-batch its checkpoint recorded, so the resume continues the same batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from medsft.launch.detect import Launch
    from medsft.memory.model import Arch, Setup
    from medsft.recipe.schema import ModelSection, Recipe

DEFAULT_GLOBAL_BATCH = 128  # rows per optimizer step: HuatuoGPT-o1's SFT setting
FALLBACK_MICRO_BATCH = 8  # no device to measure (CPU runs are not memory-bound the same way)
MAX_MICRO_BATCH = 1024  # search bound when nothing pins the global batch
FITS_SHARE = 0.85  # = preflight.verdict's "fits"


@dataclass(frozen=True)
class Memory:
    """The device memory the choice is made for, and where the number came from."""

    bytes: float
    where: str


@dataclass(frozen=True)
class BatchRequest:
    """What the recipe (and a DeepSpeed config) state about the batch."""

    micro_batch: int | str = 8  # training.per_device_train_batch_size: a number or "auto"
    accumulation: int | str | None = None  # gradient_accumulation_steps: a number, "auto", or unset
    global_batch: int | None = None  # training.global_batch_size
    source_file: str | None = None  # where the recipe came from (errors name it)


@dataclass(frozen=True)
class BatchChoice:
    micro_batch: int
    grad_accum: int
    world: int  # data-parallel processes
    auto: bool  # the recipe said auto for the micro-batch or the accumulation
    global_from: str  # why this many rows per optimizer step
    how: str  # how the micro-batch was decided
    device: float | None = None  # bytes it was chosen for
    total: float | None = None  # estimated total at the chosen size
    next_size: int | None = None  # the next larger candidate, which did not fit
    next_total: float | None = None

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "global_batch": self.global_batch}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def architecture(model: ModelSection) -> Arch:
    from medsft.memory.model import Arch
    from medsft.memory.preflight import read_config

    config, _ = read_config(model.name, model.revision)
    try:
        return Arch.from_config(config)
    except KeyError as err:
        raise MedsftError(f"config.json lacks {err.args[0]!r}", "set training.per_device_train_batch_size to a "
                          "number (the memory model supports decoder-only transformers)", "model.name") from None


def estimated_total(arch: Arch, setup: Setup, micro_batch: int) -> float:
    from medsft.memory.model import estimate

    return estimate(arch, setup.replace(micro_batch=micro_batch)).total


def largest_fitting(arch: Arch, setup: Setup, sizes: list[int], device: float
                    ) -> tuple[int | None, float | None, int | None, float | None]:
    """(chosen, its total, next size, its total) over ascending `sizes`; chosen None when even the first
    does not fit. The estimate grows with the micro-batch, so the scan stops at the first that does not fit."""
    chosen = chosen_total = None
    for size in sizes:
        total = estimated_total(arch, setup, size)
        if total > FITS_SHARE * device:
            return chosen, chosen_total, size, total
        chosen, chosen_total = size, total
    return chosen, chosen_total, None, None


def measured_memory(launch: Launch) -> Memory | None:
    """The device memory a training launch decides with (module docstring); None without CUDA."""
    if not launch.cuda:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    if launch.world_size > 1:
        props = torch.cuda.get_device_properties(launch.local_rank)
        return Memory(float(props.total_memory), f"total on {props.name} (every rank decides the same)")
    free, _ = torch.cuda.mem_get_info()
    return Memory(float(free), f"free on {torch.cuda.get_device_name()}")


def previous_choice(resume: str, output_dir: str) -> int | None:
    """The micro-batch the checkpoint a resume continues from was trained with (its recorded identity)."""
    from pathlib import Path

    from medsft.io.checkpoints import complete_checkpoints, identity_of

    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        checkpoint = done[-1] if done else None
    else:
        checkpoint = Path(resume)
    identity = identity_of(checkpoint) if checkpoint else None
    value = ((identity or {}).get("training") or {}).get("micro_batch")
    return value if isinstance(value, int) and value > 0 else None


def decide(request: BatchRequest, setup: Setup, model: ModelSection, launch: Launch, memory: Memory | None = None,
           previous: int | None = None, notices: list[str] | None = None) -> BatchChoice:
    """The micro-batch and accumulation of a run: `request` as the recipe states it, `setup` the run's memory
    setup (its micro-batch replaced by each candidate), `model` whose architecture the estimate reads.
    `memory` None on a CUDA launch: measured here."""
    where = request.source_file
    micro, accumulation, stated = request.micro_batch, request.accumulation, request.global_batch
    world = max(1, launch.world_size if launch.distributed != "none" else 1)
    procs = f"{world} process{'es' if world > 1 else ''}"
    fixed_accum = accumulation if isinstance(accumulation, int) else None
    auto = micro == "auto" or accumulation == "auto"

    if not auto and isinstance(micro, int):  # numbers only: their product, checked against a stated global batch
        if stated is None or fixed_accum is not None:
            accum = fixed_accum or 1
            if stated is not None and micro * accum * world != stated:
                raise MedsftError(f"training.global_batch_size {stated} ≠ per_device_train_batch_size {micro} × "
                                  f"gradient_accumulation_steps {accum} × {procs} = {micro * accum * world}",
                                  "set gradient_accumulation_steps: auto, or make them agree", where)
            return BatchChoice(micro, accum, world, False, "the recipe's micro-batch × accumulation × processes",
                               "set in the recipe")
    if stated is not None:
        rows, global_from = stated, "training.global_batch_size"
    elif micro == "auto" and fixed_accum is not None:
        rows, global_from = None, (f"gradient_accumulation_steps {fixed_accum} kept; set training.global_batch_size "
                                   "to keep the steps across devices")
    else:
        rows, global_from = DEFAULT_GLOBAL_BATCH, f"default {DEFAULT_GLOBAL_BATCH} (HuatuoGPT-o1's rows per step)"
    if rows is not None and rows % world:
        raise MedsftError(f"{global_from} = {rows} rows per optimizer step is not divisible by {procs}",
                          f"choose a global batch that is a multiple of {world}", where)
    per_rank = rows // world if rows is not None else None

    if isinstance(micro, int):  # a fixed micro-batch, accumulation auto
        assert rows is not None and per_rank is not None  # no global batch only beside micro-batch auto
        if per_rank % micro:
            raise MedsftError(f"{global_from} = {rows} rows per optimizer step is not divisible by "
                              f"{procs} × per_device_train_batch_size {micro}",
                              f"choose a micro-batch that divides {per_rank}, or per_device_train_batch_size: auto",
                              where)
        return BatchChoice(micro, per_rank // micro, world, auto, global_from, "set in the recipe")

    if per_rank is None:
        sizes = list(range(1, MAX_MICRO_BATCH + 1))
    elif fixed_accum is not None:
        if per_rank % fixed_accum:
            raise MedsftError(f"per_device_train_batch_size: auto with gradient_accumulation_steps {fixed_accum} "
                              f"cannot keep {rows} rows per optimizer step over {procs} ({per_rank} per process "
                              f"is not a multiple of {fixed_accum})",
                              "set gradient_accumulation_steps: auto (or remove it)", where)
        sizes = [per_rank // fixed_accum]
    else:
        sizes = divisors(per_rank)

    def choice(m: int, how: str, **measures: Any) -> BatchChoice:
        accum = fixed_accum if per_rank is None else per_rank // m
        assert accum is not None  # no rows per step to divide only beside a fixed accumulation
        return BatchChoice(m, accum, world, True, global_from, how, **measures)

    if previous is not None and previous in sizes:
        return choice(previous, "kept from the checkpoint this run resumes")
    if memory is None:
        memory = measured_memory(launch)
    if memory is None:
        m = max(s for s in sizes if s <= FALLBACK_MICRO_BATCH) if min(sizes) <= FALLBACK_MICRO_BATCH else sizes[0]
        if notices is not None:
            shown = fixed_accum if per_rank is None else per_rank // m
            assert shown is not None
            notices.append(f"training.per_device_train_batch_size: auto → {m} (no GPU to measure: the fallback for "
                           f"CPU runs): {m} × {shown} × {procs} = {m * shown * world} rows per optimizer step"
                           f"{'' if per_rank is not None else '; set training.global_batch_size to keep the steps'}; "
                           "`medsft preflight RECIPE --gpu-memory SIZE` chooses for a GPU")
        return choice(m, "fallback: no GPU to measure")
    arch = architecture(model)
    chosen, total, next_size, next_total = largest_fitting(arch, setup, sizes, memory.bytes)
    if chosen is None:
        assert next_total is not None  # the first size was estimated and did not fit
        if fixed_accum is not None and per_rank is not None:
            raise MedsftError(f"per_device_train_batch_size: auto with gradient_accumulation_steps {fixed_accum} "
                              f"cannot keep {rows} rows per optimizer step over {procs}: micro-batch {sizes[0]} won't "
                              f"fit ({next_total / 2**30:.1f} GiB estimated, {FITS_SHARE:.0%} of "
                              f"{memory.bytes / 2**30:.1f} GiB {memory.where} allowed)",
                              "set gradient_accumulation_steps: auto (or remove it)", where)
        raise nothing_fits(arch, setup, sizes[0], next_total, memory, fixed_accum, per_rank, where)
    if per_rank is None and notices is not None:
        assert fixed_accum is not None
        notices.append(f"training.per_device_train_batch_size: auto with gradient_accumulation_steps {fixed_accum}: "
                       f"{chosen * fixed_accum * world} rows per optimizer step; set training.global_batch_size to "
                       "keep the same steps on every device")
    return choice(chosen, f"largest that fits {FITS_SHARE:.0%} of {memory.bytes / 2**30:.1f} GiB {memory.where}",
                  device=memory.bytes, total=total, next_size=next_size, next_total=next_total)


def nothing_fits(arch: Arch, setup: Setup, smallest: int, total: float, memory: Memory, fixed_accum: int | None,
                 per_rank: int | None, where: str | None) -> MedsftError:
    """Even the smallest candidate does not fit: the preflight's own suggestions, on one line."""
    from medsft.memory.preflight import suggestions

    s = setup.replace(micro_batch=smallest)
    accum = fixed_accum if per_rank is None else per_rank // smallest
    assert accum is not None
    tips = [t for t in suggestions(arch, s, memory.bytes, accum) if "per_device_train_batch_size" not in " ".join(t[1])]
    fix = "; ".join(f"{label}: {' '.join('--set ' + o if '=' in o else o for o in overrides)}"
                    for label, overrides, _ in tips) or "use more GPUs with ZeRO-3 / FSDP2, or a smaller model"
    return MedsftError(f"training.per_device_train_batch_size: auto: even micro-batch {smallest} won't fit "
                       f"({total / 2**30:.1f} GiB estimated, {FITS_SHARE:.0%} of {memory.bytes / 2**30:.1f} GiB "
                       f"{memory.where} allowed)", fix, where)


def recorded_recipe(recipe: Recipe, batch: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe as saved beside the adapter: `auto` replaced by the values this run trained with, so
    training from the saved recipe again reproduces the batches (on another number of processes the three
    numbers disagree, and the recipe is refused with the fix, rather than training other steps)."""
    out = recipe.to_dict()
    if batch and batch.get("auto"):
        out["training"] = {**out["training"], "per_device_train_batch_size": batch["micro_batch"],
                           "gradient_accumulation_steps": batch["grad_accum"],
                           "global_batch_size": batch["global_batch"]}
    return out
