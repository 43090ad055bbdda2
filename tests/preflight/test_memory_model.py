"""The memory model's activation terms against what PyTorch really allocates, on this CPU.

torch.profiler with profile_memory=True records every CPU tensor allocation and free; summed in time order
they give the live bytes through a forward and backward. A small Qwen3-shaped model (bf16, 4-bit NF4 base,
LoRA in bf16 as TRL trains it, SDPA) is run at two sequence lengths; the difference per token is the
activation cost, free of weights and other constant terms. It must not under-predict (3% slack) nor over-predict
by more than 20% with checkpointing on and off, and LoRA dropout on and off (the same formula, `device="cpu"`: the CPU
SDPA kernel returns its output already in the layout o_proj reads, so there is no transposing copy)."""

from __future__ import annotations

import pytest

from medsft.memory.model import Arch, Setup, layer_activation_bytes

pytestmark = pytest.mark.slow
CONFIG = dict(model_type="qwen3", hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
              head_dim=64, num_hidden_layers=4, vocab_size=1024, max_position_embeddings=4096, tie_word_embeddings=True)
LENGTHS = (256, 512)


def qlora_model(tmp_path, dropout: float, checkpointing: bool, attn: str = "sdpa"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from medsft.model.attention import register
    from medsft.upstream import keep_4bit_trainable_layout

    register()

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**CONFIG)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp_path / "m")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", quantization_config=bnb, dtype=torch.bfloat16,
                                                 attn_implementation=attn)
    keep_4bit_trainable_layout(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear"))
    for param in model.parameters():  # TRL trains a quantized model's adapters in bf16
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    return model.train()


def peak_live_bytes(model, length: int, packed: int | None = None) -> int:
    """Highest live CPU bytes during one forward and backward of the decoder stack; `packed`: the tokens are
    sequences of that many, flattened into one row as TRL's padding-free collator does."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(1))
    extra = {"position_ids": (torch.arange(length) % packed)[None]} if packed else {}
    backbone = model.base_model.model.model
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        hidden = backbone(input_ids=ids, use_cache=False, **extra).last_hidden_state
        hidden.float().pow(2).mean().backward()  # a reduction in place of the LM head: 4H per token, fp32
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = top = 0
    for _, nbytes in events:
        live += nbytes
        top = max(top, live)
    model.zero_grad(set_to_none=True)
    return top


@pytest.mark.parametrize("checkpointing", [False, True], ids=["checkpointing off", "checkpointing on"])
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no dropout", "dropout"])
def test_activation_bytes_per_token(tmp_path, checkpointing, dropout):
    model = qlora_model(tmp_path, dropout, checkpointing)
    peak_live_bytes(model, 64)  # first-call allocations (caches, lazily built buffers) out of the way
    short, long = (peak_live_bytes(model, n) for n in LENGTHS)
    measured = (long - short) / (LENGTHS[1] - LENGTHS[0])
    arch = Arch.from_config(CONFIG)
    s = Setup(rank=8, dropout=dropout, checkpointing=checkpointing, device="cpu")
    e, h, i = layer_activation_bytes(arch, s), arch.hidden, arch.intermediate
    backward = 2 * h + 4 * i  # bf16
    final_norm, probe_loss = 4 * h + 8, 4 * h
    layers = arch.layers * (2 * h if checkpointing else e) + (e if checkpointing else 0)
    predicted = layers + backward + final_norm + probe_loss
    print(f"checkpointing={checkpointing} dropout={dropout}: measured {measured:,.0f} B/token, "
          f"predicted {predicted:,.0f} (E = {e:,.0f} B/token/layer)")
    # never under (a run the preflight passes must not run out of memory), and not far over (a run it refuses
    # must not fit): with checkpointing the peak falls inside the recomputed layer's backward, where the order
    # in which CPU kernels free a [tokens, hidden] tensor moves it by ~2h bytes per token between machines
    assert measured * 0.97 <= predicted <= measured * 1.2


@pytest.mark.parametrize("attention", ["sdpa_rows", "sdpa"], ids=["medsft row-by-row SDPA", "transformers SDPA"])
def test_packed_batch_bytes_follow_the_attention(tmp_path, attention):
    """A padding-free batch of 32-token sequences: medsft's row-by-row SDPA keeps no mask (the joined output
    is its one extra copy); transformers' SDPA keeps a (ΣT)² bool mask and one bf16 additive mask per layer.
    The measured growth from 256 to 512 tokens matches the estimate for the attention that ran."""
    from medsft.memory.model import dense_mask_terms

    model = qlora_model(tmp_path, 0.0, False, attn={"sdpa_rows": "medsft_sdpa_rows"}.get(attention, attention))
    peak_live_bytes(model, 64, packed=32)
    short, long = (peak_live_bytes(model, n, packed=32) for n in LENGTHS)
    arch = Arch.from_config(CONFIG)
    s = Setup(rank=8, checkpointing=False, device="cpu", attention=attention, padding_free=True)
    e, h, i = layer_activation_bytes(arch, s), arch.hidden, arch.intermediate

    def predicted(t):
        per_token = arch.layers * e + 2 * h + 4 * i + 4 * h + 8 + 4 * h
        return per_token * t + sum(b for _, b, _ in dense_mask_terms(arch, s, t, 2))

    want = predicted(LENGTHS[1]) - predicted(LENGTHS[0])
    print(f"{attention}: measured {long - short:,.0f} B more at {LENGTHS[1]} tokens, predicted {want:,.0f}")
    assert want == pytest.approx(long - short, rel=0.05)  # the masks are 8% of it: a wrong rule fails


@pytest.mark.parametrize("kind", ["varlen", "varlen_repeat_kv"], ids=["torch >= 2.12 (GQA in the kernel)",
                                                                     "torch < 2.12 (K/V repeated)"])
def test_varlen_path_bytes_with_and_without_the_kv_copy(tmp_path, kind):
    """medsft's varlen attention over torch's own wrapper (the reference kernel under it, tests/compat) on a
    padding-free batch: with a wrapper that takes `enable_gqa` the kernel keeps K/V at their own heads; with one
    that does not (torch 2.10/2.11's signature) medsft repeats them to the query heads and the kernel keeps those.
    The measured growth from 256 to 512 tokens matches the estimate for each (never under, at most 20% over)."""
    from torch.nn.attention.varlen import varlen_attn
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from medsft.model.attention import make_varlen_forward, unpadded_mask
    from tests.compat import reference_kernel

    reference_kernel.install()

    def without_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1)):  # torch 2.11's varlen_attn signature, calling this torch's wrapper
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, return_aux=return_aux, scale=scale,
                           window_size=window_size)

    name = f"test_{kind}"
    AttentionInterface.register(name, make_varlen_forward(varlen_attn if kind == "varlen" else without_gqa))
    AttentionMaskInterface.register(name, unpadded_mask)
    model = qlora_model(tmp_path, 0.0, False, attn=name)
    peak_live_bytes(model, 64, packed=32)
    short, long = (peak_live_bytes(model, n, packed=32) for n in LENGTHS)
    measured = (long - short) / (LENGTHS[1] - LENGTHS[0])
    arch = Arch.from_config(CONFIG)
    e = layer_activation_bytes(arch, Setup(rank=8, checkpointing=False, device="cpu", attention=kind,
                                           padding_free=True))
    h, i = arch.hidden, arch.intermediate
    predicted = arch.layers * e + 2 * h + 4 * i + 4 * h + 8 + 4 * h
    print(f"{kind}: measured {measured:,.0f} B/token, predicted {predicted:,.0f}")
    assert measured * 0.97 <= predicted <= measured * 1.2
