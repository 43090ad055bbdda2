"""Every place medsft depends on a library's internals or works around its behaviour, in one module.

Why: these are the lines an upgrade of TRL, transformers or bitsandbytes can break silently. Keeping
them together, each with what it relies on, lets `tests/code/test_upstream_contracts.py` check the
contracts and fail with a clear message when an upgrade changes one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# ---------------------------------------------------------------- bitsandbytes: no hub lookup at import
KERNEL_HUB_LINE = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_CPU_OPS = "bitsandbytes.backends.cpu.ops"


class _CpuOpsWithoutHubKernel:
    """Meta-path finder that runs bitsandbytes' CPU backend module as if the `kernels` package were absent.

    bitsandbytes ≥ 0.49 (`bitsandbytes/backends/cpu/ops.py`), on an AVX512-BF16 CPU, calls
    `kernels.get_kernel("kernels-community/quantization-bitsandbytes")` while it is imported, and transformers
    ≥ 5.25 installs `kernels` with it: every import then asks the Hugging Face Hub (a network round trip, or with
    HF_HUB_OFFLINE=1 a 'Skipping publisher trust check' line from `kernels`) for a CPU inference kernel medsft does
    not use. Neither package has a setting for it. With `kernels` hidden from that one module, bitsandbytes takes
    its own fallback (its built-in CPU kernel, the path medsft is tested on) and logs one line, dropped below;
    transformers' own use of `kernels` (GPU hub kernels, medsft/model/kernels.py) is untouched."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != BNB_CPU_OPS:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader: Any = spec.loader  # this loader's own exec_module is replaced below
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            import sys

            # None in sys.modules makes an import fail (typeshed allows modules only)
            modules: dict[str, ModuleType | None] = sys.modules  # type: ignore[assignment]
            absent = "kernels" not in modules
            hidden = modules.get("kernels")
            modules["kernels"] = None  # `from kernels import …` raises ImportError
            try:
                run(module)
            finally:
                if absent:
                    modules.pop("kernels", None)
                else:
                    modules["kernels"] = hidden

        loader.exec_module = exec_module
        return spec


@cache
def keep_bitsandbytes_off_the_hub() -> None:
    """Before anything imports bitsandbytes: its CPU backend loads without a hub lookup (above), and the one line
    it logs for the missing hub kernel is dropped; its other records stay."""
    import logging
    import sys

    sys.meta_path.insert(0, _CpuOpsWithoutHubKernel())
    logging.getLogger(BNB_CPU_OPS).addFilter(lambda record: not str(record.msg).startswith(KERNEL_HUB_LINE))


# ---------------------------------------------------------------- PEFT: a deprecated transformers alias
CHECKPOINTING_ALIAS_WARNING = r"`is_gradient_checkpointing` is deprecated"


def quiet_peft_checkpointing_alias() -> None:
    """PEFT 0.21 (`PeftModel.__init__`: `getattr(model, "is_gradient_checkpointing", True)`) reads the alias
    transformers ≥ 5.25 deprecated for `is_activation_checkpointing`, so every training prints a FutureWarning
    that no call of medsft's can avoid. Only that warning is ignored."""
    import warnings

    warnings.filterwarnings("ignore", message=CHECKPOINTING_ALIAS_WARNING, category=FutureWarning)


# ---------------------------------------------------------------- bitsandbytes: CPU 4-bit layout


def keep_4bit_trainable_layout(model: Any) -> int:
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
                # the weight is a Params4bit (bitsandbytes leaves it annotated as nn.Linear's Tensor)
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(  # type: ignore[attr-defined]
                    module.weight.data, state)
            seen += 1
    return seen


# ---------------------------------------------------------------- TRL: chat templates


def trl_chat_template(attribute: str) -> str:
    """A chat template TRL ships (trl/chat_templates/*.jinja), read through the module attribute TRL itself
    reads it into (`trl.chat_template_utils.llama3_chat_template`, `llama3_training_chat_template`). These
    are module globals, not documented API: medsft names TRL's Llama 3 template and its training variant
    (with `{% generation %}` markers) instead of keeping copies (medsft/model/chat_templates.py)."""
    import trl.chat_template_utils as templates

    return getattr(templates, attribute)


def has_generation_markers(chat_template: str | None) -> bool:
    from trl.chat_template_utils import has_generation_markers as check

    return bool(chat_template and check(chat_template))


def get_training_chat_template(tokenizer: Any) -> str | None:
    """TRL's patched template with `{% generation %}` markers for the templates TRL knows (ValueError otherwise);
    the one SFTTrainer swaps in for `assistant_only_loss=True`."""
    from trl.chat_template_utils import get_training_chat_template as patched

    return patched(tokenizer)


def is_stop_token_trained(tokenizer: Any, chat_template: str | None) -> bool:
    """TRL's check that an assistant turn's end-of-turn token falls inside the assistant mask (SFTTrainer only
    warns; medsft refuses, as a model that never learns to stop is the notebook's failure again)."""
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    return is_chat_template_stop_token_trained(tokenizer, chat_template=chat_template)


def expose_lm_head_bias(model: Any) -> int:
    """Let TRL's fused LM head read an output layer that PEFT trains token rows of; returns the layers fixed.

    TRL 1.16 computes the loss through its fused LM head (`trl/trainer/utils.py`, `add_fused_lm_head`), which
    reads `lm_head.weight` and `lm_head.bias` from `get_output_embeddings()`. With `trainable_token_indices`
    (medsft/model/load.py `trainable_tokens`), PEFT 0.21 wraps the output layer (tied to the embedding, or named
    itself) in a `TrainableTokensWrapper`, which answers `weight` with the merged weight (trained rows
    included, differentiable) but has no `bias`: the first step fails with AttributeError. The wrapper gets
    the wrapped layer's `bias` (None for every supported model) as a plain attribute: no parameter is added,
    nothing changes in the state dict or in the forward."""
    from peft.utils.other import TrainableTokensWrapper

    fixed = 0
    for module in model.modules():
        if isinstance(module, TrainableTokensWrapper) and "bias" not in module.__dict__:
            layer = module.original_module
            if hasattr(layer, "in_features"):  # a Linear output layer, not the input embedding
                object.__setattr__(module, "bias", getattr(layer, "bias", None))
                fixed += 1
    return fixed


# ---------------------------------------------------------------- TRL: the evaluation loss


@contextmanager
def nll_loss(trainer: Any) -> Iterator[None]:
    """Evaluate with the NLL whatever the training loss. DFT weights each token by the model's own
    probability and can rise while the model improves, so eval_loss is the NLL per completion token.
    Relies on TRL 1.16's `SFTTrainer.compute_loss` reading `self.args.loss_type` on every call (a
    behavioural contract test trains with DFT and checks eval_loss against an NLL computed by hand)."""
    loss_type, trainer.args.loss_type = trainer.args.loss_type, "nll"
    try:
        yield
    finally:
        trainer.args.loss_type = loss_type


# ---------------------------------------------------------------- accelerate: one-process launches on SIGTERM
def patient_single_process_shutdown(seconds: float) -> None:
    """Give a one-process launch's worker `seconds` to finish after SIGTERM, as torch elastic gives a multi-process
    one (TORCH_ELASTIC_SHUTDOWN_TIMEOUT).

    accelerate ≥ 1.16 (`commands/launch.py`: `_run_subprocess` → `_terminate_process_tree`), for a launch of one
    process (`single_gpu.yaml`), passes the launcher's SIGTERM on to the worker and SIGKILLs it 5 s later, a
    fixed time. medsft's worker answers SIGTERM with a checkpoint (medsft/train/preemption.py), which takes
    longer for any real model: the checkpoint was lost and the resume started earlier than the user was told.
    Here the worker gets SIGTERM first and up to `seconds` to exit; accelerate's own shutdown then handles what
    is left (a worker's own children)."""
    import accelerate.commands.launch as launch
    import psutil

    original = launch._terminate_process_tree
    if getattr(original, "medsft_patient", False):
        return

    def terminate(process: psutil.Process) -> None:
        try:
            process.terminate()
            process.wait(timeout=seconds)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass
        original(process)

    patched: Any = terminate  # carries the marker read above
    patched.medsft_patient = True
    launch._terminate_process_tree = patched


# ---------------------------------------------------------------- torch.distributed: gloo at interpreter exit


@cache
def destroy_process_group_at_exit() -> None:
    """Destroy the default process group while the interpreter is still alive (atexit), once per process.

    torch ≤ 2.13: a process that exits with a gloo group still alive can abort (SIGABRT, no traceback) in
    interpreter finalization: gloo's worker threads still hold finished work whose tensors reach back into
    Python (pytorch/pytorch#179291 proposed this very atexit hook inside `init_process_group`, not merged).
    Seen as "terminate called without an active exception" in a worker that had finished: after data-parallel
    generation (`gather_object`) and after a ZeRO-3 training on gloo. Registered by every multi-process
    training and generation."""
    import atexit

    atexit.register(_destroy_default_group)


def settle_process_groups() -> bool:
    """End a multi-process run that finished on every rank: wait for every collective still in flight, then
    destroy the groups. Every rank calls it at the same point. True when there were peers (the caller then ends
    the process without interpreter finalization: commands.common.finish).

    torch ≤ 2.13 with gloo: a collective started with `async_op=True` and never waited on (DeepSpeed ZeRO-3's
    parameter prefetch) leaves its tensors in a gloo worker thread, which drops them under the GIL after the
    work completes; if that happens while the interpreter finalizes, the thread is ended by `pthread_exit` and
    the unwind ends in std::terminate: SIGABRT, "terminate called without an active exception", after a run
    that had finished (1 in 6 CI runs). `destroy_process_group` does not stop those threads while DeepSpeed
    still holds the group (gloo's `shutdown` does nothing). A gloo barrier completes only after all earlier
    work of its group, so no peer waits on this rank any more once it returns; skipping finalization then
    leaves the worker threads nothing to race."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _world

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return False  # one process: nothing in flight waits on a peer, and the caller may train again in-process
    for group in list(_world.pg_map):  # created in the same order on every rank
        if dist.get_backend(group) == "gloo":
            dist.barrier(group=group)
    dist.destroy_process_group()
    return True


def _destroy_default_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
