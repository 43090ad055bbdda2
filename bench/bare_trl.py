"""A bare TRL script with medsft's exact settings for tiny-cpu: the yardstick for medsft's own overhead.

Same rows, split, tokenizer, 4-bit model, LoRA and SFTConfig as `medsft train recipes/tiny-cpu.yaml` (medsft's
own assembly up to the model: medsft/train/assembly.py), but a plain SFTTrainer: no progress view, metrics file,
row recording, preflight or manifest.

    python bench/bare_trl.py --max-steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def bare_trainer(recipe, args, model, tokenizer, train_dataset, callbacks=()):
    """A plain SFTTrainer with medsft's SFTConfig: TRL's default callbacks (logs printed, no tqdm)."""
    import copy

    from trl import SFTTrainer

    from medsft.train.assembly import lora_config

    args = copy.deepcopy(args)
    args.disable_tqdm = True
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset.remove_columns("row_id"),
                      processing_class=tokenizer, peft_config=lora_config(recipe), callbacks=list(callbacks))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--output", default="runs/bench-bare-trl")
    p.add_argument("--logging-steps", type=int, default=10)
    args = p.parse_args(argv)

    from common import run_overrides, step_clock

    from medsft.launch import detect as launch
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    recipe = load_recipe(args.recipe, run_overrides(args.max_steps, args.output, args.logging_steps))
    spec = resolve(recipe, launch.detect())
    sft_args = spec.sft_config()
    built = assembly.build(spec, stop_after="model")  # the trainer is TRL's own here
    clock = step_clock()
    trainer = bare_trainer(recipe, sft_args, built.model, built.tokenizer, built.prepared["train"], [clock])
    t0 = time.perf_counter()
    result = trainer.train()
    out = {"train_runtime": time.perf_counter() - t0, "steps": trainer.state.global_step,
           "train_loss": result.training_loss, "log_times": clock.times}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
