"""`medsft train`: recipe → data → model → SFTTrainer → adapter, in the order a reader expects.

Why one function: like TRL's own sft.py, the whole run reads top to bottom on one screen; each stage is
a plain call into the module that owns it (data, tokenized, model, placement, outputs).
"""

from __future__ import annotations

import re
from pathlib import Path

from medsft.errors import MedsftError
from medsft.model import notice

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def say(plan, message: str) -> None:
    if plan.is_main:
        print(message, flush=True)


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Checkpoints whose save finished (trainer_state.json is written last), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            if is_complete(child):
                found.append((int(match.group(1)), child))
            else:
                notice(f"skipping incomplete checkpoint {child}")
    return [path for _, path in sorted(found)]


def is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last; a checkpoint is complete once it parses."""
    import json

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def resume_point(resume: str, output_dir: str) -> str | None:
    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return str(done[-1]) if done else None
    if not is_complete(Path(resume)):
        raise MedsftError(f"--resume {resume!r} is not a complete checkpoint directory",
                          "pass a checkpoint-N directory, or --resume auto")
    return resume


def sft_config(recipe, plan, kernels: str = "off"):
    """SFTConfig from the recipe's training section plus what the launch (and kernels.choose) dictates."""
    from trl import SFTConfig

    t = dict(recipe.training)
    checkpointing = t.pop("gradient_checkpointing", True)
    user_gc_kwargs = t.pop("gradient_checkpointing_kwargs", None) or {}
    padding_free = t.get("padding_free", False)
    if padding_free and not t.get("packing"):
        # Over-long rows were already dropped (tokenized.drop_overlong); TRL refuses max_length here.
        t["max_length"] = None
    try:
        return SFTConfig(
            output_dir=recipe.output.dir,
            use_cpu=plan.use_cpu,
            ddp_find_unused_parameters=plan.ddp_find_unused_parameters,
            activation_checkpointing=checkpointing,
            gradient_checkpointing=checkpointing,
            activation_checkpointing_kwargs={**plan.checkpointing_kwargs, **user_gc_kwargs},
            use_liger_kernel=kernels == "liger",
            **t,
        )
    except (ValueError, TypeError) as err:
        raise MedsftError(f"training section rejected by trl.SFTConfig: {' '.join(str(err).split())[:300]}",
                          "fix the training section", recipe.source_file) from None


def lora_config(recipe):
    from peft import LoraConfig

    lo = recipe.lora
    return LoraConfig(r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout, bias=lo.bias,
                      target_modules=lo.target_modules, task_type="CAUSAL_LM")


def preflight_gate(recipe, plan, force: bool) -> None:
    """Before loading anything on a GPU: the main process estimates, every rank gets its verdict."""
    from accelerate.utils import broadcast_object_list

    from medsft.preflight import run_preflight

    if not plan.cuda:
        say(plan, "preflight: skipped (no GPU; `medsft preflight RECIPE --gpu-memory SIZE` estimates one)")
        return
    verdict = [None]
    if plan.is_main:
        try:
            verdict[0] = run_preflight(recipe, num_gpus=plan.world_size)[1]
        except MedsftError as err:
            verdict[0] = f"unknown ({err.what})"
    if plan.world_size > 1:
        broadcast_object_list(verdict, from_process=0)
    if verdict[0] == "won't fit" and not force:
        raise MedsftError("the memory preflight says this run won't fit on the device",
                          "apply one of the listed changes, or pass --force to try anyway", recipe.source_file)


def run(recipe, resume: str = "auto", force: bool = False):
    """Train and save the adapter. Returns the trainer (tests inspect it)."""
    from medsft import data, data_cache, kernels as kernels_mod, model as model_mod, placement
    from medsft.outputs import manifest, write_json
    from medsft.preemption import EXIT_PREEMPTED, PreemptionCallback
    from medsft.shards import gather_rows_seen
    from medsft.upstream import keep_4bit_trainable_layout

    plan = placement.detect(recipe)
    kernels = kernels_mod.detect(recipe.model.kernels, plan.cuda)
    if kernels.notice:
        notice(kernels.notice)
    args = sft_config(recipe, plan, kernels.name)  # also sets up the distributed state
    preflight_gate(recipe, plan, force)
    tokenizer = model_mod.load_tokenizer(recipe.model)

    splits, report, raw = data.load_splits(recipe.data)
    say(plan, report.summary())
    prepared, stats, dropped = data_cache.prepared_splits(recipe, raw, splits, tokenizer,
                                                          say=lambda m: print(m, flush=True))
    for name, n in dropped.items():
        if n:
            say(plan, f"data: {n} {name} rows longer than training.max_length={recipe.training.get('max_length')} dropped")
    say(plan, "data: " + ", ".join(f"{k} {len(v)}" for k, v in prepared.items()) + " rows")

    eval_questions = [p[-1]["content"] for p in splits["validation"]["prompt"][:recipe.evaluation.generations]]
    base, attn = model_mod.load_model(recipe, plan)
    keep_4bit_trainable_layout(base)  # evaluation inside training must not repack trained 4-bit weights
    kernels_ran = kernels_mod.apply(kernels.name, base)
    trainer = build_trainer(recipe, args, base, tokenizer, prepared, eval_questions)
    checkpoint = resume_point(resume, recipe.output.dir)
    if checkpoint:
        say(plan, f"resuming from {checkpoint}")
    preemption = PreemptionCallback().install()
    trainer.add_callback(preemption)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        preemption.uninstall()
    if preemption.stopped_for_signal:
        say(plan, f"preempted at step {trainer.state.global_step}: checkpoint saved in {recipe.output.dir}; "
                  f"exiting {EXIT_PREEMPTED} so the job is requeued (the same command resumes)")
        raise SystemExit(EXIT_PREEMPTED)

    rows_seen = gather_rows_seen(trainer)
    if rows_seen is not None:
        counts = ", ".join(f"rank {r}: {len(v)} rows" for r, v in sorted(rows_seen.items()))
        say(plan, f"data: rows drawn per rank: {counts}")
        Path(recipe.output.dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(recipe.output.dir) / "rows_seen.json", {str(r): v for r, v in sorted(rows_seen.items())})
    info = manifest(
        recipe=recipe.source_file,
        model=recipe.model.name,
        attn_implementation=attn,
        kernels=kernels_ran,
        launch={"world_size": plan.world_size, "distributed_type": trainer.accelerator.distributed_type.value,
                "num_processes": trainer.accelerator.num_processes},
        placement=plan.to_dict(),
        data={"source": recipe.data.source, "fingerprint": raw._fingerprint, "rows": report.total,
              "kept": report.kept, "dropped": dict(report.reasons), "overlong_dropped": dropped,
              "split_sizes": {k: len(v) for k, v in prepared.items()}, "token_lengths": stats},
        train={"global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "resumed_from": checkpoint},
    )
    save_adapter(trainer, tokenizer, recipe, info, splits["test"]["row_id"])
    say(plan, f"adapter saved to {recipe.adapter_dir}")
    return trainer


def build_trainer(recipe, args, base, tokenizer, prepared, eval_questions=()):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as TqdmCallback

    from medsft.progress import GenerationEvalCallback, MetricsFileCallback, ProgressCallback
    from medsft.trainer import trainer_class

    eval_ds = prepared["validation"] if args.eval_strategy != "no" and len(prepared["validation"]) else None
    try:
        trainer = trainer_class()(model=base, args=args, train_dataset=prepared["train"], eval_dataset=eval_ds,
                                  processing_class=tokenizer, peft_config=lora_config(recipe))
        trainer.rows_seen = []
        trainer.remove_callback(TqdmCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(ProgressCallback())
        trainer.add_callback(MetricsFileCallback(recipe.output.dir))
        if eval_questions and eval_ds is not None:
            if args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3:
                print("notice: evaluation.generations is skipped under ZeRO-3", flush=True)
            else:
                callback = GenerationEvalCallback(list(eval_questions), tokenizer, recipe.evaluation.max_new_tokens,
                                                  recipe.data.system_prompt)
                callback.trainer = trainer
                trainer.add_callback(callback)
        return trainer
    except ValueError as err:
        text = " ".join(str(err).split())
        if "Target modules" in text or "target_modules" in text:
            raise MedsftError(f"lora.target_modules {recipe.lora.target_modules!r} match no module of "
                              f"{recipe.model.name!r}", "use names like q_proj, v_proj or 'all-linear'",
                              recipe.source_file) from None
        raise


def save_adapter(trainer, tokenizer, recipe, info: dict, test_ids) -> None:
    """Adapter + tokenizer + resolved recipe + manifest + test row ids, renamed into place at once."""
    import yaml

    from medsft.outputs import replace_dir, write_json

    final = recipe.adapter_dir
    staging = final.with_name(f".{final.name}.partial")  # the same path on every rank (ZeRO-3 gathers)
    if trainer.accelerator.is_main_process:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every rank: gathers ZeRO-3 shards; only the main process writes
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(staging)
        (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
        write_json(staging / "test_ids.json", list(test_ids))
        write_json(staging / "manifest.json", info)
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe says it all
        replace_dir(staging, final)
    trainer.accelerator.wait_for_everyone()
