"""Which attention a run uses, and the two medsft registers with transformers.

Why: SDPA over a padding-free batch (TRL's collator: one flat row, position_ids restarting at each
sequence) makes transformers build a dense block-causal (ΣT)² mask, which SDPA turns into an additive
float mask on every call, with K/V repeated and attention computed across the rows' boundaries (masked):
(ΣT)² work instead of Σ T². flash-attn 2 avoids that but ships no wheel. PyTorch ships FlashAttention-2
itself (`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10, CUDA sm80+, bf16/fp16), so medsft
registers two attention functions through transformers' own interfaces (`AttentionInterface`,
`AttentionMaskInterface`), each with a mask function that builds no mask for unpadded batches:

    medsft_varlen      torch's varlen kernel over the flattened batch, one cu_seqlens per forward
                       (from the collator's `cu_seq_lens_q`, else from position_ids), GQA handled
    medsft_sdpa_rows   SDPA, one causal call per packed sequence (no mask); an ordinary batch is
                       plain transformers SDPA

A padded batch (generation, eval without padding-free) gets transformers' SDPA mask and SDPA.
`choose()` is a pure function of the request and the machine's facts (CUDA, capability, dtype, torch
version, what imports), so every branch is tested without a GPU; `detect()` reads the facts.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    # transformers' attention function: (module, query, key, value, attention_mask, ...) -> (output, weights)
    AttentionForward = Callable[..., tuple[Tensor, None]]
    # q, k, v (T, H, D), cu_seqlens, longest, scale, causal -> (T, H, D)
    VarlenCall = Callable[[Tensor, Tensor, Tensor, Tensor, int, float | None, bool], Tensor]

VARLEN, SDPA_ROWS = "medsft_varlen", "medsft_sdpa_rows"
MIN_VARLEN_TORCH = (2, 10)
GQA_VARLEN_TORCH = (2, 12)  # varlen_attn takes enable_gqa from here on; before, varlen_caller repeats K/V itself
HALF = ("bfloat16", "float16")


@dataclass(frozen=True)
class Facts:
    """What the choice depends on."""

    cuda: bool
    capability: tuple[int, int] | None  # of the GPU this process trains on
    dtype: str  # the dtype attention computes in (see attention_dtype)
    torch_version: str
    flash_attn: bool  # flash-attn 2 imports
    flash_attn_4: bool  # flash_attn.cute (the flash-attn-4 wheel) imports
    assumed: bool = False  # a CUDA GPU assumed (preflight on a machine without one)


@dataclass(frozen=True)
class Choice:
    name: str  # what runs: flash_attention_2 | flash_attention_4 | varlen | sdpa | flex_attention | eager
    implementation: str  # the attn_implementation transformers loads with (medsft's registered names included)
    why: str
    assumed: bool = False  # chosen for an assumed CUDA GPU (no CUDA here)
    repeats_kv: bool = False  # torch's varlen_attn without GQA (torch < 2.12): medsft repeats K/V to the query heads

    @property
    def notice(self) -> str:
        where = "; assumed: a CUDA GPU of sm80 or newer, as none is here" if self.assumed else ""
        return f"attention: {self.name} ({self.why}{where})"

    @property
    def memory_kind(self) -> str:
        """The attention as the memory model distinguishes it (medsft/memory/model.py Setup.attention)."""
        if self.repeats_kv:
            return "varlen_repeat_kv"
        return "sdpa_rows" if self.implementation == SDPA_ROWS else self.name

    def to_dict(self) -> dict:
        return {"ran": self.name, "implementation": self.implementation, "why": self.why, "assumed": self.assumed,
                "repeats_kv": self.repeats_kv}


def torch_at_least(version: str, wanted: tuple[int, int]) -> bool:
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= wanted
    except (IndexError, ValueError):
        return False


def attention_dtype(model_dtype: str, precision: str) -> str:
    """The dtype q/k/v have: the model's when it is half, else autocast's (bf16/fp16 mixed precision), else fp32."""
    if model_dtype in HALF:
        return model_dtype
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def flash_unusable(f: Facts) -> str | None:
    """Why no flash kernel (flash-attn, torch varlen) can run here; None when the GPU and dtype allow one."""
    if not f.cuda:
        return "no CUDA device"
    if f.capability is not None and f.capability[0] < 8:
        return f"the GPU is sm{f.capability[0]}{f.capability[1]}, older than Ampere (flash kernels need sm80+)"
    if f.dtype not in HALF:
        return f"{f.dtype} on the GPU (flash kernels need bf16 or fp16)"
    return None


ROWS = "padding-free batches run one causal SDPA call per sequence, no mask"


def rows_sdpa(why: str) -> Choice:
    return Choice("sdpa", SDPA_ROWS, f"{why}; {ROWS}")


def choose(requested: str, f: Facts) -> Choice:
    """The attention for `model.attn_implementation: requested` on a machine with facts `f`."""
    choice = choose_for(requested, f)
    repeats = choice.implementation == VARLEN and not torch_at_least(f.torch_version, GQA_VARLEN_TORCH)
    return Choice(choice.name, choice.implementation, choice.why, assumed=f.assumed, repeats_kv=repeats)


def choose_for(requested: str, f: Facts) -> Choice:
    """The request when this machine can run it; else what `auto` picks, with the reason."""
    if requested == "eager":
        return Choice("eager", "eager", "requested")
    if requested == "sdpa":
        return rows_sdpa("requested")
    if requested == "flex_attention":
        if f.cuda:
            return Choice("flex_attention", "flex_attention", "requested")
        return rows_sdpa("flex_attention requested, but it cannot train on a CPU (no backward there); "
                         "falling back to sdpa")
    blocked = flash_unusable(f)
    varlen_ok = blocked is None and torch_at_least(f.torch_version, MIN_VARLEN_TORCH)
    fa2_ok = blocked is None and f.flash_attn
    fa4_ok = blocked is None and f.flash_attn_4 and (f.capability is None or f.capability[0] >= 9)
    if requested == "flash_attention_4" and fa4_ok:
        return Choice("flash_attention_4", "flash_attention_4", "requested; flash_attn.cute imports")
    if requested == "varlen" and varlen_ok:
        return Choice("varlen", VARLEN, f"requested; torch {f.torch_version}'s FlashAttention-2 varlen kernel")
    if requested in ("auto", "flash_attention_2") and fa2_ok:
        return Choice("flash_attention_2", "flash_attention_2", "flash-attn imports and the GPU supports it")
    # the request cannot be met as written: what auto picks, said with the reason
    if blocked is not None:
        why = blocked
    elif requested == "flash_attention_4":
        why = ("flash_attn.cute (pip install flash-attn-4) does not import" if not f.flash_attn_4
               else "flash_attention_4 needs a Hopper or newer GPU (sm90+)")
    elif requested == "varlen":
        why = f"torch {f.torch_version} has no varlen kernel (torch >= 2.10)"
    else:
        why = "flash-attn is not installed (or does not import)"
    if fa2_ok:  # the order auto picks in
        fallback = Choice("flash_attention_2", "flash_attention_2", f"{why}; flash-attn imports")
    elif varlen_ok:
        fallback = Choice("varlen", VARLEN, f"{why}; torch {f.torch_version}'s FlashAttention-2 varlen kernel")
    else:
        if blocked is None and requested != "varlen":
            why += f", and torch {f.torch_version} has no varlen kernel (torch >= 2.10)"
        fallback = rows_sdpa(why)
    if requested == "auto":
        return fallback
    rows = f"; {ROWS}" if fallback.implementation == SDPA_ROWS else ""
    return Choice(fallback.name, fallback.implementation,
                  f"{requested} requested but unusable ({why}); falling back to {fallback.name}{rows}")


def flash_attn_imports() -> bool:
    """flash-attn 2 installed AND loadable (a wheel built for another torch/CUDA fails only at import;
    flash-attn-4 alone provides the `flash_attn` namespace without the FA2 functions)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:  # an ABI mismatch raises ImportError, OSError or RuntimeError
        return False
    return True


def flash_attn_4_imports() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        importlib.import_module("flash_attn.cute")
    except Exception:
        return False
    return True


def nvidia_driver() -> bool:
    """An NVIDIA driver is loaded here (its /proc entry or a device node): only then can torch see a GPU."""
    import os

    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def detect(cuda: bool, dtype: str) -> Facts:
    """This machine's facts for a run on CUDA (`cuda`) or the CPU. A CUDA launch planned where there is no
    CUDA (`medsft preflight` on a login node) gets an assumed GPU of sm80 or newer with the installed torch
    and packages: what `auto` would pick where the run is meant to go. A machine with no NVIDIA driver is
    told without importing torch (seconds), so the preflight of a login node stays quick."""
    if cuda and not nvidia_driver():
        from importlib.metadata import version

        return Facts(True, None, dtype, version("torch"), flash_attn_imports(), flash_attn_4_imports(), assumed=True)
    import torch

    if cuda and not torch.cuda.is_available():
        return Facts(True, None, dtype, torch.__version__, flash_attn_imports(), flash_attn_4_imports(), assumed=True)
    capability: tuple[int, int] | None = None
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        capability = (major, minor)
    return Facts(cuda, capability, dtype, torch.__version__, cuda and flash_attn_imports(),
                 cuda and flash_attn_4_imports())


# --- the registered functions -------------------------------------------------------------------------------

_bounds_cache: list = [None, None, None]  # (the tensor the bounds came from, its batch/length/device, bounds)
_host_bounds: list = [None, None]  # (cu_seqlens, the same on the host; None when nothing is packed)


def sequence_bounds(position_ids: Tensor | None, batch: int, length: int, kwargs: dict[str, Any],
                    device: torch.device | str) -> tuple[Tensor, int]:
    """(cu_seqlens int32 on `device`, the longest sequence) over the flattened (batch × length) tokens: a new
    sequence starts at each row and wherever a position does not follow its predecessor (TRL's packing
    restarts them at 0). The collator's `cu_seq_lens_q` is taken as is for one row. Computed once per
    forward: every layer gets the same tensor, so the last result is reused for it."""
    import torch

    given = kwargs.get("cu_seq_lens_q")
    source = given if given is not None and batch == 1 else position_ids
    key = (batch, length, str(device))
    if source is not None and _bounds_cache[0] is source and _bounds_cache[1] == key:
        return _bounds_cache[2]
    if source is given and given is not None:
        cu = given.to(device=device, dtype=torch.int32)
        longest = kwargs.get("max_length_q")
        longest = int(longest) if longest is not None else int(cu.diff().max())
    else:
        if position_ids is None:
            starts = torch.arange(0, batch * length, length, device=device)
        else:
            pos = position_ids.to(device).expand(batch, -1)
            first = torch.ones_like(pos, dtype=torch.bool)
            first[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
            starts = first.reshape(-1).nonzero().flatten()
        cu = torch.cat([starts, torch.tensor([batch * length], device=device)]).to(torch.int32)
        longest = int(cu.diff().max())
    result = (cu, longest)
    _bounds_cache[:] = [source, key, result]
    return result


def varlen_caller(kernel: Callable[..., Any]) -> VarlenCall:
    """Adapt `kernel` (varlen_attn's signature as installed) to one call: q/k/v (T, H, D) → (T, H, D).
    torch 2.10: `is_causal=`, no GQA; 2.12+: `window_size=(-1, 0)` for causal and `enable_gqa=`; `scale=`
    where the kernel takes it, else the query is pre-scaled (the kernel's default is 1/√D)."""
    params = inspect.signature(kernel).parameters
    window, gqa, has_scale = "window_size" in params, "enable_gqa" in params, "scale" in params

    def call(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, longest: int, scale: float | None, causal: bool) -> Tensor:
        kw: dict[str, Any] = {}
        if k.shape[1] != q.shape[1]:
            if gqa:
                kw["enable_gqa"] = True
            else:  # head h of the query reads KV head h // groups, as transformers' repeat_kv
                groups = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if window:
            kw["window_size"] = (-1, 0) if causal else (-1, -1)
        else:
            kw["is_causal"] = causal
        if scale is not None:
            if has_scale:
                kw["scale"] = scale
            else:
                q = q * (scale * math.sqrt(q.shape[-1]))
        return kernel(q, k, v, cu, cu, longest, longest, **kw)

    return call


def plain_case(attention_mask: Tensor | None, query: Tensor, key: Tensor) -> bool:
    """A batch medsft's functions leave to transformers' SDPA: a mask was built (padding, sliding window) or a
    KV cache makes keys longer than queries (generation)."""
    return attention_mask is not None or query.shape[2] != key.shape[2]


def make_varlen_forward(kernel: Callable[..., Any], needs_cuda: bool = False) -> AttentionForward:
    """An attention function (transformers' signature) running `kernel` over the flattened batch (`needs_cuda`:
    tensors elsewhere go row by row through SDPA instead)."""
    call = varlen_caller(kernel)

    def varlen_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                                 attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                                 is_causal: bool | None = None, **kwargs: Any) -> tuple[Tensor, None]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if plain_case(attention_mask, query, key):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kwargs)
        if dropout > 0 or getattr(module, "sliding_window", None) or (needs_cuda and not query.is_cuda):
            # the kernel has no dropout or window, or cannot run here: row by row, still no mask
            return sdpa_rows_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     is_causal=is_causal, **kwargs)
        import torch

        batch, heads, length, dim = query.shape
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        cu, longest = sequence_bounds(kwargs.get("position_ids"), batch, length, kwargs, query.device)
        q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
        kind = query.device.type
        if q.dtype == torch.float32 and torch.is_autocast_enabled(kind):  # fp32 RoPE output under autocast
            q, k, v = (t.to(torch.get_autocast_dtype(kind)) for t in (q, k, v))
        out = call(q, k, v, cu, longest, scaling, causal)
        return out.reshape(batch, length, heads, value.shape[-1]), None

    return varlen_attention_forward


def varlen_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, **kwargs: Any) -> tuple[Tensor, None]:
    """The registered medsft_varlen: torch's varlen_attn, its signature read once on first use."""
    global _varlen_forward
    if _varlen_forward is None:
        from torch.nn.attention.varlen import varlen_attn

        _varlen_forward = make_varlen_forward(varlen_attn, needs_cuda=True)
    return _varlen_forward(module, query, key, value, attention_mask, **kwargs)


_varlen_forward: AttentionForward | None = None


def sdpa_rows_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs: Any) -> tuple[Tensor, None]:
    """medsft_sdpa_rows: transformers' SDPA once per packed sequence (causal, no mask); any other batch as
    transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)[0]

    batch, _, length, _ = query.shape
    if plain_case(attention_mask, query, key):
        return sdpa(query, key, value, attention_mask), None
    cu, _ = sequence_bounds(kwargs.get("position_ids"), batch, length, kwargs, query.device)
    if _host_bounds[0] is not cu:  # one host copy per forward, not per layer
        _host_bounds[:] = [cu, cu.tolist() if cu.numel() > batch + 1 else None]
    bounds = _host_bounds[1]
    if bounds is None:  # one sequence per row: nothing packed
        return sdpa(query, key, value, None), None
    rows = []
    for b in range(batch):
        lo, hi = b * length, (b + 1) * length
        cuts = [c - lo for c in bounds if lo <= c <= hi]
        rows.append(torch_cat([sdpa(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e], None)
                               for s, e in zip(cuts, cuts[1:]) if e > s], dim=1))
    return torch_cat(rows, dim=0), None


def torch_cat(tensors: list[Tensor], dim: int) -> Tensor:
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def unpadded_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                  mask_function: Callable[..., Any] | None = None, attention_mask: Tensor | None = None,
                  local_size: int | None = None, **kwargs: Any) -> Tensor | None:
    """The mask function of medsft's attentions: none for a batch without padding, cache or sliding window
    (causality and the packed sequences' bounds come from position_ids in the attention function), else
    transformers' SDPA mask, for which the attention function runs transformers' SDPA. A model's own mask
    functions (`or_mask_function`/`and_mask_function`: bidirectional image tokens, chunked attention), which
    transformers marks by asking for `use_vmap`, get their mask built too: the varlen kernel knows only causal."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    plain = (attention_mask is None and local_size is None and q_length == kv_length and not kwargs.get("use_vmap")
             and isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 and kv_offset == 0)
    if plain:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                     attention_mask=attention_mask, local_size=local_size, **kwargs)


def register() -> None:
    """medsft's attentions, known to transformers by name (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, forward in ((VARLEN, varlen_attention_forward), (SDPA_ROWS, sdpa_rows_forward)):
        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, unpadded_mask)
