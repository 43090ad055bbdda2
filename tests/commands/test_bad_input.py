"""Bad input, as a user meets it, through the real CLI: one line `error: <where>: <what> — <fix>`, exit 2, no
traceback, nothing written, and every file the user had before byte-identical afterwards.

Each case runs in a workspace holding a user's files (a README, notes, another run, a model folder); the
workspace is hashed before and after. Table-driven: the catalogue grows by adding rows.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.cases import (  # noqa: F401
    BASE,
    ROWS_OK,
    check_one_line_error,
    check_said_before_torch,
    fake_adapter,
    recipe_file,
    recipe_with,
    run_case,
    snapshot,
)
from tests.conftest import REPO, run_cli, run_cli_here

# name -> (recipe text or dict, extra CLI args, expected text in the error)
RECIPE_CASES = {
    "malformed yaml": ("model: [unclosed\n", [], "malformed YAML at line"),
    "tab indentation": ("model:\n\tname: x\n", [], "malformed YAML"),
    "not a mapping": ("- a\n- b\n", [], "must be a mapping"),
    "empty recipe": ("", [], "recipe is empty"),
    "only comments": ("# nothing\n", [], "recipe is empty"),
    "duplicate key": ("lora:\n  rank: 8\n  rank: 16\n", [], "key 'rank' appears twice"),
    "second training section": ("training:\n  learning_rate: 1.0e-3\nlora:\n  rank: 8\ntraining:\n  max_steps: 2\n", [],
                                "key 'training' appears twice"),
    "misspelt section": ({**BASE, "trainig": {}}, [], "did you mean 'training'"),
    "section is a list": ({**BASE, "lora": [1, 2]}, [], "section 'lora' must be a mapping"),
    "misspelt model key": (recipe_with(model__nme="x"), [], "did you mean 'name'"),
    "misspelt training key": (recipe_with(training__learning_rat=1e-4), [], "did you mean 'learning_rate'"),
    "misspelt data key": (recipe_with(data__sorce="x"), [], "did you mean 'source'"),
    "rank not a number": (recipe_with(lora__rank="sixteen"), [], "lora.rank must be an integer"),
    "rank fractional": (recipe_with(lora__rank=8.5), [], "lora.rank must be an integer"),
    "rank boolean": (recipe_with(lora__rank=True), [], "lora.rank must be a number, not true/false"),
    "rank zero": (recipe_with(lora__rank=0), [], "lora.rank must be a positive integer"),
    "rank null": (recipe_with(lora__rank="null"), ["--set", "lora.rank="], "lora.rank must be an integer"),
    "alpha nan": ("lora:\n  alpha: .nan\n", [], "lora.alpha must be a finite number"),
    "alpha inf": ("lora:\n  alpha: .inf\n", [], "lora.alpha must be a finite number"),
    "alpha negative": (recipe_with(lora__alpha=-8), [], "lora.alpha must be positive"),
    "dropout out of range": (recipe_with(lora__dropout=1.5), [], "lora.dropout must be in [0, 1)"),
    "dropout nan": ("lora:\n  dropout: .nan\n", [], "lora.dropout must be a finite number"),
    "targets not a list": (recipe_with(lora__target_modules=42), [], "lora.target_modules must be"),
    "targets empty list": (recipe_with(lora__target_modules=[]), [], "lora.target_modules must be"),
    "bias unknown": (recipe_with(lora__bias="some"), [], "lora.bias must be one of none, all, lora_only"),
    "learning rate negative": (recipe_with(training__learning_rate=-1), [], "must be positive"),
    "learning rate nan": ("training:\n  learning_rate: .nan\n", [], "training.learning_rate must be a finite number"),
    "learning rate text": (recipe_with(training__learning_rate="fast"), [], "training.learning_rate must be float"),
    "warmup negative": (recipe_with(training__warmup_steps=-1), [], "training.warmup_steps must be ≥ 0"),
    "workers negative": (recipe_with(training__dataloader_num_workers=-1), [], "dataloader_num_workers must be ≥ 0"),
    "save limit negative": (recipe_with(training__save_total_limit=-2), [], "save_total_limit must be ≥ 0"),
    "grad norm negative": (recipe_with(training__max_grad_norm=-1.0), [], "max_grad_norm must be ≥ 0"),
    "batch size wrong type": (recipe_with(training__per_device_train_batch_size="eight"), [],
                              "per_device_train_batch_size must be int"),
    "batch size boolean": (recipe_with(training__per_device_train_batch_size=True), [], "must be a number, not true"),
    "epochs zero": (recipe_with(training__num_train_epochs=0), [], "num_train_epochs must be positive"),
    "unknown loss": (recipe_with(training__loss_type="dfft"), [], "loss_type must be one of nll, dft"),
    "unknown scheduler": (recipe_with(training__lr_scheduler_type="cosin"), [], "did you mean 'cosine'"),
    "unknown optimizer": (recipe_with(training__optim="adam"), [], "training.optim must be one of"),
    "unknown eval strategy": (recipe_with(training__eval_strategy="step"), [], "did you mean 'steps'"),
    "bf16 not a boolean": (recipe_with(training__bf16="maybe"), [], "training.bf16 must be bool"),
    "bf16 and fp16": (recipe_with(training__bf16=True, training__fp16=True), [], "both on"),
    "checkpointing names disagree": (recipe_with(training__gradient_checkpointing=True,
                                                 training__activation_checkpointing=False), [], "disagree"),
    "packing without max_length": ("training:\n  packing: true\n  max_length: null\n", [],
                                   "training.packing needs training.max_length"),
    "output_dir in training": (recipe_with(training__output_dir="x"), [], "use output.dir instead"),
    "liger in training": (recipe_with(training__use_liger_kernel=True), [], "use model.kernels"),
    "deepspeed in training": (recipe_with(training__deepspeed="ds.json"), [], "use an accelerate config"),
    "resume in training": (recipe_with(training__resume_from_checkpoint="x"), [], "medsft train --resume PATH"),
    "bits 3": (recipe_with(quantization__bits=3), [], "quantization.bits must be 4, 8 or null"),
    "quant type": (recipe_with(quantization__quant_type="nf3"), [], "did you mean 'nf4'"),
    "bad dtype": (recipe_with(model__dtype="bf16"), [], "model.dtype must be one of"),
    "bad compute dtype": (recipe_with(quantization__compute_dtype="fp8"), [], "compute_dtype must be one of"),
    "bad attention": (recipe_with(model__attn_implementation="flash"), [], "attn_implementation must be"),
    "bad kernels": (recipe_with(model__kernels="triton"), [], "model.kernels must be one of"),
    "device_map a list": (recipe_with(model__device_map=[1]), [], "model.device_map must be auto, cpu"),
    "trust_remote_code a word": (recipe_with(model__trust_remote_code="sure"), [], "model.trust_remote_code must be true"),
    "model name empty": (recipe_with(model__name=" "), [], "model.name must be a non-empty string"),
    "missing local model": (recipe_with(model__name="./no-such-model"), [], "looks like a local path"),
    "missing data file": (recipe_with(data__source="missing.json"), [], "not found"),
    "csv data file": (recipe_with(data__source="data/rows.csv"), [], "unsupported file type"),
    "data format unknown": (recipe_with(data__format="chatml"), [], "data.format must be one of"),
    "fractions leave nothing": (recipe_with(data__val_fraction=0.6, data__test_fraction=0.5), [], "leave no training rows"),
    "val fraction negative": (recipe_with(data__val_fraction=-0.1), [], "data.val_fraction must be in [0, 1)"),
    "eval without validation": (recipe_with(data__val_fraction=0), [], "needs a validation split"),
    "max_rows zero": (recipe_with(data__max_rows=0), [], "data.max_rows must be positive"),
    "bad_fraction above one": (recipe_with(data__max_bad_fraction=2), [], "max_bad_fraction must be in"),
    "question column empty": (recipe_with(data__question_column=""), [], "data.question_column must be a non-empty"),
    "generations negative": (recipe_with(evaluation__generations=-1), [], "evaluation.generations must be ≥ 0"),
    "set without equals": (BASE, ["--set", "training.learning_rate"], "is not key=value"),
    "set three parts": (BASE, ["--set", "training.a.b=1"], "must be section.key"),
    "set unknown section": (BASE, ["--set", "lorra.rank=4"], "did you mean 'lora'"),
    "set wrong type": (BASE, ["--set", "lora.rank=big"], "lora.rank must be an integer"),
    "set with a hash kept literally": (BASE, ["--set", "training.report_to=none #tensorboard"],
                                       "training.report_to 'none #tensorboard' is not an integration"),
    "report_to not installed": (recipe_with(training__report_to="wandb"), [], "training.report_to 'wandb' is not installed"),
    "output dir is a file": (recipe_with(output__dir="README.md"), [], "is a file"),
    "output dir inside a file": (recipe_with(output__dir="README.md/run"), [], "which is a file"),
    "output dir is the project": (recipe_with(output__dir="."), [], "holds files medsft did not write"),
    "output dir is a user folder": (recipe_with(output__dir="mine"), [], "holds files medsft did not write"),
    "adapter dir is a user folder": (recipe_with(output__adapter_dir="notes"), [],
                                     "output.adapter_dir 'notes' holds files medsft did not write"),
    "adapter dir above output dir": (recipe_with(output__dir="runs/new", output__adapter_dir="runs"), [],
                                     "would contain output.dir"),
    "adapter dir is output dir": (recipe_with(output__dir="runs/new", output__adapter_dir="runs/new"), [],
                                  "would contain output.dir"),
    "adapter dir is here": (recipe_with(output__adapter_dir="."), [], "would contain output.dir or the current"),
    "resume path not a checkpoint": (BASE, ["--resume", "nowhere"], "not a complete checkpoint"),
    "resume path without weights": (BASE, ["--resume", "ckpt"], "not a complete checkpoint"),
    "chat template unknown": (recipe_with(model__chat_template="chatm"), [], "did you mean 'chatml'"),
    "chat template file missing": (recipe_with(model__chat_template="tpl/missing.jinja"), [],
                                   "model.chat_template file 'tpl/missing.jinja' not found"),
    "chat template does not render": (recipe_with(model__chat_template="bad.jinja"), [],
                                      "model.chat_template 'bad.jinja' does not render (TemplateSyntaxError"),
    "chat template ignores the messages": (recipe_with(model__chat_template="static.jinja"), [],
                                           "does not render the conversation"),
    "chat template not jinja": (recipe_with(model__chat_template="README.md"), [], "is not a .jinja file"),
    "messages without generation markers": (recipe_with(model__chat_template="plain.jinja", data__format="messages",
                                                        data__source="conv.json"), [],
                                            "no {% generation %} markers"),
    "role mapped to nothing": (recipe_with(data__roles={"bot": "robot"}), [], "data.roles.bot must be one of"),
    "sources empty": (recipe_with(data__source=None, data__sources=[]), [], "data.sources is empty"),
    "source not a mapping": (recipe_with(data__source=None, data__sources=["data/rows.json"]), [],
                             "each entry of data.sources must be a mapping"),
    "source key misspelt": (recipe_with(data__source=None, data__sources=[{"source": "data/rows.json", "wieght": 1}]),
                            [], "did you mean 'weight'"),
    "source without source": (recipe_with(data__source=None, data__sources=[{"weight": 1}]), [],
                              "data.sources.source is required"),
    "source file missing": (recipe_with(data__source=None, data__sources=[{"source": "nope.json"}]), [],
                            "data.sources[0].source file 'nope.json' not found"),
    "sources beside data.source": (recipe_with(data__source="data/rows.json", data__sources=[{"source": "data/rows.json"}]),
                                   [], "data.source is set beside data.sources"),
    "weights do not sum to one": (recipe_with(data__source=None, data__sources=[
        {"source": "data/rows.json", "weight": 0.5}, {"source": "data/rows.json", "weight": 0.7}]), [],
        "data.sources weights sum to 1.2, not 1"),
    "weights on some sources": (recipe_with(data__source=None, data__sources=[
        {"source": "data/rows.json", "weight": 0.5}, {"source": "data/rows.json"}]), [],
        "only some sources have a weight (data.sources[1] has none)"),
    "aliases expand without bound": ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")), [],
        "aliases expand to more than"),
    "global batch as text beside auto": (recipe_with(training__per_device_train_batch_size="auto",
                                                     training__global_batch_size="abc"), [],
                                         "training.global_batch_size must be an integer (got 'abc')"),
    "global batch fractional beside auto": (recipe_with(training__per_device_train_batch_size="auto",
                                                        training__global_batch_size=16.5), [],
                                            "training.global_batch_size must be an integer (got 16.5)"),
    "global batch beyond floats beside auto": ("training:\n  per_device_train_batch_size: auto\n"
                                               "  global_batch_size: 1e400\n", [],
                                               "training.global_batch_size must be an integer"),
    "global batch as a list beside auto": (recipe_with(training__per_device_train_batch_size="auto",
                                                       training__global_batch_size=[16]), [],
                                           "training.global_batch_size must be an integer (got [16])"),
    "weight zero": (recipe_with(data__source=None, data__sources=[{"source": "data/rows.json", "weight": 0}]), [],
                    "data.sources.weight must be in (0, 1]"),
    "weight above one": (recipe_with(data__source=None, data__sources=[{"source": "data/rows.json", "weight": 3}]), [],
                         "data.sources.weight must be in (0, 1]"),
}
CONVERSATIONS = json.dumps([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                            for i in range(40)])
RECIPE_FILES = {
    "resume path without weights": {"ckpt/trainer_state.json": "{}"},
    "chat template does not render": {"bad.jinja": "{% for m in messages %}{{ m['content'] }"},
    "chat template ignores the messages": {"static.jinja": "hello"},
    "messages without generation markers": {
        "plain.jinja": "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}",
        "conv.json": CONVERSATIONS},
}

# launch environments (as accelerate exports them) that cannot work with the recipe
LAUNCH_CASES = {
    "8-bit under ZeRO-3": (recipe_with(quantization__bits=8),
                           {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
                           "ZeRO-3 with quantization.bits: 8"),
    "device_map auto under DDP": (recipe_with(model__device_map="auto"),
                                  {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "tensors on different"),
    "FSDP1": (BASE, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP1 is not supported"),
    "8-bit under FSDP": (recipe_with(quantization__bits=8), {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
                         "FSDP with quantization.bits: 8"),
    "mixed precision contradicts": (BASE, {"ACCELERATE_MIXED_PRECISION": "bf16"}, "says mixed_precision: bf16 but"),
    "chat template under ZeRO-3": (recipe_with(model__chat_template="chatml"),
                                   {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
                                   "does not run under DeepSpeed ZeRO-3"),
    "deepspeed accumulation contradicts": (recipe_with(training__gradient_accumulation_steps=4),
                                           {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                                            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"},
                                           "sets deepspeed_config.gradient_accumulation_steps: 1"),
}

# Cases that get past the recipe and fail on the data (torch is imported for these).
DATA_CASES = {
    "empty dataset": (b"[]", {}, "no rows"),
    "empty file": (b"", {}, "no rows"),
    "rows missing a column": (json.dumps([{"Question": "q", "Response": "r"}] * 20).encode(), {},
                              "column 'Complex_CoT' not found"),
    "rows with wrong types": (json.dumps(ROWS_OK[:30] + [{"Question": "q", "Complex_CoT": "c", "Response": ""}] * 10)
                              .encode(), {}, "10 of 40 rows are malformed"),
    "numbers for text": (json.dumps(ROWS_OK[:30] + [{"Question": 1, "Complex_CoT": "c", "Response": "r"}] * 10).encode(),
                         {}, "of 40 rows are malformed"),
    "undecodable bytes": (b'[{"Question": "caf\xe9", "Complex_CoT": "c", "Response": "r"}]', {}, "not valid UTF-8"),
    "not json": (b"{this is not json", {}, "cannot read"),
    "too few rows": (json.dumps(ROWS_OK[:5]).encode(), {}, "at least 10"),
    "max_length below every prompt": (json.dumps(ROWS_OK).encode(), {"training__max_length": 8},
                                      "longer than training.max_length=8"),
    "conversations without an assistant turn": (
        json.dumps([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                    for i in range(30)] + [{"messages": [{"role": "user", "content": "q"}]}] * 10).encode(),
        {"data__format": "messages"}, "10 of 40 rows are malformed (10 no assistant turn)"),
    "conversations with an unknown role": (
        json.dumps([{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "bot", "value": "a"}]}
                    for i in range(20)]).encode(), {"data__format": "messages"}, "map it with data.roles"),
    "conversations column missing": (json.dumps(ROWS_OK).encode(), {"data__format": "messages"},
                                     "column 'messages' not found"),
}

# Other commands: (args, expected, files to create)
FAKE = "adapter/"
COMMAND_CASES = {
    "preflight: accelerate config missing": (["preflight", "RECIPE", "--gpu-memory", "8GiB", "--accelerate-config",
                                              "nope.yaml"], "accelerate config 'nope.yaml' not found", {}),
    "preflight: accelerate config not yaml": (["preflight", "RECIPE", "--gpu-memory", "8GiB", "--accelerate-config",
                                               "acc.yaml"], "is not valid YAML", {"acc.yaml": b"a: [\n"}),
    "preflight: accelerate config unsupported": (["preflight", "RECIPE", "--gpu-memory", "8GiB", "--accelerate-config",
                                                  "acc.yaml"], "is not supported by medsft",
                                                 {"acc.yaml": b"distributed_type: MEGATRON_LM\n"}),
    "preflight: accelerate config processes": (["preflight", "RECIPE", "--gpu-memory", "8GiB", "--accelerate-config",
                                                "acc.yaml"], "num_processes is 'eight'",
                                               {"acc.yaml": b"distributed_type: MULTI_GPU\nnum_processes: eight\n"}),
    "preflight: memory not a size": (["preflight", "RECIPE", "--gpu-memory", "lots"], "is not a positive size", {}),
    "preflight: memory zero": (["preflight", "RECIPE", "--gpu-memory", "0GiB"], "is not a positive size", {}),
    "preflight: memory two dots": (["preflight", "RECIPE", "--gpu-memory", "1.2.3"], "is not a positive size", {}),
    "preflight: no gpus": (["preflight", "RECIPE", "--gpu-memory", "8GiB", "--num-gpus", "0"], "--num-gpus must be", {}),
    "preflight: no GPU and no size": (["preflight", "RECIPE"], "pass --gpu-memory SIZE", {}),
    "infer: adapter dir missing": (["infer", "no-such-dir", "--question", "q"], "not found", {}),
    "infer: no adapter files": (["infer", "notes", "--question", "q"], "has no adapter_config.json", {}),
    "infer: corrupt weights": (["infer", FAKE, "--question", "q"], "holds a corrupted adapter",
                               {"adapter/adapter_model.safetensors": b"\x00garbage" * 10}),
    "infer: not a LoRA adapter": (["infer", FAKE, "--question", "q"], "is not a LoRA adapter",
                                  {"adapter/adapter_config.json": b'{"peft_type": "PREFIX_TUNING"}'}),
    "infer: broken recipe.yaml": (["infer", FAKE, "--question", "q"], "recipe.yaml' is not valid YAML",
                                  {"adapter/recipe.yaml": b"model: [\n"}),
    "infer: recipe.yaml of another version": (["infer", FAKE, "--question", "q"], "unknown key 'lora.rnk'",
                                              {"adapter/recipe.yaml": b"lora:\n  rnk: 8\n"}),
    "infer: sampling at temperature 0": (["infer", FAKE, "--question", "q", "--sample", "--temperature", "0"],
                                         "--temperature must be a positive number", {}),
    "infer: negative temperature": (["infer", FAKE, "--question", "q", "--sample", "--temperature", "-1"],
                                    "--temperature must be a positive number", {}),
    "infer: top-p above one": (["infer", FAKE, "--question", "q", "--sample", "--top-p", "2"], "--top-p must be", {}),
    "infer: no new tokens": (["infer", FAKE, "--question", "q", "--max-new-tokens", "0"], "--max-new-tokens", {}),
    "infer: questions file missing": (["infer", FAKE, "--file", "q.jsonl"], "not found", {}),
    "infer: questions file empty": (["infer", FAKE, "--file", "q.jsonl"], "has no questions", {"q.jsonl": b"\n"}),
    "infer: questions not json": (["infer", FAKE, "--file", "q.jsonl"], "line 1 is not JSON", {"q.jsonl": b"hello\n"}),
    "infer: question missing": (["infer", FAKE, "--file", "q.jsonl"], "has no 'question' string",
                                {"q.jsonl": b'{"prompt": "x"}\n'}),
    "infer: questions not utf-8": (["infer", FAKE, "--file", "q.jsonl"], "is not UTF-8", {"q.jsonl": b'\xff\xfe{"'}),
    "infer: output exists": (["infer", FAKE, "--file", "q.jsonl", "--output", "README.md"], "already exists",
                             {"q.jsonl": b'{"question": "q"}\n'}),
    "infer: output is a directory": (["infer", FAKE, "--file", "q.jsonl", "--output", "notes"], "is a directory",
                                     {"q.jsonl": b'{"question": "q"}\n'}),
    "infer: output in a missing directory": (["infer", FAKE, "--file", "q.jsonl", "--output", "nope/a.jsonl"],
                                             "is not a writable directory", {"q.jsonl": b'{"question": "q"}\n'}),
    "eval: adapter dir missing": (["eval", "no-such-dir"], "not found", {}),
    "eval: negative generations": (["eval", FAKE, "--max-generations", "-1"], "--max-generations must be ≥ 0", {}),
    "merge: adapter dir missing": (["merge", "no-such-dir", "out"], "not found", {}),
    "merge: into the adapter": (["merge", FAKE, FAKE], "would contain or sit inside its input", {}),
    "merge: into the run holding it": (["merge", "run/adapter", "run"], "would contain or sit inside its input", {}),
    "merge: inside the adapter": (["merge", FAKE, "adapter/merged"], "would contain or sit inside its input", {}),
    "merge: into a user folder": (["merge", FAKE, "mine"], "holds files medsft did not write", {}),
    "merge: onto a file": (["merge", FAKE, "README.md"], "is a file", {}),
    "launch: no command": (["launch", "--config_file", str(REPO / "accelerate_configs" / "ddp.yaml")],
                           "no medsft command", {}),
    "launch: bad recipe": (["launch", "--config_file", str(REPO / "accelerate_configs" / "ddp.yaml"), "train", "RECIPE",
                            "--set", "lora.rank=0"], "lora.rank must be a positive integer", {}),
    "launch: config drops its distribution": (["launch", "--config_file", "acc.yaml", "--num_processes", "2", "train",
                                               "RECIPE"], "use_cpu: true",
                                              {"acc.yaml": b"distributed_type: DEEPSPEED\nuse_cpu: true\nnum_processes: 2\n"
                                                           b"deepspeed_config:\n  zero_stage: 2\n"}),
}


@pytest.mark.parametrize("name", RECIPE_CASES)
def test_bad_recipe(name, workspace):
    recipe, extra, expected = RECIPE_CASES[name]
    if isinstance(recipe, dict) and "output" not in recipe or isinstance(recipe, dict) and \
            "dir" not in recipe.get("output", {}):
        recipe = {**recipe, "output": {**recipe.get("output", {}), "dir": "out"}}
    files = {"recipe.yaml": recipe_file(recipe), **RECIPE_FILES.get(name, {})}
    run_case(workspace, ["train", "recipe.yaml", *extra], expected, files=files)


@pytest.mark.parametrize("name", ["malformed yaml", "misspelt model key", "rank not a number"])
def test_recipe_errors_come_before_torch(name, workspace):
    """The in-process cases above cannot see imports; here, as a subprocess, a recipe error is said before
    torch (seconds of start-up) is imported at all."""
    recipe, extra, expected = RECIPE_CASES[name]
    (workspace / "recipe.yaml").write_bytes(recipe_file(recipe))
    check_said_before_torch(workspace, ["train", "recipe.yaml", *extra], expected)


@pytest.mark.parametrize("name", LAUNCH_CASES)
def test_bad_launch(name, workspace):
    recipe, env, expected = LAUNCH_CASES[name]
    recipe = {**recipe, "output": {"dir": "out"}}
    run_case(workspace, ["train", "recipe.yaml"], expected, env=env, files={"recipe.yaml": recipe_file(recipe)})


@pytest.mark.parametrize("name", DATA_CASES)
def test_bad_data(name, workspace):
    content, changes, expected = DATA_CASES[name]
    recipe = recipe_with(data__source="rows.json", output__dir="out", **changes)
    run_case(workspace, ["train", "recipe.yaml"], expected, files={"rows.json": content, "recipe.yaml": recipe_file(recipe)})


@pytest.mark.parametrize("name", COMMAND_CASES)
def test_bad_command_input(name, workspace):
    args, expected, files = COMMAND_CASES[name]
    fake_adapter(workspace / "adapter")
    fake_adapter(workspace / "run" / "adapter")
    (workspace / "run" / ".medsft.json").write_text(json.dumps({"kind": "run"}))
    for name_, content in files.items():  # a case's own file replaces the fake adapter's
        (workspace / name_).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name_).write_bytes(content)
    args = [str(REPO / "recipes" / "tiny-cpu.yaml") if a == "RECIPE" else a for a in args]
    run_case(workspace, args, expected)


def test_recipe_file_not_found(workspace):
    run_case(workspace, ["train", "nope.yaml"], "recipe file not found")


def test_recipe_file_not_utf8(workspace):
    run_case(workspace, ["train", "r.yaml"], "is not UTF-8", files={"r.yaml": "model:\n  name: x\n".encode("utf-16")})


def test_hub_dataset_offline(workspace):
    recipe = recipe_with(data__source="FreedomIntelligence/medical-o1-reasoning-SFT", output__dir="o")
    run_case(workspace, ["train", "r.yaml"], "is not in this machine's hub cache", files={"r.yaml": recipe_file(recipe)})


def test_base_model_offline(workspace):
    recipe = recipe_with(model__name="example-org/not-downloaded-7b", output__dir="o")
    run_case(workspace, ["train", "r.yaml"], "is not in this machine's hub cache", files={"r.yaml": recipe_file(recipe)})


def test_lora_targets_match_nothing(workspace):
    recipe = recipe_with(lora__target_modules=["no_such_proj"], output__dir="o")
    run_case(workspace, ["train", "r.yaml"], "match no module", files={"r.yaml": recipe_file(recipe)})


def test_run_directory_in_use(workspace):
    """A second training into a directory a live run holds refuses with one line naming the first."""
    (workspace / "busy").mkdir()
    (workspace / "busy" / ".medsft.json").write_text(json.dumps({"kind": "run"}))
    (workspace / "busy" / ".medsft.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                                  "since": "now", "command": "medsft train"}))
    recipe = recipe_with(output__dir="busy")
    run_case(workspace, ["train", "r.yaml"], f"is in use by another medsft run (pid {os.getpid()}",
             files={"r.yaml": recipe_file(recipe)})


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


def test_adapter_dir_that_is_a_symlink_loop(workspace):
    (workspace / "loop-a").symlink_to("loop-b")
    (workspace / "loop-b").symlink_to("loop-a")
    recipe = recipe_with(output__dir="o", output__adapter_dir="loop-a")
    run_case(workspace, ["train", "r.yaml"], "output.adapter_dir 'loop-a' is a symlink loop",
             files={"r.yaml": recipe_file(recipe)})


@pytest.mark.parametrize("how", ["a file", "read-only"])
def test_unusable_datasets_cache_is_named(workspace, how):
    """HF_HOME that is a file, or a cache that cannot be written: said as the cache, with the variable that
    moves it, before any row is read (not as "cannot read rows.json")."""
    env = {"HF_HOME": str(workspace / "hf")}
    if how == "a file":
        (workspace / "hf").write_text("not a folder\n")
    else:
        (workspace / "hf" / "datasets").mkdir(parents=True)
        if os.geteuid() == 0:  # root writes through permission bits: a read-only mount is the honest stand-in
            subprocess.run(["chattr", "+i", str(workspace / "hf" / "datasets")], check=True)
        else:
            (workspace / "hf" / "datasets").chmod(0o555)
    recipe = recipe_with(data__source="data/rows.json", output__dir="o")
    try:
        run_case(workspace, ["data", "r.yaml"], "the datasets cache (HF_DATASETS_CACHE, or HF_HOME/datasets)",
                 env=env, files={"r.yaml": recipe_file(recipe)})
    finally:
        if how == "read-only" and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(workspace / "hf" / "datasets")], check=True)


def test_yaml_merge_keys_and_anchor_sections_are_read(workspace):
    """`<<: *defaults` (YAML merge keys, which PyYAML reads) from a top-level `x-…` anchor section: accepted, the
    merged values used, a key beside the merge overriding it."""
    text = ("x-defaults: &defaults\n  per_device_train_batch_size: 4\n  gradient_accumulation_steps: 2\n"
            "model:\n  name: builtin:tiny-qwen2\ndata:\n  source: builtin:tiny-medical\n"
            "training:\n  <<: *defaults\n  gradient_accumulation_steps: 3\n  max_length: 512\noutput:\n  dir: o\n")
    (workspace / "r.yaml").write_text(text)
    res = run_cli_here("preflight", "r.yaml", "--gpu-memory", "24GiB", cwd=workspace)
    assert res.returncode == 0, res.stderr
    assert "4 × 3 × 1 process = 12 rows per optimizer step" in res.stdout, res.stdout


USAGE_MISTAKES = {  # argparse's own checks: its message, as medsft's one line naming the command's --help
    "misspelt command": (["trian", "recipe.yaml"], "invalid choice: 'trian'", "`medsft --help`"),
    "no recipe": (["train"], "the following arguments are required: recipe", "`medsft train --help`"),
    "option without its value": (["train", "recipe.yaml", "--resume"], "--resume: expected one argument",
                                 "`medsft train --help`"),
    "not a number": (["preflight", "recipe.yaml", "--num-gpus", "two"], "--num-gpus: invalid int value: 'two'",
                     "`medsft preflight --help`"),
    "unknown option": (["eval", "adapter", "--bogus"], "unrecognized arguments: --bogus", "`medsft --help`"),
    "launch without a recipe": (["launch", "--config_file", str(REPO / "accelerate_configs" / "ddp.yaml"), "train"],
                                "the following arguments are required: recipe", "`medsft train --help`"),
}


@pytest.mark.parametrize("name", USAGE_MISTAKES)
def test_usage_mistakes_are_one_line(name, workspace):
    """No usage block: stderr is the one `error:` line, which names the command's --help."""
    args, expected, helps = USAGE_MISTAKES[name]
    before = snapshot(workspace)
    res = run_cli(*args, cwd=workspace, timeout=120)
    check_one_line_error(res, expected)
    assert len(res.stderr.splitlines()) == 1 and helps in res.stderr, res.stderr
    assert snapshot(workspace) == before
