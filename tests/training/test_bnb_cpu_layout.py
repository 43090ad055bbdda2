"""bitsandbytes' CPU inference layout never reaches a model medsft trains (AVX512-BF16 CPUs repack 4-bit
weights in eval mode; the next training step then fails). Runs on every CPU: the switch medsft sets is
asserted everywhere, the packed layout is produced by hand where the instruction set is missing, and on
CPUs that have it the upstream behaviour itself is reproduced so we know when the workaround can go."""

from __future__ import annotations

import pytest

from medsft.upstream import keep_4bit_trainable_layout
from tests.bnb_layout import packed_4bit_layers


def qlora_tiny(tiny_dir):
    """The tiny Qwen2 (biased q/k/v projections) in 4-bit NF4 with LoRA, as medsft trains it on a CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=bnb, dtype=torch.float32)
    assert base.model.layers[0].self_attn.q_proj.bias is not None, "the regression needs a biased 4-bit layer"
    return base, lambda b: get_peft_model(b, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def train_step(model, ids, optimizer):
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def evaluate(model, ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_train_evaluate_train(tiny_dir):
    import torch

    base, wrap = qlora_tiny(tiny_dir)
    layers = keep_4bit_trainable_layout(base)
    model = wrap(base)
    assert layers == 14  # 2 decoder layers × 7 linear layers
    import bitsandbytes as bnb

    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 14 and not any(m.support_avx512bf16_for_cpu for m in four_bit)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = train_step(model, ids, opt)
    evaluate(model, ids)
    assert packed_4bit_layers(model) == [], "an evaluation left trained 4-bit layers in the inference layout"
    for _ in range(3):
        last = train_step(model, ids, opt)  # failed here on AVX512-BF16 CPUs before the fix
    assert last < first
    assert packed_4bit_layers(model) == []


def test_already_packed_layers_are_unpacked_exactly(tiny_dir):
    """The packed layout made by hand (pure torch, any CPU): the switch restores the original bytes."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    base, _ = qlora_tiny(tiny_dir)
    layer = base.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    before = layer.weight.data.clone()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)
    assert packed_4bit_layers(base) == ["model.layers.0.mlp.up_proj"]
    keep_4bit_trainable_layout(base)
    assert packed_4bit_layers(base) == []
    assert layer.weight.data.dtype == before.dtype and (layer.weight.data.view(-1) == before.view(-1)).all()


def cpu_has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return has_avx512bf16()


@pytest.mark.skipif(not cpu_has_avx512bf16(), reason="this CPU has no AVX512-BF16: bitsandbytes never packs here")
def test_upstream_still_repacks_in_eval(tiny_dir):
    """Documents the upstream behaviour on CPUs that have AVX512-BF16 (the fast inference kernel needs it):
    without medsft's switch an evaluation repacks the weights and the next training step fails. When this
    test fails because bitsandbytes stopped doing so, `keep_4bit_trainable_layout` can be removed."""
    import torch

    base, wrap = qlora_tiny(tiny_dir)
    model = wrap(base)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_step(model, ids, opt)
    evaluate(model, ids)
    assert packed_4bit_layers(model), "bitsandbytes no longer repacks in eval: drop the workaround"
    with pytest.raises(RuntimeError, match="in-place operation"):
        train_step(model, ids, opt)
