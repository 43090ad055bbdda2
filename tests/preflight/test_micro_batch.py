"""`per_device_train_batch_size: auto`: the largest micro-batch the memory model accepts (brute force over
every size, calling the memory model directly), accumulation that keeps the rows per optimizer step on any
launch, the same optimizer steps on 1 and 8 GPUs, the resolved values in manifest and recipe.yaml, and
the bad inputs through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from medsft.launch.detect import from_accelerate_config, from_env
from medsft.memory.micro_batch import Memory
from medsft.memory.model import GiB, estimate
from medsft.memory.preflight import verdict
from medsft.recipe.files import load_recipe
from medsft.train.runspec import resolve
from tests.cases import recipe_file, recipe_with, run_case
from tests.conftest import REPO, run_cli, run_cli_here

CONFIGS = REPO / "accelerate_configs"
LLAMA8B = REPO / "recipes" / "llama3.1-8b.yaml"
MODELS = {"llama3.1-8b": "meta-llama/Llama-3.1-8B-Instruct", "qwen3-0.6b": "Qwen/Qwen3-0.6B",
          "llama3.1-70b": "meta-llama/Llama-3.1-70B-Instruct"}


def launch_of(name: str):
    if name == "1 gpu":
        return from_env({}, cuda=True, num_gpus=1)
    config, n = name.split(" x")
    return from_accelerate_config(str(CONFIGS / f"{config}.yaml"), int(n))


def auto_spec(model: str, launch: str, gib: float, *overrides: str):
    recipe = load_recipe(LLAMA8B, [f"model.name={MODELS[model]}", "training.per_device_train_batch_size=auto",
                                   "training.gradient_accumulation_steps=auto", *overrides])
    return resolve(recipe, launch_of(launch), "off", memory=Memory(gib * GiB, "test"))


def arch_of(model: str):
    from medsft.memory.micro_batch import architecture

    return architecture(load_recipe(LLAMA8B, [f"model.name={MODELS[model]}"]).model)


TABLES = [  # (architecture, launch, device GiB, overrides)
    ("llama3.1-8b", "1 gpu", 24, ()),
    ("llama3.1-8b", "1 gpu", 80, ()),
    ("llama3.1-8b", "zero3 x8", 80, ()),
    ("llama3.1-8b", "ddp x4", 40, ()),
    ("llama3.1-8b", "fsdp2 x8", 24, ("training.max_length=2048",)),
    ("qwen3-0.6b", "1 gpu", 24, ()),
    ("qwen3-0.6b", "zero2 x2", 16, ("training.activation_checkpointing=false",)),
    ("llama3.1-70b", "zero3 x8", 80, ("training.global_batch_size=64",)),
]


@pytest.mark.parametrize("model,launch,gib,overrides", TABLES)
def test_chosen_micro_batch_is_the_largest_the_memory_model_accepts(model, launch, gib, overrides):
    spec = auto_spec(model, launch, gib, *overrides)
    world = spec.launch.world_size
    rows = spec.recipe.training.global_batch_size or 128
    arch = arch_of(model)
    accepted = [m for m in range(1, rows // world + 1) if (rows // world) % m == 0
                and verdict(estimate(arch, spec.memory_setup().replace(micro_batch=m)).total, gib * GiB) == "fits"]
    assert accepted, "table chosen so that something fits"
    assert spec.micro_batch == max(accepted)
    assert spec.grad_accum * spec.micro_batch * world == rows
    assert spec.sft_kwargs()["per_device_train_batch_size"] == spec.micro_batch
    assert spec.manifest()["batch"]["global_batch"] == rows


def test_more_memory_or_sharding_gives_a_larger_micro_batch_and_less_accumulation():
    small, large = auto_spec("llama3.1-8b", "1 gpu", 24), auto_spec("llama3.1-8b", "1 gpu", 80)
    assert small.micro_batch < large.micro_batch and small.grad_accum > large.grad_accum
    assert small.batch.next_size is not None and small.batch.next_total > 0.85 * 24 * GiB


def optimizer_steps_per_epoch(rows: int, spec) -> int:
    """transformers' count: each rank's sampler pads to ceil(rows / world); batches of micro-batch rows;
    an update every `accumulation` batches, a partial last one included."""
    batches = math.ceil(math.ceil(rows / spec.launch.world_size) / spec.micro_batch)
    return batches // spec.grad_accum + int(batches % spec.grad_accum > 0)


def test_one_and_eight_gpus_take_the_same_optimizer_steps():
    specs = [auto_spec("llama3.1-8b", "1 gpu", 80), auto_spec("llama3.1-8b", "zero3 x8", 80),
             auto_spec("llama3.1-8b", "ddp x8", 24), auto_spec("llama3.1-8b", "1 gpu", 24)]
    assert len({(s.micro_batch, s.grad_accum, s.launch.world_size) for s in specs}) == len(specs)
    for rows in (19237, 25371, 1280):
        assert len({optimizer_steps_per_epoch(rows, s) for s in specs}) == 1, rows


def test_fixed_accumulation_without_a_global_batch_is_kept():
    recipe = load_recipe(LLAMA8B, ["training.per_device_train_batch_size=auto"])  # the recipe says 4
    spec = resolve(recipe, launch_of("1 gpu"), "off", memory=Memory(80 * GiB, "test"))
    assert spec.grad_accum == 4
    arch = arch_of("llama3.1-8b")
    fits = [m for m in range(1, 64) if verdict(estimate(arch, spec.memory_setup().replace(micro_batch=m)).total,
                                               80 * GiB) == "fits"]
    assert spec.micro_batch == max(fits)


def test_fixed_numbers_are_unchanged_and_a_resume_keeps_its_micro_batch():
    spec = resolve(load_recipe(LLAMA8B), launch_of("1 gpu"), "off")
    assert (spec.micro_batch, spec.grad_accum, spec.batch.auto) == (4, 4, False)
    recipe = load_recipe(LLAMA8B, ["training.per_device_train_batch_size=auto",
                                   "training.gradient_accumulation_steps=auto"])
    resumed = resolve(recipe, launch_of("1 gpu"), "off", memory=Memory(80 * GiB, "test"), previous_micro_batch=2)
    assert (resumed.micro_batch, resumed.grad_accum) == (2, 64)


def test_the_preflight_prints_the_choice():
    res = run_cli_here("preflight", LLAMA8B, "--set", "training.per_device_train_batch_size=auto", "--set",
                  "training.gradient_accumulation_steps=auto", "--gpu-memory", "24GiB")
    assert res.returncode == 0, res.stderr[-2000:]
    spec = auto_spec("llama3.1-8b", "1 gpu", 24)
    assert f"micro-batch: {spec.micro_batch} (auto: largest that fits 85% of 24.0 GiB" in res.stdout
    assert f"next size {spec.batch.next_size} would not fit" in res.stdout
    assert f"gradient accumulation {spec.grad_accum}: {spec.micro_batch} × {spec.grad_accum} × 1 process = 128" \
        in res.stdout


@pytest.mark.slow
def test_tiny_cpu_trains_with_auto_and_records_the_resolved_values(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", REPO / "recipes" / "tiny-cpu.yaml", "--set", "training.per_device_train_batch_size=auto",
                  "--set", f"output.dir={out}", "--set", "training.max_steps=2", "--set", "training.eval_strategy=no",
                  "--set", "training.save_strategy=no", env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no GPU to measure" in res.stdout + res.stderr
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    batch = manifest["batch"]
    assert (batch["micro_batch"], batch["grad_accum"], batch["global_batch"]) == (8, 16, 128)
    saved = yaml.safe_load((out / "adapter" / "recipe.yaml").read_text())["training"]
    assert (saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"],
            saved["global_batch_size"]) == (8, 16, 128)
    assert manifest["train"]["global_step"] == 2


LLAMA_TEXT = LLAMA8B.read_text()
PREFLIGHT_CASES = {  # name -> (extra args, expected text in the one error line)
    "fixed accumulation cannot keep the global batch": (
        ["--set", "training.global_batch_size=128", "--set", "training.gradient_accumulation_steps=3"],
        "cannot keep 128 rows per optimizer step"),
    "fixed accumulation needs a micro-batch that does not fit": (
        ["--set", "training.global_batch_size=128", "--set", "training.gradient_accumulation_steps=2"],
        "micro-batch 64 won't fit"),
    "global batch not divisible by the processes": (
        ["--set", "training.global_batch_size=100", "--set", "training.gradient_accumulation_steps=auto",
         "--accelerate-config", "ACCEL/zero3.yaml", "--num-gpus", "8"], "is not divisible by 8 processes"),
    "nothing fits": (["--set", "model.name=meta-llama/Llama-3.1-70B-Instruct", "--set",
                      "training.gradient_accumulation_steps=auto"], "even micro-batch 1 won't fit"),
    "misspelt auto": (["--set", "training.per_device_train_batch_size=atuo"], "must be int or auto"),
    "global batch zero": (["--set", "training.global_batch_size=0"], "global_batch_size must be a positive integer"),
}


@pytest.mark.parametrize("name", PREFLIGHT_CASES)
def test_bad_auto_input_is_one_line(name, workspace):  # noqa: F811
    extra, expected = PREFLIGHT_CASES[name]
    extra = [str(CONFIGS) + a.removeprefix("ACCEL") if a.startswith("ACCEL") else a for a in extra]
    run_case(workspace, ["preflight", "recipe.yaml", "--gpu-memory", "24GiB", "--set",
                         "training.per_device_train_batch_size=auto", *extra], expected,
             files={"recipe.yaml": LLAMA_TEXT})


TRAIN_CASES = {  # through `medsft train` on the CPU: refused before anything is written
    "fixed micro-batch does not divide the global batch": (
        recipe_with(training__per_device_train_batch_size=3, training__gradient_accumulation_steps="auto"),
        "not divisible by 1 process × per_device_train_batch_size 3"),
    "fixed numbers contradict the global batch": (
        recipe_with(training__gradient_accumulation_steps=4, training__global_batch_size=128),
        "global_batch_size 128 ≠ per_device_train_batch_size 8 × gradient_accumulation_steps 4"),
    "auto with an accumulation that cannot keep it": (
        recipe_with(training__per_device_train_batch_size="auto", training__gradient_accumulation_steps=3,
                    training__global_batch_size=128), "cannot keep 128 rows per optimizer step"),
}


@pytest.mark.parametrize("name", TRAIN_CASES)
def test_bad_auto_training_input_is_one_line(name, workspace):  # noqa: F811
    recipe, expected = TRAIN_CASES[name]
    recipe = {**recipe, "output": {"dir": "out"}}
    run_case(workspace, ["train", "recipe.yaml"], expected, files={"recipe.yaml": recipe_file(recipe)})
