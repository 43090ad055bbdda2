"""Optimized GPU kernels (Liger, Hub kernels): on where they can run, off with one notice where not.

Why: fused RMSNorm/RoPE/SwiGLU kernels cut activation memory and step time on a GPU, but they are
Triton/CUDA code: on a laptop, or where the package is missing, asking for them must not break a run
that works without them. `model.kernels` in the recipe says what the user wants:

    auto   Liger when `liger-kernel` is installed, else off (never Hub kernels unasked: they are fetched
           from the hub at load time, which must never happen silently)
    liger  transformers' `use_liger_kernel` (TRL keeps its own fused LM head, so Liger's fused
           linear cross-entropy stays off)
    hub    transformers' `use_kernels` (the `kernels` package, in the versions transformers accepts;
           kernels come from the hub or its cache), kernelized for training
    off    plain PyTorch modules

`choose()` is a pure function of (request, GPU, what is installed), so every branch is tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LIGER_HINT = "pip install 'medsft[kernels]' (liger-kernel)"


@dataclass(frozen=True)
class KernelChoice:
    name: str  # "liger" | "hub" | "off"
    notice: str | None = None  # one line for the user when the request was not met as written


def choose(requested: str, cuda: bool, liger_installed: bool, hub_installed: bool,
           hub_hint: str = "pip install kernels") -> KernelChoice:
    if requested == "off":
        return KernelChoice("off")
    if not cuda:
        if requested == "auto":
            return KernelChoice("off", "kernels: off (no GPU: Liger and Hub kernels run on CUDA only)")
        return KernelChoice("off", f"kernels: {requested} requested but there is no GPU; running without")
    installed = {"liger": liger_installed, "hub": hub_installed}
    hint = {"liger": LIGER_HINT, "hub": hub_hint}
    if requested == "auto":
        if liger_installed:
            return KernelChoice("liger", "kernels: liger")
        return KernelChoice("off", f"kernels: off (liger-kernel is not installed: {LIGER_HINT}; "
                                   "or model.kernels: hub for Hub kernels)")
    if installed[requested]:
        return KernelChoice(requested, f"kernels: {requested}")
    return KernelChoice("off", f"kernels: {requested} requested but not installed ({hint[requested]}); "
                               "running without")


def detect(requested: str, cuda: bool) -> KernelChoice:
    """choose() with what this environment has installed (transformers' own availability checks)."""
    from transformers.utils import is_kernels_available, is_liger_kernel_available
    from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION

    return choose(requested, cuda, is_liger_kernel_available(), is_kernels_available(),
                  hub_hint=f"pip install 'kernels>={KERNELS_MIN_VERSION},<{KERNELS_MAX_VERSION}'")


def apply(chosen: str, model: Any) -> tuple[str, str | None]:
    """What the loaded model runs with, and a notice when a kernel asked for could not be had. Hub kernels are
    applied here, for training (a model comes out of from_pretrained in eval mode, and inference kernels need not
    have a backward); one that cannot be fetched (offline, no cache) leaves the model as it was. Liger is applied
    later by the trainer."""
    if chosen != "hub":
        return chosen, None
    try:
        from kernels import Mode

        model.set_use_kernels(True, mode=Mode.TRAINING)
    except Exception as err:  # the kernels package raises its own hub/compat errors; training goes on without
        return "off", (f"kernels: hub kernels unavailable ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
                       "running without")
    return "hub", None
