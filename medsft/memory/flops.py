"""What a QLoRA training step computes, in FLOPs: the model FLOPs an MFU divides, and the hardware FLOPs the
kernels execute.

Why two: MFU must count the work a step needs, not work a choice adds or removes (checkpointing's recompute,
the scores FlashAttention recomputes in its backward), and not work that never runs. On a step over packed
rows of lengths Tᵢ (N tokens), with P the decoder's linear weights:
- frozen 4-bit base: forward 2·N·P and the input gradient 2·N·P (LoRA needs it below every adapter); no weight
  gradient is formed;
- LoRA (rank r on each targeted linear of shape in×out): forward 2·N·r·(in+out), backward twice that (the input
  and the weight gradients);
- causal attention, per layer: each token attends within its own sequence, so Σ Tᵢ² (not (ΣT)²); QKᵀ and AV
  are 4·H·D·Σ Tᵢ² dense, half of it under the causal mask; the backward is twice the forward;
- the LM head on the positions it runs on (TRL's fused head runs it on the trained positions only where its
  Triton kernel does, on CUDA; on every position elsewhere): forward and input gradient, 4·p·hidden·vocab.
Hardware FLOPs add checkpointing's recomputed forward of every decoder layer and FlashAttention's backward as
it runs (the scores recomputed: 10·H·D·Σ Tᵢ² dense), with the causal mask's skipped half left out where the
kernel skips it (`causal_skip`). tests/training/test_flops.py checks them against torch's FlopCounterMode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medsft.memory.model import Arch


@dataclass(frozen=True)
class StepFlops:
    model: float  # what the step needs: the MFU numerator
    hardware: float  # what the kernels execute
    parts: dict[str, float]  # model FLOPs by part

    def per_token(self, tokens: int) -> tuple[float, float]:
        return self.model / tokens, self.hardware / tokens


def step_flops(arch: Arch, lengths: Sequence[int], *, lora_rank: int, lora_targets: Sequence[str] | None = None,
               head_positions: int | None = None, checkpointing: bool = True, causal_skip: bool = True,
               trained_head: bool = False) -> StepFlops:
    """FLOPs of one forward and backward over sequences of `lengths` tokens (one packed batch or several rows).
    `lora_targets`: the linear layers with an adapter (None: all of them); `head_positions`: where the LM head
    runs (None: every position but each row's last); `trained_head`: the head's weight gets a gradient too."""
    n = sum(lengths)
    squares = sum(t * t for t in lengths)
    shapes = arch.linear_shapes()
    targets = set(shapes) if lora_targets is None else set(lora_targets) & set(shapes)
    base = 2 * n * arch.layers * sum(i * o for i, o in shapes.values())
    lora = 2 * n * arch.layers * lora_rank * sum(i + o for name, (i, o) in shapes.items() if name in targets)
    dense = 4 * arch.heads * arch.head_dim * squares * arch.layers  # QKᵀ and AV over the whole square
    positions = head_positions if head_positions is not None else n - len(lengths)
    head = 2 * positions * arch.hidden * arch.vocab
    parts = {"base (forward, input gradient)": 2 * base, "lora (forward, backward)": 3 * lora,
             "attention (causal)": 3 * dense / 2, "lm head": (3 if trained_head else 2) * head}
    skip = 0.5 if causal_skip else 1.0
    hardware = (2 * base + 3 * lora + (1 + 2.5) * dense * skip + (3 if trained_head else 2) * head
                + (base + lora + dense * skip if checkpointing else 0.0))
    return StepFlops(sum(parts.values()), hardware, parts)
