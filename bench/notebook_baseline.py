"""The original notebook's training as a plain script: what users would otherwise run.

Its settings, including its two defects: a `messages` column (so `completion_only_loss` does not apply
and the question is trained too) and transformers' `DataCollatorWithFlattening`. Pointed at the same
model and data as a medsft recipe, so the two can be timed side by side.

    python bench/notebook_baseline.py --model builtin:tiny-qwen2 --data builtin:tiny-medical --max-steps 20
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
    p.add_argument("--model", default="builtin:tiny-qwen2")
    p.add_argument("--data", default="builtin:tiny-medical")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--bf16", action="store_true", help="the notebook's bf16 (slow on CPUs)")
    p.add_argument("--output", default="runs/bench-notebook")
    p.add_argument("--logging-steps", type=int, default=10, help="the notebook's 10; the benchmark uses 1")
    args = p.parse_args(argv)

    import torch
    from common import install_random_weights_loader, step_clock
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorWithFlattening
    from trl import SFTConfig, SFTTrainer

    from medsft.data.load import load_raw
    from medsft.model.load import resolve_model_path
    from medsft.recipe.data_section import DataSection

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    raw = load_raw(DataSection(source=args.data))

    def preprocess_function(example):  # the notebook's formatting, verbatim in spirit
        return {"messages": [{"role": "user", "content": example["Question"]},
                             {"role": "assistant",
                              "content": f"<think>{example['Complex_CoT']}</think>{example['Response']}"}]}

    dataset = raw.map(preprocess_function, remove_columns=raw.column_names)
    first = dataset.train_test_split(test_size=0.2, seed=816)
    second = first["test"].train_test_split(test_size=0.5, seed=816)
    train_dataset, eval_dataset = first["train"], second["train"]

    install_random_weights_loader()  # bench/proof.py's random-weight models: drawn on the GPU, no files read
    path = resolve_model_path(args.model)
    import importlib.util

    # the notebook's flash_attention_2 where it can run here, else what transformers would give it (sdpa)
    attn = ("flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True,
                             bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=bnb,
                                                 attn_implementation=attn,
                                                 device_map="auto" if torch.cuda.is_available() else None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                             target_modules=["self_attn.q_proj", "self_attn.v_proj", "self_attn.k_proj",
                                             "self_attn.o_proj"])
    sft_config = SFTConfig(output_dir=args.output, max_steps=args.max_steps,
                           per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                           learning_rate=2e-5, max_length=args.max_length, logging_steps=args.logging_steps,
                           save_strategy="no",
                           eval_strategy="no", bf16=args.bf16, gradient_checkpointing=True, loss_type="dft",
                           completion_only_loss=True, use_cpu=not torch.cuda.is_available(), report_to="none",
                           disable_tqdm=True)
    clock = step_clock()
    trainer = SFTTrainer(model=model, train_dataset=train_dataset, eval_dataset=eval_dataset, args=sft_config,
                         peft_config=peft_config, data_collator=DataCollatorWithFlattening(),
                         processing_class=tokenizer, callbacks=[clock])
    batch = next(iter(trainer.get_train_dataloader()))
    trained = int((batch["labels"] != -100).sum())
    total = int(batch["input_ids"].numel())
    t0 = time.perf_counter()
    result = trainer.train()
    logged = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r]
    out = {"train_runtime": time.perf_counter() - t0, "steps": trainer.state.global_step,
           "train_loss": result.training_loss, "first_batch_trained_token_share": trained / total,
           "log_times": clock.times, "attention": attn, "num_tokens": logged[-1] if logged else None,
           "peak_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
