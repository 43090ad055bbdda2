"""A CPU reference for FlashAttention-2's varlen ops, registered under torch's own op names, so torch's real
`torch.nn.attention.varlen.varlen_attn` (its custom op, autograd and argument handling, as each torch version
ships them) and medsft's binding of it run on a machine without CUDA.

Why at the lowest op: a stand-in for torch's wrapper tests only the stand-in. The ops below the wrapper are
`aten::_flash_attention_forward` / `aten::_flash_attention_backward` on every torch from 2.10; they have CUDA
kernels only, so a CPU kernel registered for them (torch.library, dispatch key CPU) is what runs here. The
reference computes per-sequence attention in float32 from cu_seqlens, with grouped K/V heads read by query
head h // (H / H_kv), and its gradients by the closed form of softmax attention.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_LIBRARY: list[Any] = []  # the registration lives as long as the process
CALLS = {"forward": 0, "backward": 0}  # how often each op ran here: torch's wrapper reached this kernel


def bind(schema: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by name (the schema differs between torch versions)."""
    names = [a.name for a in schema.arguments]
    out = dict(zip(names, args))
    out.update(kwargs)
    for a in schema.arguments:
        if a.name not in out:
            out[a.name] = a.default_value if a.has_default_value() else None
    return out


def check_window(a: dict[str, Any]) -> None:
    left, right = a.get("window_size_left"), a.get("window_size_right")
    if left not in (None, -1) or right not in (None, -1, 0):
        raise NotImplementedError(f"reference kernel: no sliding window ({left}, {right})")


def scores(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * scale
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return s


def forward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    a = bind(torch.ops.aten._flash_attention_forward.default._schema, args, kwargs)
    CALLS["forward"] += 1
    check_window(a)
    q, k, v = (a[n].float() for n in ("query", "key", "value"))
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    scale = a["scale"] if a.get("scale") is not None else 1 / math.sqrt(dim)
    causal = bool(a["is_causal"]) or a.get("window_size_right") == 0
    cu = a["cum_seq_q"].tolist()
    out = torch.empty_like(q)
    lse = torch.empty(heads, q.shape[0])
    for s, e in zip(cu, cu[1:]):
        qs = q[s:e].transpose(0, 1)
        ks, vs = (t[s:e].transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for t in (k, v))
        sc = scores(qs, ks, causal, scale)
        lse[:, s:e] = torch.logsumexp(sc, -1)
        out[s:e] = (sc.softmax(-1) @ vs).transpose(0, 1)
    empty = torch.zeros((), dtype=torch.uint64)
    return out.to(a["query"].dtype), lse, torch.zeros(2, dtype=torch.uint64), empty, torch.empty(0)


def backward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    a = bind(torch.ops.aten._flash_attention_backward.default._schema, args, kwargs)
    CALLS["backward"] += 1
    check_window(a)
    q, k, v, grad = (a[n].float() for n in ("query", "key", "value", "grad_out"))
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    groups = heads // kv_heads
    scale = a["scale"] if a.get("scale") is not None else 1 / math.sqrt(dim)
    causal = bool(a["is_causal"]) or a.get("window_size_right") == 0
    cu = a["cum_seq_q"].tolist()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for s, e in zip(cu, cu[1:]):
        n = e - s
        qs, gs = q[s:e].transpose(0, 1), grad[s:e].transpose(0, 1)
        ks, vs = (t[s:e].transpose(0, 1).repeat_interleave(groups, 0) for t in (k, v))
        p = scores(qs, ks, causal, scale).softmax(-1)
        o = p @ vs
        ds = p * (gs @ vs.transpose(-1, -2) - (gs * o).sum(-1, keepdim=True))
        dq[s:e] = (scale * ds @ ks).transpose(0, 1)
        dk[s:e] = (scale * ds.transpose(-1, -2) @ qs).reshape(kv_heads, groups, n, dim).sum(1).transpose(0, 1)
        dv[s:e] = (p.transpose(-1, -2) @ gs).reshape(kv_heads, groups, n, dim).sum(1).transpose(0, 1)
    return dq.to(a["query"].dtype), dk.to(a["key"].dtype), dv.to(a["value"].dtype)


def install() -> None:
    """Register the CPU reference for the two ops (once per process)."""
    if _LIBRARY:
        return
    library = torch.library.Library("aten", "IMPL")
    library.impl("_flash_attention_forward", forward, "CPU")
    library.impl("_flash_attention_backward", backward, "CPU")
    _LIBRARY.append(library)
