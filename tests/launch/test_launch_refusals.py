"""Malformed launch settings, through the real CLI in a hashed workspace: every way in (`medsft launch
--config_file`, `medsft preflight --accelerate-config`, `medsft train` under the variables a launcher exports)
refuses with one `error:` line, exit 2, before any worker starts, and nothing in the workspace changes."""

from __future__ import annotations

import pytest

from tests.cases import check_said_before_torch, recipe_file, recipe_with, run_case, snapshot
from tests.conftest import REPO, run_cli


def cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


ZERO2 = "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 2\n"
FP8_NEEDS = "mixed_precision: fp8 needs a CUDA GPU of compute capability 8.9"

# accelerate config text -> the text of its one error line (the same from `medsft launch` and `preflight`)
CONFIGS = {
    "no processes": (ZERO2.replace("num_processes: 2", "num_processes: 0"), "num_processes is 0, expected a whole"),
    "fractional processes": (ZERO2.replace("num_processes: 2", "num_processes: 2.5"), "num_processes is 2.5"),
    "processes as a word": (ZERO2.replace("num_processes: 2", "num_processes: two"), "num_processes is 'two'"),
    "fsdp_config as a list": ("distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  - fsdp_version: 2\n",
                              "fsdp_config is a list"),
    "deepspeed_config as a string": ("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config: zero3\n",
                                     "deepspeed_config is a str"),
    "unknown precision": (ZERO2 + "mixed_precision: fp32\n", "mixed_precision is 'fp32', expected one of no, fp16"),
    "precision true": (ZERO2 + "mixed_precision: true\n", "mixed_precision is True"),
    "zero stage 4": (ZERO2.replace("zero_stage: 2", "zero_stage: 4"), "deepspeed_config.zero_stage is 4"),
    "offload to a disk name": (ZERO2 + "  offload_param_device: ssd\n", "offload_param_device is 'ssd'"),
    "fp8 without FP8": (ZERO2 + "mixed_precision: fp8\n", FP8_NEEDS),
}
# tiny-cpu says bf16: false, which a config's fp8 would contradict; without it the config's precision is adopted
NO_PRECISION = ["--set", "training.bf16="]


def one_line_only(res) -> None:
    """Before any worker starts nothing else is printed: not accelerate's usage, not a worker's report."""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:"), res.stderr[-3000:]


def cases(table: dict) -> list:
    """The table's case names as parameters; the FP8 refusal only on a machine without a CUDA GPU."""
    fp8 = pytest.mark.skipif(cuda_here(), reason="on a CUDA machine FP8 may be available; the CPU refusal is tested")
    return [pytest.param(name, marks=fp8) if name == "fp8 without FP8" else name for name in table]


@pytest.mark.parametrize("name", cases(CONFIGS))
def test_medsft_launch_refuses_a_malformed_config(name, workspace):
    text = CONFIGS[name][1]
    args = ["launch", "--config_file", "acc.yaml", "train", str(REPO / "recipes" / "tiny-cpu.yaml"), *NO_PRECISION,
            "--set", "output.dir=run"]
    run_case(workspace, args, text, files={"acc.yaml": CONFIGS[name][0]})
    one_line_only(run_cli(*args, cwd=workspace))
    assert not (workspace / "run").exists()


@pytest.mark.parametrize("name", cases(CONFIGS))
def test_preflight_refuses_a_malformed_config(name, workspace):
    text = CONFIGS[name][1]
    run_case(workspace, ["preflight", str(REPO / "recipes" / "tiny-cpu.yaml"), *NO_PRECISION, "--gpu-memory", "8GiB",
                         "--accelerate-config", "acc.yaml"], text, files={"acc.yaml": CONFIGS[name][0]})


def test_unquoted_no_reads_as_no(workspace):
    """`mixed_precision: no` unquoted is YAML false: read as "no" (the recipe's bf16: false agrees with it)."""
    (workspace / "acc.yaml").write_text(ZERO2 + "mixed_precision: no\n")
    res = run_cli("preflight", REPO / "recipes" / "tiny-cpu.yaml", "--gpu-memory", "8GiB", "--accelerate-config",
                  "acc.yaml", cwd=workspace)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ZeRO-2 over 2 processes" in res.stdout


# accelerate launch options medsft launch passes on: (options, text of the one line)
OPTIONS = {
    "processes as a word": (["--num_processes", "two"], "--num_processes/--num-processes: invalid int value: 'two'"),
    "no processes": (["--num_processes", "0"], "--num_processes 0: at least 1 process"),
    "unknown precision option": (["--mixed_precision", "fp32"], "--mixed-precision: invalid choice: 'fp32'"),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_medsft_launch_refuses_a_bad_option(name, workspace):
    options, text = OPTIONS[name]
    args = ["launch", "--config_file", "acc.yaml", *options, "train", str(REPO / "recipes" / "tiny-cpu.yaml"),
            "--set", "output.dir=run"]
    run_case(workspace, args, text, files={"acc.yaml": ZERO2})
    one_line_only(run_cli(*args, cwd=workspace))


# variables a launcher exports (or a user exported by hand), under a plain `medsft train`
ENVIRONMENTS = {
    "no processes": ({"WORLD_SIZE": "0"}, "launch environment: WORLD_SIZE is '0'"),
    "fractional processes": ({"WORLD_SIZE": "2.5"}, "launch environment: WORLD_SIZE is '2.5'"),
    "negative local rank": ({"WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK is '-1'"),
    "rank beyond the world": ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK is '2', expected a whole number from 0 to 1"),
    "zero stage a word": ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "x"},
                          "ACCELERATE_DEEPSPEED_ZERO_STAGE is 'x'"),
    "fsdp version a word": ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "two"}, "FSDP_VERSION is 'two'"),
    "unknown precision": ({"ACCELERATE_MIXED_PRECISION": "fp32"}, "ACCELERATE_MIXED_PRECISION is 'fp32'"),
    "fp8 without FP8": ({"ACCELERATE_MIXED_PRECISION": "fp8"}, FP8_NEEDS),
}


@pytest.mark.parametrize("name", cases(ENVIRONMENTS))
def test_train_refuses_a_malformed_launch_environment(name, workspace):
    env, text = ENVIRONMENTS[name]
    recipe = recipe_with(training__bf16=None, output__dir="out")
    if name == "fp8 without FP8":  # FP8 needs torch to see the GPU
        run_case(workspace, ["train", "recipe.yaml"], text, env=env, files={"recipe.yaml": recipe_file(recipe)})
        return
    # a variable's form is checked before torch is imported (one run: the line is said once per launcher)
    (workspace / "recipe.yaml").write_bytes(recipe_file(recipe))
    before = snapshot(workspace)
    check_said_before_torch(workspace, ["train", "recipe.yaml"], text, env=env)
    assert snapshot(workspace) == before


@pytest.mark.skipif(cuda_here(), reason="this machine has a GPU; the test names GPUs a CPU machine does not have")
@pytest.mark.parametrize("device_map", [5, {"": 3}, {"model": "cuda:1", "lm_head": "cpu"}])
def test_device_map_naming_a_missing_gpu(device_map, workspace):
    """An earlier campaign's `model.device_map: 5` on a CPU: a traceback from transformers while loading."""
    recipe = recipe_with(model__device_map=device_map, output__dir="out")
    run_case(workspace, ["train", "recipe.yaml"], "but this machine has no CUDA GPU",
             files={"recipe.yaml": recipe_file(recipe)})
