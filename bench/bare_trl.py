"""A bare TRL script with medsft's exact settings for tiny-cpu: the yardstick for medsft's own overhead.

Same rows, split, tokenizer, 4-bit model, LoRA and SFTConfig as `medsft train recipes/tiny-cpu.yaml`,
but a plain SFTTrainer: no progress view, metrics file, row recording, preflight or manifest.

    python bench/bare_trl.py --max-steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--output", default="runs/bench-bare-trl")
    p.add_argument("--logging-steps", type=int, default=10)
    args = p.parse_args(argv)

    from trl import SFTTrainer

    from common import step_clock
    from medsft import data, kernels, model as model_mod, placement, tokenized
    from medsft.config import load_recipe
    from medsft.train import lora_config, sft_config

    recipe = load_recipe(args.recipe, [f"training.max_steps={args.max_steps}", "training.eval_strategy=no",
                                       "training.save_strategy=no", f"output.dir={args.output}",
                                       f"training.logging_steps={args.logging_steps}"])
    plan = placement.detect(recipe)
    kernel = kernels.detect(recipe.model.kernels, plan.cuda).name
    sft_args = sft_config(recipe, plan, kernel)
    sft_args.disable_tqdm = True
    tokenizer = model_mod.load_tokenizer(recipe.model)
    splits, _, _ = data.load_splits(recipe.data)
    prepared, _, _ = tokenized.prepare_all(splits, tokenizer, recipe.training)
    base, _ = model_mod.load_model(recipe, plan)
    kernels.apply(kernel, base)
    clock = step_clock()
    trainer = SFTTrainer(model=base, args=sft_args, train_dataset=prepared["train"].remove_columns("row_id"),
                         processing_class=tokenizer, peft_config=lora_config(recipe), callbacks=[clock])
    t0 = time.perf_counter()
    result = trainer.train()
    out = {"train_runtime": time.perf_counter() - t0, "steps": trainer.state.global_step,
           "train_loss": result.training_loss, "log_times": clock.times}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
