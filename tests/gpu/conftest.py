"""GPU tests: real architectures with random weights (medsft/memory/architectures/qwen3-0.6b.json, bf16, built on
the GPU once per session), offline. Marked `gpu`; collected everywhere (so they stay importable) and skipped
unless CUDA is available.

`MEDSFT_GPU_TESTS_ON_CPU=1` runs them on a machine without CUDA for a logic check only: the built-in tiny model
(builtin:tiny-qwen2, fp32) with the tiny-cpu recipe's settings; what cannot run on a CPU (flash-attn,
Liger, FSDP2 through accelerate) skips there with its reason, and numbers that only mean something on a
GPU (memory peaks, attention timings) are recorded but not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

ON_CPU = os.environ.get("MEDSFT_GPU_TESTS_ON_CPU") == "1"
ARCHITECTURE = "qwen3-0.6b"  # the smallest real architecture medsft ships: minutes, not hours
TINY_RECIPE = REPO / "recipes" / "tiny-cpu.yaml"


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA setup is "no GPU" here, not a collection error
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available() or ON_CPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (MEDSFT_GPU_TESTS_ON_CPU=1 runs a logic check on the CPU)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@dataclass(frozen=True)
class Target:
    """What the tests train: a random-weight real architecture on the GPU, or the tiny model on the CPU."""

    cuda: bool
    model: str  # model.name
    label: str
    dtype: str

    def overrides(self, out, steps: int, *extra: str, save_every: int | None = None) -> list[str]:
        """`--set` values: the tiny-cpu recipe, this target's model, `steps` optimizer steps logged one by one,
        no evaluation, checkpoints every `save_every` steps (none without)."""
        sets = [f"output.dir={out}", f"training.max_steps={steps}", "training.logging_steps=1",
                "training.eval_strategy=no"]
        sets += [f"training.save_steps={save_every}"] if save_every else ["training.save_strategy=no"]
        if self.cuda:  # bf16 as on a GPU; an lr for a random 0.6B model (the tiny recipe's 2e-3 is for 2 layers)
            sets += [f"model.name={self.model}", "model.dtype=bfloat16", "training.bf16=true",
                     "training.learning_rate=1e-3"]
        return sets + list(extra)

    def tolerance(self, fp32: float, bf16: float) -> float:
        return bf16 if self.cuda else fp32


@pytest.fixture(scope="session")
def target(tmp_path_factory, medsft_env) -> Target:
    if cuda_available():
        root = Path(os.environ.get("MEDSFT_BENCH_MODELS") or tmp_path_factory.mktemp("models"))
        model = bench_common().random_model_dir(REPO / "medsft" / "memory" / "architectures" / f"{ARCHITECTURE}.json", root)
        return Target(True, str(model), ARCHITECTURE, "bfloat16")
    from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

    builtin_model_dir(TINY_MODEL)
    return Target(False, TINY_MODEL, "tiny-qwen2", "float32")


def cpu_only_skip(target: Target, why: str) -> None:
    if not target.cuda:
        pytest.skip(f"CPU logic check: {why}")


def medsft_cli(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "medsft", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def train_cli(target: Target, out, steps: int, *extra: str, save_every: int | None = None, launch: list[str] = (),
              timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m medsft [launch …] train recipes/tiny-cpu.yaml --set …` as a user runs it."""
    sets = [x for s in target.overrides(out, steps, *extra, save_every=save_every) for x in ("--set", s)]
    head = ["launch", *launch] if launch else []
    return medsft_cli(*head, "train", TINY_RECIPE, *sets, timeout=timeout)


def logged_losses(out) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (the last record of a step wins: a resumed run repeats some)."""
    losses = {}
    for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "train_runtime" not in record:
            losses[record["step"]] = record["loss"]
    return losses


def load_base(target: Target, recipe_yaml: Path | None = None):
    """The base model as a user reloads it for an adapter: plain transformers, 4-bit NF4 as trained."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from medsft.model.load import resolve_model_path

    dtype = getattr(torch, target.dtype)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(target.model), quantization_config=bnb, dtype=dtype,
                                                device_map={"": 0} if target.cuda else None)


def check_adapter_reloads(target: Target, adapter: Path, rows: int = 8) -> dict:
    """Plain PEFT reloads the adapter: every saved tensor is complete (ZeRO-3/FSDP shards gathered), the
    loaded LoRA weights are the saved ones, lora_B moved from zero, and the adapter lowers the NLL of
    training rows against the same base with the adapter disabled (it carries what was learned)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from medsft.model.builtin.tiny_data import generate
    from medsft.upstream import keep_4bit_trainable_layout

    files = sorted(p.name for p in adapter.iterdir())
    for name in ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "recipe.yaml"):
        assert name in files, (name, files)
    saved = load_file(adapter / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text())
    layers = json.loads((Path(load_base_path(target)) / "config.json").read_text())["num_hidden_layers"]
    assert len(saved) == layers * 7 * 2, f"{len(saved)} tensors saved, expected {layers} layers × 7 linears × A, B"
    assert all(t.numel() > 0 for t in saved.values()), "an empty tensor: a ZeRO-3/FSDP shard was saved, not gathered"
    assert all(config["r"] in t.shape for t in saved.values())
    moved = max(t.float().abs().max().item() for k, t in saved.items() if "lora_B" in k)
    assert moved > 0, "lora_B is still zero: nothing was trained"

    base = load_base(target)
    model = PeftModel.from_pretrained(base, adapter).eval()
    keep_4bit_trainable_layout(model)  # the layout training computed in (CPU: bitsandbytes' packed inference kernel)
    loaded = {k.replace(".default.", "."): v for k, v in model.state_dict().items() if "lora_" in k}
    assert sorted(loaded) == sorted(saved), "the model PEFT built has other LoRA weights than the adapter saved"
    for key, tensor in saved.items():
        assert torch.equal(loaded[key].cpu().to(tensor.dtype), tensor), key

    tok = AutoTokenizer.from_pretrained(adapter)  # the tokenizer as trained, saved beside the adapter
    device = next(model.parameters()).device
    nll = {"adapter": 0.0, "base": 0.0}
    for row in generate(rows):
        prompt = tok.apply_chat_template([{"role": "user", "content": row["Question"]}], tokenize=False,
                                         add_generation_prompt=True)
        answer = f"<think>{row['Complex_CoT']}</think>{row['Response']}<|im_end|>"
        p_ids, a_ids = tok(prompt)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids], device=device)
        labels = torch.tensor([[-100] * len(p_ids) + a_ids], device=device)
        with torch.no_grad():
            nll["adapter"] += model(input_ids=ids, labels=labels).loss.item() / rows
            with model.disable_adapter():
                nll["base"] += model(input_ids=ids, labels=labels).loss.item() / rows
    print(f"reloaded adapter {adapter}: NLL of {rows} rows {nll['base']:.3f} (base) -> {nll['adapter']:.3f} (adapter)")
    assert nll["adapter"] < nll["base"] - 0.1, nll
    del model, base
    free_cuda()
    return nll


def load_base_path(target: Target) -> str:
    from medsft.model.load import resolve_model_path

    return resolve_model_path(target.model)


def free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def bench_common():
    """bench/common.py: results_dir() ($MEDSFT_BENCH_RESULTS, else bench/results), save(), gpu_environment(),
    random_model_dir() — shared with bench/gpu.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("medsft_bench_common", REPO / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_gpu():
    """bench/gpu.py as a module (its recipe for one measured run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("medsft_bench_gpu", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
