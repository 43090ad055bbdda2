"""medsft.memory.flops against torch's FlopCounterMode on a small Qwen3-shaped model on the CPU: frozen base,
PEFT LoRA on every linear, TRL's fused LM head, a padding-free batch of real row lengths through medsft's varlen
attention function and torch's own varlen wrapper (the reference kernel under it, tests/compat), with and
without checkpointing. The counter counts attention without the causal mask's skip, so the comparison is with
`causal_skip=False`; it sees what ran, including the LM head on every position (TRL's compact head is CUDA's)."""

from __future__ import annotations

import pytest
import torch

from medsft.memory.flops import step_flops
from medsft.memory.model import Arch
from medsft.model.attention import MIN_VARLEN_TORCH, torch_at_least

pytestmark = pytest.mark.skipif(not torch_at_least(torch.__version__, MIN_VARLEN_TORCH), reason="needs torch's varlen")

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, vocab_size=512, tie_word_embeddings=True, model_type="qwen3")
LENGTHS = [37, 80, 15, 52]  # medical-o1 rows' shape, scaled down: a short question, a long answer


def counted(checkpointing: bool) -> tuple[int, dict]:
    from peft import LoraConfig, get_peft_model
    from torch.nn.attention.varlen import varlen_attn
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AttentionInterface, AutoModelForCausalLM, Qwen3Config
    from transformers.masking_utils import AttentionMaskInterface
    from trl.trainer.utils import add_fused_lm_head

    from medsft.model.attention import make_varlen_forward, unpadded_mask
    from tests.compat import reference_kernel

    reference_kernel.install()
    AttentionInterface.register("flops_varlen", make_varlen_forward(varlen_attn))
    AttentionMaskInterface.register("flops_varlen", unpadded_mask)
    torch.manual_seed(0)
    config = Qwen3Config(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flops_varlen")
    add_fused_lm_head(model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.enable_input_require_grads()  # as a checkpointed run has it: every layer's input gradient is formed
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    n = sum(LENGTHS)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, n))
    positions = torch.cat([torch.arange(t) for t in LENGTHS]).unsqueeze(0)
    labels = ids.clone()
    labels[0, :20] = -100  # a masked prompt: the CPU head still runs on every position
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, position_ids=positions, labels=labels, fused_lm_head=True).loss.backward()
    return counter.get_total_flops(), counter.get_flop_counts()["Global"]


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointing", "no-checkpointing"])
def test_hardware_flops_match_the_flop_counter(checkpointing):
    total, by_op = counted(checkpointing)
    assert any("varlen" in str(op) for op in by_op), f"the varlen path did not run: {by_op}"
    arch = Arch.from_config(CONFIG)
    ours = step_flops(arch, LENGTHS, lora_rank=8, head_positions=sum(LENGTHS) - 1, checkpointing=checkpointing,
                      causal_skip=False)
    assert abs(ours.hardware - total) / total < 0.03, (ours.hardware, total, by_op)
    assert ours.model < ours.hardware, "model FLOPs leave out the recompute and the masked half"


def test_model_flops_count_the_head_where_it_runs_and_the_causal_half():
    arch = Arch.from_config(CONFIG)
    everywhere = step_flops(arch, LENGTHS, lora_rank=8)
    trained_only = step_flops(arch, LENGTHS, lora_rank=8, head_positions=100)
    head = 4 * arch.hidden * arch.vocab
    assert everywhere.model - trained_only.model == head * (sum(LENGTHS) - len(LENGTHS) - 100)
    one_row = step_flops(arch, [sum(LENGTHS)], lora_rank=8)
    squares = sum(t * t for t in LENGTHS)
    assert one_row.parts["attention (causal)"] / everywhere.parts["attention (causal)"] == sum(LENGTHS) ** 2 / squares
