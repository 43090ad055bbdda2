"""Contracts with the libraries' internals that medsft relies on (medsft/upstream.py, medsft/recipe/sft_fields.py).

Each test names what an upgrade changed when it fails, so the fix starts at the right line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_recipe_training_fields_are_sftconfigs():
    """`training:` accepts exactly the installed SFTConfig's fields (read with ast, without importing trl)."""
    from trl import SFTConfig

    from medsft.recipe.sft_fields import sft_config_fields

    real = {f.name for f in dataclasses.fields(SFTConfig) if not f.name.startswith("_")}
    assert set(sft_config_fields()) == real, "TRL/transformers changed SFTConfig's fields: check medsft/recipe/sft_fields.py"


def test_declared_choices_are_the_libraries_own():
    """Choices come from TRL's metadata and transformers' enums, never narrower."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

    from medsft.recipe.sft_fields import sft_config_fields

    fields = sft_config_fields()
    assert set(fields["eval_strategy"].choices) == {e.value for e in IntervalStrategy}
    assert set(fields["save_strategy"].choices) == {e.value for e in SaveStrategy}
    assert set(fields["lr_scheduler_type"].choices) == {e.value for e in SchedulerType}
    assert {"nll", "dft"} <= set(fields["loss_type"].choices)


def test_bitsandbytes_layout_switch_exists(tiny_dir):
    """The per-layer attribute `keep_4bit_trainable_layout` turns off is the one Linear4bit.forward reads."""
    import bitsandbytes as bnb

    source = inspect.getsource(bnb.nn.Linear4bit.forward)
    assert "self.support_avx512bf16_for_cpu" in source and "_convert_weight_packed_for_cpu" in source


@pytest.mark.slow
def test_eval_loss_is_nll_while_training_with_dft(tiny_dir, tmp_path):
    """medsft's eval_loss is the NLL per completion token even when training uses DFT (upstream.nll_loss
    relies on TRL reading args.loss_type on every compute_loss call)."""
    import torch

    from medsft.launch import detect as launch
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [f"output.dir={tmp_path}", "training.loss_type=dft",
                                                              "training.max_steps=1", "data.max_rows=60"])
    built = assembly.build(resolve(recipe, launch.detect(), kernels="off"))
    trainer, prepared = built.trainer, built.data.prepared
    got = trainer.evaluate()["eval_loss"]
    assert trainer.args.loss_type == "dft", "the evaluation must not leave the loss switched"
    model, total, count = trainer.model.eval(), 0.0, 0
    with torch.no_grad():
        for row in prepared["validation"]:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(logits[0], target[0], ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    assert got == pytest.approx(total / count, rel=2e-3), "eval_loss is not the NLL per completion token"


def test_recipes_load_without_torch():
    """Validation runs before torch is imported: checked in a fresh interpreter."""
    code = ("import sys, json; from medsft.recipe.files import load_recipe; "
            "[load_recipe(p) for p in sys.argv[1:]]; "
            "print(json.dumps(sorted(m for m in ('torch', 'trl', 'transformers', 'datasets') if m in sys.modules)))")
    recipes = sorted(str(p) for p in (REPO / "recipes").glob("*.yaml"))
    res = subprocess.run([sys.executable, "-c", code, *recipes], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [], "a heavy library was imported to validate a recipe"


def test_the_gloo_group_is_gone_before_the_interpreter_finalizes(tmp_path):
    """upstream.destroy_process_group_at_exit: a process that ends with its gloo group alive has destroyed it by
    the time the last atexit handler runs (one registered first runs last), so finalization finds no gloo work."""
    from tests.conftest import free_port

    code = f"""
import atexit, os
import torch.distributed as dist
atexit.register(lambda: print("initialized at the end:", dist.is_initialized(), flush=True))
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{free_port()}")
dist.init_process_group("gloo", rank=0, world_size=1)
from medsft.upstream import destroy_process_group_at_exit
destroy_process_group_at_exit()
destroy_process_group_at_exit()  # once per process, however often it is asked
obj = [None]
dist.all_gather_object(obj, {{"rank": 0}})
print("gathered:", obj, flush=True)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["gathered: [{'rank': 0}]", "initialized at the end: False"], res.stdout


SETTLE = """
import atexit
import torch, torch.distributed as dist
from medsft.commands.common import finish

dist.init_process_group("gloo")
held = dist.group.WORLD  # a library holding the group, as DeepSpeed does: destroy_process_group leaves it alive
atexit.register(print, "exit handlers ran", flush=True)
if dist.get_rank() == 1:
    out, part = torch.empty(8), torch.ones(4)
    out.kept = part.kept = True  # Python state: torch keeps their Python objects alive inside the gloo work
    dist.all_gather_into_tensor(out, part, async_op=True)  # never waited on, as ZeRO-3's prefetch
    del out, part
else:
    dist.all_gather_into_tensor(torch.empty(8), torch.ones(4))
print("settling", flush=True)
finish(0)
print("not reached with peers", flush=True)
"""


def test_a_collective_never_waited_on_cannot_abort_the_end_of_a_run(tmp_path):
    """commands.common.finish, as every rank of a training runs it after saving: rank 1 leaves an async
    all-gather it never waits on. With destroy_process_group alone (which leaves a group a library still holds
    alive), the gather's tensors are dropped by a gloo thread during finalization and the process aborts:
    "terminate called without an active exception", exit -6 (5 of 6 tries here; ZeRO-3 trainings in CI, after
    the adapter was saved). Also with a barrier before it: the thread can still hold the finished work when
    finalization begins. finish waits for the peers, runs the exit handlers and skips finalization."""
    from tests.conftest import free_port

    script = tmp_path / "settle.py"
    script.write_text(SETTLE)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "terminate called" not in res.stderr
    out = res.stdout  # two processes print into one pipe: their lines may interleave
    assert out.count("settling") == out.count("exit handlers ran") == 2 and "not reached" not in out, out
