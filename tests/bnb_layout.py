"""bitsandbytes' 4-bit CPU layouts, read from a model (the training and FSDP2 tests check none is packed)."""

from __future__ import annotations


def packed_4bit_layers(model) -> list[str]:
    """Names of 4-bit layers currently in bitsandbytes' CPU inference layout (should be none in training)."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)
            and getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False)]
