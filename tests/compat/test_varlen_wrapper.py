"""torch's own varlen wrapper, as the installed torch ships it, behind medsft's binding (medsft/model/attention.py),
run on the CPU with the reference kernel at the lowest op (tests/compat/reference_kernel.py): a packed batch
gives what each sequence gives alone, forward and gradients, in bf16 and fp16, with GQA, with and without the
collator's `cu_seq_lens_q`; and a model's own mask functions are honoured (a mask is built, so SDPA runs)
rather than dropped. `python tests/compat/run_compat.py` runs this file on every torch from 2.10 on."""

from __future__ import annotations

import pytest
import torch

from medsft.model.attention import MIN_VARLEN_TORCH, make_varlen_forward, torch_at_least
from tests.compat import reference_kernel

pytestmark = pytest.mark.skipif(not torch_at_least(torch.__version__, MIN_VARLEN_TORCH),
                                reason=f"torch.nn.attention.varlen needs torch >= {MIN_VARLEN_TORCH}")

LENGTHS = [5, 9, 3, 7]  # one padding-free row of four sequences


class Attention(torch.nn.Module):
    is_causal = True

    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads


@pytest.fixture(scope="module")
def torch_varlen():
    from torch.nn.attention.varlen import varlen_attn

    reference_kernel.install()
    return varlen_attn


def packed(heads: int, kv_heads: int, dtype: torch.dtype, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    total = sum(LENGTHS)
    q, k, v = (torch.randn(1, h, total, dim, generator=g).to(dtype).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    positions = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    return q, k, v, positions


def separate(q, k, v, scale=None):
    """Each sequence alone through SDPA in float32 (the ground truth)."""
    outs, start = [], 0
    for n in LENGTHS:
        qs, ks, vs = (t[:, :, start:start + n].float() for t in (q, k, v))
        outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                                     enable_gqa=True))
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2)  # (1, T, H, D) as the attention function returns


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("bounds", ["position_ids", "cu_seq_lens_q"])
def test_packed_equals_separate_through_torchs_wrapper(torch_varlen, dtype, heads, kv_heads, bounds):
    forward = make_varlen_forward(torch_varlen)  # medsft's binding of the wrapper this torch ships
    q, k, v, positions = packed(heads, kv_heads, dtype)
    extra = {"position_ids": positions}
    if bounds == "cu_seq_lens_q":  # TRL's collator passes them; position_ids then only say where rows are
        cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        extra = {"position_ids": None, "cu_seq_lens_q": cu, "max_length_q": max(LENGTHS)}
    out, _ = forward(Attention(heads, kv_heads), q, k, v, None, scaling=0.3, **extra)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = separate(q2, k2, v2, scale=0.3)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert out.shape == expected.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * weights).sum().backward()
    (expected * weights).sum().backward()
    for mine, truth in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(mine.grad.float(), truth.grad.float(), atol=4 * tolerance, rtol=4 * tolerance)


def test_the_reference_is_what_ran(torch_varlen):
    """torch's wrapper reached the aten ops registered here, forward and backward (not some other path), on every
    torch version."""
    before = dict(reference_kernel.CALLS)
    q = torch.randn(6, 2, 8, dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    make_varlen_forward(torch_varlen)(Attention(2, 2), q[None].transpose(1, 2), q[None].transpose(1, 2),
                                      q[None].transpose(1, 2), None, cu_seq_lens_q=cu, max_length_q=4,
                                      position_ids=None)[0].sum().backward()
    assert reference_kernel.CALLS == {"forward": before["forward"] + 1, "backward": before["backward"] + 1}
    import inspect

    if "window_size" in inspect.signature(torch_varlen).parameters:  # torch >= 2.11: a window reaches the op too
        with pytest.raises(NotImplementedError, match="reference kernel: no sliding window"):
            torch_varlen(q.detach(), q.detach(), q.detach(), cu, cu, 4, 4, window_size=(2, 0))


def test_a_models_own_mask_functions_are_honoured_on_the_varlen_path():
    """A model that composes its own mask (an `or_mask_function`, e.g. bidirectional image tokens) gets that
    mask built, so the attention function runs SDPA with it; without one, a packed batch builds none."""
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask

    from medsft.model.attention import VARLEN, register

    register()
    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                         vocab_size=32)
    config._attn_implementation = VARLEN
    embeds = torch.zeros(1, sum(LENGTHS), 16)
    positions = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    import inspect

    no_cache = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
    common = dict(config=config, inputs_embeds=embeds, attention_mask=None, position_ids=positions, **{no_cache: None})
    assert create_causal_mask(**common) is None
    bidirectional_first = lambda b, h, q_idx, kv_idx: (q_idx < 2) & (kv_idx < 2)  # noqa: E731
    mask = create_causal_mask(**common, or_mask_function=bidirectional_first)
    assert mask is not None and bool(mask[0, 0, 0, 1]), "the model's own function is in the mask"
    assert not bool(mask[0, 0, 2, 3]), "still causal elsewhere"
