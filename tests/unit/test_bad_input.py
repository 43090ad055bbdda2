"""Bad recipes and bad data: one line `error: <where>: <what> — <fix>`, exit 2, no traceback, nothing written.

Table-driven and run through the real CLI (`python -m medsft train`), as a user meets them.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO, run_cli

BASE = yaml.safe_load((REPO / "recipes" / "tiny-cpu.yaml").read_text())


def recipe_with(**changes) -> dict:
    """tiny-cpu with `section__key=value` changes (value None deletes the key)."""
    out = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        out.setdefault(section, {})[key] = value
    return out


# name -> (recipe text or dict, extra CLI args, env, files to create {name: bytes}, expected text in the error)
RECIPE_CASES = {
    "malformed yaml": ("model: [unclosed\n", [], {}, {}, "malformed YAML at line"),
    "not a mapping": ("- a\n- b\n", [], {}, {}, "must be a mapping"),
    "empty recipe": ("", [], {}, {}, "recipe is empty"),
    "misspelt section": ({**BASE, "trainig": {}}, [], {}, {}, "did you mean 'training'"),
    "misspelt model key": (recipe_with(model__nme="x"), [], {}, {}, "did you mean 'name'"),
    "misspelt training key": (recipe_with(training__learning_rat=1e-4), [], {}, {}, "did you mean 'learning_rate'"),
    "rank not a number": (recipe_with(lora__rank="sixteen"), [], {}, {}, "lora.rank must be an integer"),
    "rank zero": (recipe_with(lora__rank=0), [], {}, {}, "lora.rank must be a positive integer"),
    "dropout out of range": (recipe_with(lora__dropout=1.5), [], {}, {}, "lora.dropout must be in [0, 1)"),
    "negative learning rate": (recipe_with(training__learning_rate=-1), [], {}, {}, "must be positive"),
    "batch size wrong type": (recipe_with(training__per_device_train_batch_size="eight"), [], {}, {},
                              "per_device_train_batch_size must be int"),
    "unknown loss": (recipe_with(training__loss_type="dfft"), [], {}, {}, "loss_type must be one of nll, dft"),
    "bits 3": (recipe_with(quantization__bits=3), [], {}, {}, "quantization.bits must be 4, 8 or null"),
    "bad dtype": (recipe_with(model__dtype="bf16"), [], {}, {}, "model.dtype must be one of"),
    "bad attention": (recipe_with(model__attn_implementation="flash"), [], {}, {}, "attn_implementation must be"),
    "bad kernels": (recipe_with(model__kernels="triton"), [], {}, {}, "model.kernels must be one of"),
    "missing data file": (recipe_with(data__source="missing.json"), [], {}, {}, "not found"),
    "csv data file": (recipe_with(data__source="rows.csv"), [], {}, {"rows.csv": b"a,b\n"}, "unsupported file type"),
    "missing local model": (recipe_with(model__name="./no-such-model"), [], {}, {}, "looks like a local path"),
    "output_dir in training": (recipe_with(training__output_dir="x"), [], {}, {}, "use output.dir instead"),
    "liger in training": (recipe_with(training__use_liger_kernel=True), [], {}, {}, "use model.kernels"),
    "fractions leave nothing": (recipe_with(data__val_fraction=0.6, data__test_fraction=0.5), [], {}, {},
                                "leave no training rows"),
    "set without equals": (BASE, ["--set", "training.learning_rate"], {}, {}, "is not key=value"),
    "set unknown section": (BASE, ["--set", "lorra.rank=4"], {}, {}, "did you mean 'lora'"),
    "set wrong type": (BASE, ["--set", "lora.rank=big"], {}, {}, "lora.rank must be an integer"),
    "output dir is a file": (None, [], {}, {"out": b"x"}, "is a file"),
    "8-bit under ZeRO-3": (recipe_with(quantization__bits=8), [],
                           {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {},
                           "ZeRO-3 with quantization.bits: 8"),
    "device_map auto under DDP": (recipe_with(model__device_map="auto"), [],
                                  {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, {}, "tensors on different"),
    "output dir inside a file": (None, [], {}, {"afile": b"x"}, "which is a file"),
    "epochs zero": (recipe_with(training__num_train_epochs=0), [], {}, {}, "num_train_epochs must be positive"),
    "alpha negative": (recipe_with(lora__alpha=-8), [], {}, {}, "lora.alpha must be positive"),
    "max_rows zero": (recipe_with(data__max_rows=0), [], {}, {}, "data.max_rows must be positive"),
    "bad compute dtype": (recipe_with(quantization__compute_dtype="fp8"), [], {}, {}, "compute_dtype must be one of"),
    "targets not a list": (recipe_with(lora__target_modules=42), [], {}, {}, "lora.target_modules must be"),
    "bad_fraction above one": (recipe_with(data__max_bad_fraction=2), [], {}, {}, "max_bad_fraction must be in"),
    "bf16 and fp16": (recipe_with(training__bf16=True, training__fp16=True), [], {}, {}, "both on"),
    "resume path not a checkpoint": (BASE, ["--resume", "nowhere"], {}, {}, "not a complete checkpoint"),
}

# Cases that get past the recipe and fail on the data or the model (torch is imported for these).
ROWS_OK = [{"Question": f"q{i}?", "Complex_CoT": f"because {i}", "Response": f"answer {i}"} for i in range(40)]
DATA_CASES = {
    "empty dataset": (b"[]", {}, "no rows"),
    "rows missing a column": (json.dumps([{"Question": "q", "Response": "r"}] * 20).encode(), {},
                              "column 'Complex_CoT' not found"),
    "rows with wrong types": (json.dumps(ROWS_OK[:30] + [{"Question": "q", "Complex_CoT": "c", "Response": ""}] * 10)
                              .encode(), {}, "10 of 40 rows are malformed"),
    "undecodable bytes": (b'[{"Question": "caf\xe9", "Complex_CoT": "c", "Response": "r"}]', {}, "not valid UTF-8"),
    "too few rows": (json.dumps(ROWS_OK[:5]).encode(), {}, "at least 10"),
    "max_length below every prompt": (json.dumps(ROWS_OK).encode(), {"training__max_length": 8},
                                      "longer than training.max_length=8"),
}


def check_one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert expected in errors[0], errors[0]
    assert " — " in errors[0], f"no fix given: {errors[0]}"


@pytest.mark.parametrize("name", RECIPE_CASES)
def test_bad_recipe(name, tmp_path):
    recipe, extra, env, files, expected = RECIPE_CASES[name]
    for fname, content in files.items():
        (tmp_path / fname).write_bytes(content)
    out = tmp_path / "out"
    if recipe is None:  # output dir that is a file, or inside one
        recipe = recipe_with(output__dir=str(out if "afile" not in files else tmp_path / "afile" / "run"))
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    args = ["train", path, *extra]
    if not name.startswith("output dir"):
        args += ["--set", f"output.dir={out}"] if "set " not in name else []
    res = run_cli(*args, cwd=tmp_path, env=env, timeout=60)
    check_one_line_error(res, expected)
    assert res.stderr.count("\n") == 1, f"more than one line on stderr: {res.stderr}"
    if not name.startswith("output dir"):
        assert not out.exists(), "a failed run wrote output"


@pytest.mark.parametrize("name", DATA_CASES)
def test_bad_data(name, tmp_path):
    content, changes, expected = DATA_CASES[name]
    (tmp_path / "rows.json").write_bytes(content)
    out = tmp_path / "out"
    recipe = recipe_with(data__source="rows.json", output__dir=str(out), **changes)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = run_cli("train", "recipe.yaml", cwd=tmp_path, timeout=300)
    check_one_line_error(res, expected)
    assert not out.exists(), "a failed run wrote output"


def test_recipe_file_not_found(tmp_path):
    res = run_cli("train", tmp_path / "nope.yaml", timeout=60)
    check_one_line_error(res, "recipe file not found")


def test_hub_dataset_offline(tmp_path):
    recipe = recipe_with(data__source="FreedomIntelligence/medical-o1-reasoning-SFT", output__dir=str(tmp_path / "o"))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = run_cli("train", tmp_path / "r.yaml", timeout=300)
    check_one_line_error(res, "is not available offline")


def test_base_model_offline(tmp_path):
    recipe = recipe_with(model__name="example-org/not-downloaded-7b", output__dir=str(tmp_path / "o"))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = run_cli("train", tmp_path / "r.yaml", timeout=300)
    check_one_line_error(res, "is not available offline")


def test_lora_targets_match_nothing(tmp_path):
    recipe = recipe_with(lora__target_modules=["no_such_proj"], output__dir=str(tmp_path / "o"))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = run_cli("train", tmp_path / "r.yaml", timeout=300)
    check_one_line_error(res, "match no module")


# Other commands' bad input: (args, expected). Paths are relative to a fresh temporary directory.
COMMAND_CASES = {
    "preflight: accelerate config missing": (["preflight", REPO / "recipes" / "tiny-cpu.yaml", "--gpu-memory", "8GiB",
                                              "--accelerate-config", "nope.yaml"], "accelerate config 'nope.yaml' not found"),
    "preflight: memory not a size": (["preflight", REPO / "recipes" / "tiny-cpu.yaml", "--gpu-memory", "lots"],
                                     "is not a size"),
    "infer: adapter dir missing": (["infer", "no-such-dir", "--question", "q"], "not found"),
    "infer: no adapter files": (["infer", ".", "--question", "q"], "has no adapter_config.json"),
    "eval: adapter dir missing": (["eval", "no-such-dir"], "not found"),
    "merge: adapter dir missing": (["merge", "no-such-dir", "out"], "not found"),
}


@pytest.mark.parametrize("name", COMMAND_CASES)
def test_bad_command_input(name, tmp_path):
    args, expected = COMMAND_CASES[name]
    res = run_cli(*args, cwd=tmp_path, timeout=120)
    check_one_line_error(res, expected)


def test_gpu_only_features_fall_back_on_cpu(tmp_path):
    """flash-attention-2 and Liger asked for on a CPU: not errors but notices, then training as usual on
    SDPA and plain modules (exit 0), and the manifest says what really ran."""
    res = run_cli("train", REPO / "recipes" / "tiny-cpu.yaml", "--set", "model.attn_implementation=flash_attention_2",
                  "--set", "model.kernels=liger",
                  "--set", f"output.dir={tmp_path / 'out'}", "--set", "training.max_steps=1",
                  "--set", "training.eval_strategy=no", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "flash_attention_2 requested but unusable" in res.stderr and "falling back to sdpa" in res.stderr
    assert "kernels: liger requested but there is no GPU; running without" in res.stderr
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text())
    assert manifest["attn_implementation"] == "sdpa"
    assert manifest["kernels"] == "off"
