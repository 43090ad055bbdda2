"""medsft's attention on the CPU: the choice for every machine, and the registered functions' logic.

torch's varlen kernel runs on CUDA only, so its place is taken here by a reference kernel with the same
signature (per-sequence SDPA), in the 2.10 style (`is_causal=`, no GQA) and the 2.12+ style
(`window_size=`, `enable_gqa=`, `scale=`). The function medsft registers around it must give a packed batch
the results (and gradients) of its sequences run one by one, and no mask over the flattened batch may be
built. tests/gpu/test_attention.py checks the real kernels on a GPU."""

from __future__ import annotations

import pytest

from medsft.model.attention import Facts, choose

TORCH_NEW, TORCH_OLD = "2.13.0+cu130", "2.9.1+cu128"
LENGTHS = [7, 1, 12, 5]  # uneven, one of a single token


def facts(cuda=True, capability=(9, 0), flash_attn=False, torch_version=TORCH_NEW, dtype="bfloat16", fa4=False):
    return Facts(cuda=cuda, capability=capability if cuda else None, dtype=dtype, torch_version=torch_version,
                 flash_attn=flash_attn, flash_attn_4=fa4)


@pytest.mark.parametrize("requested, machine, ran, row_by_row, said", [
    ("auto", facts(cuda=False), "sdpa", True, "no CUDA device"),
    ("auto", facts(cuda=False, flash_attn=True), "sdpa", True, "no CUDA device"),
    ("auto", facts(capability=(7, 5)), "sdpa", True, "older than Ampere"),
    ("auto", facts(capability=(7, 5), flash_attn=True), "sdpa", True, "older than Ampere"),
    ("auto", facts(dtype="float32"), "sdpa", True, "float32 on the GPU"),
    ("auto", facts(flash_attn=True, dtype="float32"), "sdpa", True, "float32 on the GPU"),
    ("auto", facts(flash_attn=True), "flash_attention_2", False, "flash-attn imports"),
    ("auto", facts(capability=(8, 0), dtype="float16"), "varlen", False, "varlen kernel"),
    ("auto", facts(), "varlen", False, "flash-attn is not installed"),
    ("auto", facts(torch_version=TORCH_OLD), "sdpa", True, "has no varlen kernel"),
    ("auto", facts(torch_version=TORCH_OLD, flash_attn=True), "flash_attention_2", False, "flash-attn imports"),
    ("auto", facts(torch_version="2.10.0"), "varlen", False, "varlen kernel"),
    ("flash_attention_2", facts(cuda=False), "sdpa", True, "flash_attention_2 requested but unusable (no CUDA device)"),
    ("flash_attention_2", facts(), "varlen", False, "flash_attention_2 requested but unusable"),
    ("flash_attention_2", facts(flash_attn=True), "flash_attention_2", False, "flash-attn imports"),
    ("flash_attention_4", facts(fa4=True), "flash_attention_4", False, "requested"),
    ("flash_attention_4", facts(fa4=True, capability=(8, 0)), "varlen", False, "needs a Hopper or newer GPU"),
    ("flash_attention_4", facts(flash_attn=True), "flash_attention_2", False, "flash_attn.cute"),
    ("flash_attention_4", facts(cuda=False, fa4=True), "sdpa", True, "no CUDA device"),
    ("varlen", facts(flash_attn=True), "varlen", False, "requested"),
    ("varlen", facts(torch_version=TORCH_OLD, flash_attn=True), "flash_attention_2", False, "has no varlen kernel"),
    ("varlen", facts(cuda=False), "sdpa", True, "varlen requested but unusable (no CUDA device)"),
    ("sdpa", facts(flash_attn=True), "sdpa", True, "requested"),
    ("eager", facts(), "eager", False, "requested"),
    ("flex_attention", facts(), "flex_attention", False, "requested"),
    ("flex_attention", facts(cuda=False), "sdpa", True, "cannot train on a CPU"),
])
def test_choice_for_each_machine(requested, machine, ran, row_by_row, said):
    choice = choose(requested, machine)
    assert choice.name == ran
    assert (choice.implementation == "medsft_sdpa_rows") == row_by_row
    assert said in choice.notice and choice.notice.startswith(f"attention: {ran} (")


@pytest.mark.parametrize("torch_version, kind", [("2.10.0+cu128", "varlen_repeat_kv"), ("2.11.0+cu130", "varlen_repeat_kv"),
                                                  ("2.12.0+cu130", "varlen"), (TORCH_NEW, "varlen")])
def test_the_memory_model_is_told_where_varlen_repeats_kv(torch_version, kind):
    """torch's varlen_attn takes GQA from 2.12; before, medsft repeats K/V and the preflight charges the copy."""
    choice = choose("auto", facts(torch_version=torch_version))
    assert choice.implementation == "medsft_varlen" and choice.memory_kind == kind
    assert choice.to_dict()["repeats_kv"] == (kind == "varlen_repeat_kv")


# --- the reference kernels (per-sequence SDPA in varlen_attn's signatures) --------------------------------------

def per_sequence(query, key, value, cu, causal, scale=None, gqa=False):
    import torch
    import torch.nn.functional as F

    bounds = cu.tolist()
    outs = []
    for s, e in zip(bounds, bounds[1:]):
        q, k, v = (t[s:e].transpose(0, 1)[None] for t in (query, key, value))
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)[0]
                    .transpose(0, 1))
    return torch.cat(outs)


CALLS: list[dict] = []


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert query.shape[1] == key.shape[1], "2.10's kernel has no GQA: K/V must come repeated"
    assert max_q == int(cu_seq_q.diff().max()) and cu_seq_q.dtype.is_floating_point is False
    CALLS.append({"style": "2.10", "is_causal": is_causal})
    return per_sequence(query, key, value, cu_seq_q, is_causal)


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert enable_gqa or query.shape[1] == key.shape[1]
    assert max_q == int(cu_seq_q.diff().max())
    CALLS.append({"style": "2.12", "window_size": window_size, "enable_gqa": enable_gqa, "scale": scale})
    return per_sequence(query, key, value, cu_seq_q, window_size == (-1, 0), scale=scale, gqa=enable_gqa)


KERNELS = {"2.10": varlen_2_10, "2.12": varlen_2_12}


class Attn:
    """What transformers' attention functions read from the attention module."""

    is_causal = True

    def __init__(self, heads, kv_heads):
        self.num_key_value_groups = heads // kv_heads


def packed_qkv(heads, kv_heads, dim=16, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    total = sum(LENGTHS)
    return [torch.randn(1, h, total, dim, generator=g, dtype=torch.float64).requires_grad_()
            for h in (heads, kv_heads, kv_heads)]


def packed_positions():
    import torch

    return torch.cat([torch.arange(n) for n in LENGTHS])[None]


@pytest.mark.parametrize("style", KERNELS)
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)], ids=["MHA", "GQA", "MQA"])
def test_varlen_function_packed_equals_separate_forward_and_backward(style, heads, kv_heads):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from medsft.model.attention import make_varlen_forward

    forward = make_varlen_forward(KERNELS[style])
    module, scale = Attn(heads, kv_heads), 0.3
    q, k, v = packed_qkv(heads, kv_heads)
    CALLS.clear()
    out, _ = forward(module, q, k, v, None, scaling=scale, position_ids=packed_positions())
    assert out.shape == (1, sum(LENGTHS), heads, q.shape[-1])  # transformers' layout (B, T, H, D)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)

    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    alone, start = [], 0
    for n in LENGTHS:
        part = [t[:, :, start:start + n] for t in (q2, k2, v2)]
        alone.append(sdpa_attention_forward(module, *part, None, scaling=scale)[0])
        start += n
    want = torch.cat(alone, dim=1)
    expected = torch.autograd.grad(want, (q2, k2, v2), grad)
    torch.testing.assert_close(out, want)
    for name, a, b in zip("qkv", got, expected):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"d{name}: {m}")
    (call,) = CALLS
    if style == "2.10":
        assert call["is_causal"] is True
    else:
        assert call["window_size"] == (-1, 0) and call["scale"] == scale
        assert call["enable_gqa"] == (heads != kv_heads)  # GQA through the kernel, K/V not repeated


def test_varlen_caller_prescales_the_query_where_the_kernel_takes_no_scale():
    import torch

    from medsft.model.attention import varlen_caller

    q, k, v = (t[0].transpose(0, 1).detach() for t in packed_qkv(2, 2))
    cu = torch.tensor([0, 7, 8, 20, 25], dtype=torch.int32)
    out = varlen_caller(varlen_2_10)(q, k, v, cu, 12, 0.1, True)
    torch.testing.assert_close(out, per_sequence(q, k, v, cu, True, scale=0.1))


def test_bounds_from_position_ids_and_from_the_collator_agree_and_are_computed_once_per_forward():
    import torch

    from medsft.model import attention

    pos = packed_positions()
    cu, longest = attention.sequence_bounds(pos, 1, pos.shape[1], {}, "cpu")
    assert cu.tolist() == [0, 7, 8, 20, 25] and cu.dtype == torch.int32 and longest == 12
    again = attention.sequence_bounds(pos, 1, pos.shape[1], {}, "cpu")
    assert again[0] is cu  # every layer of one forward reuses the first layer's
    given = {"cu_seq_lens_q": torch.tensor([0, 7, 8, 20, 25], dtype=torch.int32), "max_length_q": 12}
    assert attention.sequence_bounds(pos, 1, pos.shape[1], given, "cpu")[0].tolist() == cu.tolist()
    rows = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])  # two rows, the first packed
    assert attention.sequence_bounds(rows, 2, 5, {}, "cpu")[0].tolist() == [0, 3, 5, 10]


# --- a whole model -------------------------------------------------------------------------------------------

def tiny_llama(attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medsft.model.attention import register

    register()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).double().eval()


def collate(seqs):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in seqs])
    batch.pop("labels")
    return batch


def recorded_sdpa(monkeypatch):
    """Every SDPA call's (query length, key length, mask shape or None)."""
    import torch.nn.functional as F

    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        calls.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def reference_varlen():
    """medsft's varlen function around the 2.12-style reference kernel, registered under a test name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from medsft.model.attention import make_varlen_forward, unpadded_mask

    AttentionInterface.register("test_varlen", make_varlen_forward(varlen_2_12))
    AttentionMaskInterface.register("test_varlen", unpadded_mask)
    return "test_varlen"


@pytest.mark.parametrize("attn", ["medsft_sdpa_rows", "test_varlen", "medsft_varlen"])  # the last: CPU → row by row
def test_model_on_a_packed_batch_equals_each_sequence_alone_and_builds_no_mask(attn, reference_varlen, monkeypatch):
    import torch

    model = tiny_llama(attn)
    seqs = [torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in LENGTHS]
    batch = collate(seqs)
    masks = []
    real_forward = type(model.model.layers[0].self_attn).forward

    def attention_spy(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        masks.append(attention_mask)
        return real_forward(self, hidden_states, position_embeddings=position_embeddings,
                            attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(type(model.model.layers[0].self_attn), "forward", attention_spy)
    calls = recorded_sdpa(monkeypatch)
    packed = model(**batch, use_cache=False).logits[0]
    assert masks and all(m is None for m in masks), "a mask reached the attention for a packed batch"
    total = sum(LENGTHS)
    assert all(c[2] is None and c[0] < total for c in calls), f"an SDPA call over the flattened batch: {calls}"
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in seqs])
    torch.testing.assert_close(packed.detach(), alone)
    packed.sum().backward()  # and the backward runs through it
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_plain_sdpa_builds_the_dense_mask_medsft_avoids(monkeypatch):
    """The control: transformers' own SDPA gets a (ΣT)² mask for the same batch, so the check above can fail."""
    model = tiny_llama("sdpa")
    calls = recorded_sdpa(monkeypatch)
    seqs = [list(range(3, 3 + n)) for n in LENGTHS]
    model(**collate(seqs), use_cache=False)  # as in training (with a cache transformers sees no packing)
    total = sum(LENGTHS)
    assert calls and all(c[2] == (1, 1, total, total) for c in calls)


def test_padded_batch_keeps_transformers_sdpa_behaviour(reference_varlen):
    """A padded batch (generation, eval without padding-free) gets transformers' mask and SDPA: the same
    logits as plain sdpa."""
    import torch

    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    want = tiny_llama("sdpa")(input_ids=ids, attention_mask=mask).logits
    for attn in ("medsft_sdpa_rows", reference_varlen):
        got = tiny_llama(attn)(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()])


# --- what the preflight assumes and what it charges -----------------------------------------------------------

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the assumption made without CUDA")
def test_preflight_without_cuda_shows_the_attention_auto_would_pick_on_a_gpu():
    """No CUDA here: the estimate is for a CUDA GPU with the installed torch and packages: flash-attn 2 where
    it imports, else torch's varlen kernel (torch >= 2.10), for a bf16 recipe; no dense mask is charged."""
    import torch

    from medsft.model.attention import flash_attn_imports, torch_at_least
    from tests.conftest import REPO, run_cli

    res = run_cli("preflight", REPO / "recipes" / "qwen3-0.6b.yaml", "--gpu-memory", "80GiB", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("estimated with attention:")]
    want = ("flash_attention_2" if flash_attn_imports()
            else "varlen" if torch_at_least(torch.__version__, (2, 10)) else "sdpa")
    assert len(lines) == 1 and lines[0].startswith(f"estimated with attention: {want} ("), res.stdout[:600]
    assert "assumed: a CUDA GPU" in lines[0]
    assert "dense attention mask" not in res.stdout


def test_memory_model_charges_a_dense_mask_only_where_one_is_built():
    from medsft.memory.model import Arch, Setup, estimate

    arch = Arch(hidden=1024, intermediate=3072, layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936,
                tied=True, qk_norm=True)
    base = Setup(micro_batch=8, max_length=4096, padding_free=True, checkpointing=True)
    t = 8 * 4096
    plain = estimate(arch, base.replace(attention="sdpa"))
    assert plain.get("dense attention mask") == t * t * (1 + 2)  # the bool mask + one bf16 additive mask
    no_ckpt = estimate(arch, base.replace(attention="sdpa", checkpointing=False))
    assert no_ckpt.get("dense attention mask") == t * t * (1 + 28 * 2)  # SDPA's backward keeps one per layer
    for attention in ("varlen", "flash_attention_2", "sdpa_rows"):
        est = estimate(arch, base.replace(attention=attention))
        with pytest.raises(KeyError):
            est.get("dense attention mask")
        assert est.allocated < plain.allocated
    unpacked = estimate(arch, base.replace(attention="sdpa", padding_free=False))
    with pytest.raises(KeyError):
        unpacked.get("dense attention mask")
