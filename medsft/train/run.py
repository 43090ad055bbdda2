"""`medsft train`: recipe → resolved run → data → model → SFTTrainer → adapter, in the order a reader expects.

Why one function: like TRL's own sft.py, the whole run reads top to bottom on one screen; each stage is
a plain call into the module that owns it (runspec; assembly for data → model → trainer; outputs).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.console import is_main, notice, say
from medsft.errors import MedsftError
from medsft.io.checkpoints import ASIDE, discard_aside, restore_aside, set_aside

if TYPE_CHECKING:
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from medsft.recipe.schema import Recipe
    from medsft.train.assembly import Assembly
    from medsft.train.runspec import RunSpec


def preflight_gate(spec: RunSpec, force: bool, gpu_memory: str | None = None) -> None:
    """Before loading anything on a GPU: the main process estimates this launch (ZeRO-3, FSDP and offload
    included) and every rank refuses a run that won't fit (main_decides). An estimate that cannot be made does
    not stop the run. `gpu_memory` replaces the measured free memory (tests)."""
    from medsft.launch.agreement import main_decides

    if not spec.launch.cuda and gpu_memory is None:
        say("preflight: skipped (no GPU; `medsft preflight RECIPE --gpu-memory SIZE` estimates one)")
        return

    def gate() -> None:
        from medsft.views import show_preflight

        try:
            report = spec.preflight(gpu_memory)
        except MedsftError:
            return
        show_preflight(report, spec.batch)
        if report.verdict == "won't fit" and not force:
            raise MedsftError("the memory preflight says this run won't fit on the device",
                              "apply one of the listed changes, or pass --force to try anyway", spec.recipe.source_file)

    main_decides(gate)


def gather_lines(lines: list[str]) -> list[list[str]]:
    """Every rank's lines, on the main process (others print nothing)."""
    from accelerate.utils import gather_object

    return gather_object([lines])


def check_paths(recipe: Recipe) -> None:
    """Where this run writes, before anything is loaded: only what medsft wrote may be written into or replaced."""
    from medsft.io.outputs import Write, check_writable
    from medsft.io.ownership import RunLock, check_ours, contains

    out, adapter, where = Path(recipe.output.dir), recipe.adapter_dir, recipe.source_file
    try:
        if is_main():  # a live run first: its lock names it (only the main process ever takes the lock)
            RunLock(out).check()
        check_ours(out, "run", "output.dir")
        if contains(adapter, out) or contains(adapter, Path.cwd()):
            raise MedsftError(f"output.adapter_dir {str(adapter)!r} would contain output.dir or the current directory "
                              "(the adapter directory is replaced as a whole)",
                              "choose an adapter directory of its own, e.g. <output.dir>/adapter")
        check_ours(adapter, "adapter", "output.adapter_dir")
        if is_main():  # one process proves it; the others would only race its probes
            check_writable([Write(out, "output.dir"), Write(adapter, "output.adapter_dir", replaces=True)])
    except MedsftError as err:
        raise err.at(where) from None


def already_complete(spec: RunSpec) -> bool:
    """The same run finished before (same identity, adapter written): re-running it trains nothing. The same
    recipe on data whose bytes changed since is refused: that adapter was trained on other rows."""
    from medsft.io.checkpoints import changes
    from medsft.io.ownership import marker

    run = marker(Path(spec.recipe.output.dir)) or {}
    if run.get("state") != "complete" or not (spec.recipe.adapter_dir / "adapter_model.safetensors").is_file():
        return False
    before, now = run.get("identity") or {}, spec.identity()
    if before == now:
        return True
    changed = changes(before, now)
    if changed and all(line.startswith("data.content") for line in changed):
        raise MedsftError(f"the data changed since the adapter in {str(spec.recipe.adapter_dir)!r} was trained "
                          f"(the bytes of {', '.join(c.split()[0].removeprefix('data.content.') for c in changed)} "
                          "differ from the rows it trained on)",
                          "pass --resume never to train again on the new rows, or choose a new output.dir",
                          spec.recipe.source_file)
    return False


def run(recipe: Recipe, resume: str = "auto", force: bool = False,
        callbacks: Iterable[TrainerCallback] = ()) -> SFTTrainer | None:
    """Train and save the adapter. Returns the trainer (tests inspect it), or None when already complete.
    `callbacks`: more TrainerCallbacks (benchmarks time and measure through them)."""
    from contextlib import nullcontext

    from medsft.io.checkpoints import resume_point
    from medsft.io.ownership import RunLock
    from medsft.launch import detect as launch
    from medsft.memory.micro_batch import previous_choice
    from medsft.train.runspec import resolve

    check_paths(recipe)
    here = launch.with_command(launch.detect())  # checked with every other launch rule by resolve()
    if here.world_size > 1:
        from medsft.upstream import destroy_process_group_at_exit

        destroy_process_group_at_exit()
    previous = previous_choice(resume, recipe.output.dir) if recipe.training.batch_is_auto else None
    spec = resolve(recipe, here, previous_micro_batch=previous)
    if is_main():  # only the main process takes the lock; another rank could find it held by rank 0
        RunLock(Path(recipe.output.dir)).check()
    if resume == "auto" and already_complete(spec):
        say(f"already complete: this run finished and saved {recipe.adapter_dir} — nothing to train "
            "(--resume never trains it again)")
        return None
    checkpoint = resume_point(resume, recipe.output.dir, spec.identity(), notice)  # every rank reads the same files
    lock = RunLock(Path(recipe.output.dir)) if is_main() else nullcontext()
    with lock:
        if isinstance(lock, RunLock) and lock.taken_over is not None:
            notice(f"taking over {lock.path}: its process {lock.taken_over.get('pid')} is gone")
        return train(spec, checkpoint, resume, force, callbacks)


def train(spec: RunSpec, checkpoint: str | None, resume: str, force: bool,
          callbacks: Iterable[TrainerCallback] = ()) -> SFTTrainer:
    from medsft.data.load import row_ids
    from medsft.io.outputs import manifest, write_json
    from medsft.io.ownership import mark
    from medsft.launch.agreement import main_decides
    from medsft.train import assembly
    from medsft.train.preemption import EXIT_PREEMPTED, PreemptionCallback
    from medsft.train.progress import StartedOverCallback
    from medsft.train.shards import gather_rows_seen

    recipe = spec.recipe
    for line in spec.notices:
        notice(line)
    args = spec.sft_config()  # also sets up the distributed state
    preflight_gate(spec, force)
    built = assembly.build(spec, args=args, after_data=say_data)  # data → model → trainer
    tokenizer, data = built.tokenizer, built.data
    assert data is not None  # the data stage ran
    prepared = data.prepared
    trainer, attn, added_rows, kernels_ran = built.trainer, built.attention, built.embedding_rows_added, built.kernels
    for callback in callbacks:
        trainer.add_callback(callback)
    out = Path(recipe.output.dir)
    # before step 1: the disk has room for the checkpoints and the adapter this run will write
    main_decides(lambda: check_room(spec, trainer, len(prepared["train"])))
    step_rows = spec.micro_batch * spec.grad_accum * max(1, spec.launch.world_size)
    if len(prepared["train"]) < step_rows:
        notice(f"the training split has {len(prepared['train'])} rows, fewer than the {step_rows} rows per optimizer "
               f"step: every step trains on those {len(prepared['train'])} rows; set training.global_batch_size (or "
               "the micro-batch × accumulation) to at most that, or train on more rows")
    if is_main():  # the first write into output.dir: every input has been checked by now
        if resume == "never":
            start_over(out)
        elif (out / ASIDE).is_dir():
            notice(f"the previous run's checkpoints are set aside in {out / ASIDE} (a --resume never stopped before "
                   "its first checkpoint); they are deleted at this run's first checkpoint — move them back first "
                   "to resume them")
        mark(out, "run", state="training", identity=spec.identity())
    if checkpoint:
        say(f"resuming from {checkpoint}")
    preemption = PreemptionCallback().install()
    trainer.add_callback(preemption)
    trainer.add_callback(StartedOverCallback(out))
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        if is_main() and resume == "never" and restore_aside(out):
            notice(f"this run stopped before its first checkpoint: the previous run's files are back in {out}")
        raise
    finally:
        preemption.uninstall()
    if preemption.stopped_for_signal:
        say(f"preempted at step {trainer.state.global_step}: checkpoint saved in {recipe.output.dir}; "
            f"exiting {EXIT_PREEMPTED} so the job is requeued (the same command resumes)")
        raise SystemExit(EXIT_PREEMPTED)

    rows_seen = gather_rows_seen(trainer)
    if rows_seen is not None and not any(rows_seen.values()):
        say("data: rows drawn per rank not recorded (packing builds new rows from several)")
    elif rows_seen is not None:
        say("data: rows drawn per rank: " + ", ".join(f"rank {r}: {len(v)} rows" for r, v in sorted(rows_seen.items())))
        write_json(Path(recipe.output.dir) / "rows_seen.json", {str(r): v for r, v in sorted(rows_seen.items())})
    info = manifest(
        recipe=recipe.source_file, model=recipe.model.name, attn_implementation=attn,
        **{**spec.manifest(), "kernels": kernels_ran,
           "launch": {**spec.manifest()["launch"], "distributed_type": trainer.accelerator.distributed_type.value,
                      "num_processes": trainer.accelerator.num_processes}},
        data={"content": data.content, "rows": data.report.total, "kept": data.report.kept,
              "dropped": dict(data.report.reasons), "overlong_dropped": data.dropped,
              "split_sizes": {k: len(v) for k, v in prepared.items()}, "token_lengths": data.stats,
              "sources": data.report.source_counts(row_ids(prepared), before=data.row_ids),
              "cache_by_rank": built.cache_lines_by_rank},
        chat_template={"name": recipe.model.chat_template, "embedding_rows_added": added_rows,
                       "trainable_token_indices": getattr(getattr(trainer.model, "peft_config", {}).get("default"),
                                                          "trainable_token_indices", None)},
        train={"global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "resumed_from": checkpoint},
    )
    save_adapter(trainer, tokenizer, recipe, info, data.row_ids["test"])
    if is_main():
        mark(Path(recipe.output.dir), "run", state="complete", identity=spec.identity(),
             global_step=trainer.state.global_step, adapter=str(recipe.adapter_dir))
    if is_main():
        discard_aside(out)
    say(f"adapter saved to {recipe.adapter_dir}")
    return trainer


def check_room(spec: RunSpec, trainer: SFTTrainer, train_rows: int) -> None:
    """What this run will write, from the trained parameters it really has: the adapter, and the checkpoints kept
    at once (each: weights and AdamW's two moments, in float32 at most), on the disks they go to."""
    import math

    from medsft.io.outputs import Write, check_writable

    args, recipe, model = trainer.args, spec.recipe, trainer.model
    assert model is not None  # the trainer was made with its model
    trained = [p for p in model.parameters() if p.requires_grad]
    adapter = sum(p.numel() * p.element_size() for p in trained)
    steps = args.max_steps if args.max_steps and args.max_steps > 0 else math.ceil(
        train_rows / (spec.micro_batch * spec.grad_accum * spec.launch.world_size)) * math.ceil(args.num_train_epochs)
    every = math.ceil(steps * args.save_steps) if args.save_steps and args.save_steps < 1 else args.save_steps
    saves = math.ceil(steps / every) if getattr(args.save_strategy, "value", None) == "steps" and every else 1
    kept = min(saves, args.save_total_limit + 1) if args.save_total_limit else saves  # +1: one is written first
    checkpoint = adapter + 2 * 4 * sum(p.numel() for p in trained)
    try:
        check_writable([Write(Path(recipe.output.dir), "output.dir", size=kept * checkpoint),
                        Write(recipe.adapter_dir, "output.adapter_dir", replaces=True, size=2 * adapter)])
    except MedsftError as err:
        raise err.at(recipe.source_file) from None


def say_data(built: Assembly) -> None:
    """What the data stage produced, before any model loads; a mixture the drops unbalanced is refused here."""
    from medsft.data import load as data

    spec, stage = built.spec, built.data
    assert stage is not None  # called after the data stage
    say(stage.report.summary())
    lines = stage.cache_lines  # every rank's go to the manifest; the main process says its own, once
    built.cache_lines_by_rank = gather_lines(lines) if spec.launch.world_size > 1 else [lines]
    for line in lines:
        say(line.replace("data[rank 0]", "data", 1))
    for name, n in stage.dropped.items():
        if n:
            say(f"data: {n} {name} rows longer than training.max_length={spec.drop_longer_than} dropped")
    mixture = data.mixture_outcome(stage.report, stage.row_ids, data.row_ids(stage.prepared), spec.recipe.data,
                                   spec.drop_longer_than)
    if mixture:
        notice(mixture)
    say("data: " + ", ".join(f"{k} {len(v)}" for k, v in stage.prepared.items()) + " rows")


def start_over(out: Path) -> None:
    """`--resume never` in a run directory: the previous run's checkpoints and metrics are set aside (never
    deleted before this run's first complete checkpoint), so a later auto-resume cannot pick one of them up."""
    kept = set_aside(out)
    if (out / ASIDE).is_dir():
        notice(f"starting over: the previous run's checkpoints and metrics in {out} are set aside until this run's "
               "first checkpoint (put back if it fails before)")
    if kept:
        notice(f"kept in place (not medsft's): {', '.join(kept[:5])}{' …' if len(kept) > 5 else ''}")


def save_adapter(trainer: SFTTrainer, tokenizer: Any, recipe: Recipe, info: dict, test_ids: Iterable[int]) -> None:
    """Adapter + tokenizer + resolved recipe + manifest + test row ids, renamed into place at once."""
    import json
    import shutil

    import yaml

    from medsft.io.outputs import replace_dir, write_json
    from medsft.io.ownership import follow, mark
    from medsft.memory.micro_batch import recorded_recipe

    final = follow(recipe.adapter_dir, "output.adapter_dir")  # a symlink: staged beside its target, link kept
    staging = final.with_name(f".{final.name}.partial")  # the same path on every rank (ZeRO-3 gathers)
    if is_main():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:  # Trainer.save_model writes nothing under FSDP's sharded state dict type
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))  # every rank: gathers ZeRO-3/FSDP shards; only the main process writes
    if is_main():
        tokenizer.save_pretrained(staging)
        (staging / "recipe.yaml").write_text(yaml.safe_dump(recorded_recipe(recipe, info.get("batch")), sort_keys=False),
                                             encoding="utf-8")
        write_json(staging / "test_ids.json", list(test_ids))
        write_json(staging / "manifest.json", info)
        from medsft.adapter.card import write_card

        write_card(staging, json.loads(json.dumps(info, default=str)), recorded_recipe(recipe, info.get("batch")))
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe says it all
        mark(staging, "adapter", recipe=recipe.source_file, run=str(Path(recipe.output.dir).resolve()))  # last: lists every file
        replace_dir(staging, final, kind="adapter")
    trainer.accelerator.wait_for_everyone()
