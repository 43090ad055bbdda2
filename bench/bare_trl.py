"""A bare TRL script with medsft's exact settings for tiny-cpu: the yardstick for medsft's own overhead.

Same rows, split, tokenizer, 4-bit model, LoRA and SFTConfig as `medsft train recipes/tiny-cpu.yaml`,
but a plain SFTTrainer: no progress view, metrics file, row recording, preflight or manifest.

    python bench/bare_trl.py --max-steps 40
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--output", default="runs/bench-bare-trl")
    args = p.parse_args(argv)

    from trl import SFTTrainer

    from medsft import data, model as model_mod, placement, tokenized
    from medsft.config import load_recipe
    from medsft.train import lora_config, sft_config

    recipe = load_recipe(args.recipe, [f"training.max_steps={args.max_steps}", "training.eval_strategy=no",
                                       "training.save_strategy=no", f"output.dir={args.output}"])
    plan = placement.detect(recipe)
    sft_args = sft_config(recipe, plan)
    sft_args.disable_tqdm = True
    tokenizer = model_mod.load_tokenizer(recipe.model)
    splits, _, _ = data.load_splits(recipe.data)
    prepared, _, _ = tokenized.prepare_all(splits, tokenizer, recipe.training)
    base, _ = model_mod.load_model(recipe, plan)
    trainer = SFTTrainer(model=base, args=sft_args, train_dataset=prepared["train"].remove_columns("row_id"),
                         processing_class=tokenizer, peft_config=lora_config(recipe))
    t0 = time.perf_counter()
    result = trainer.train()
    out = {"train_runtime": time.perf_counter() - t0, "steps": trainer.state.global_step,
           "train_loss": result.training_loss}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
