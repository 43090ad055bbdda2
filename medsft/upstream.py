"""Every place medsft depends on a library's internals or works around its behaviour, in one module.

Why: these are the lines an upgrade of TRL, transformers or bitsandbytes can break silently. Keeping
them together, each with what it relies on, lets `tests/unit/test_upstream_contracts.py` check the
contracts and fail with a clear message when an upgrade changes one.
"""

from __future__ import annotations


# ---------------------------------------------------------------- bitsandbytes: CPU 4-bit layout


def keep_4bit_trainable_layout(model) -> int:
    """Keep a model that is being trained out of bitsandbytes' inference-only CPU layout; returns the
    number of 4-bit layers seen.

    bitsandbytes ≥ 0.49 (`bitsandbytes/nn/modules.py`, `Linear4bit.forward`): on a CPU with AVX512-BF16,
    a `Linear4bit` called in eval mode without grad repacks its weight for a fused inference kernel
    (`_convert_weight_packed_for_cpu`), and nothing converts it back when training resumes. The next
    training step then takes the inference path (`gemv_4bit` + an in-place bias add: "a view of a leaf
    Variable that requires grad is being used in an in-place operation"), and under ZeRO-3, where the
    quant storage is a float dtype, saving asserts in `_convert_weight_packed_for_cpu_inverse`. Every
    evaluation inside training triggers it. There is no documented switch; the decision reads the
    per-layer attribute `support_avx512bf16_for_cpu` (set from `has_avx512bf16()` in `__init__`), so
    it is turned off on the layers of a model medsft trains, and any layer already packed is unpacked.
    Inference (`medsft infer`/`eval`) loads its own model and keeps the fast layout.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    seen = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state)
            seen += 1
    return seen


def packed_4bit_layers(model) -> list[str]:
    """Names of 4-bit layers currently in bitsandbytes' CPU inference layout (should be none in training)."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)
            and getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False)]
