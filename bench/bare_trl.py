"""Plain TRL, nothing of medsft imported: the yardstick for medsft's own per-step overhead.

The notebook's code path (load the rows, a 4-bit NF4 model from bitsandbytes, PEFT LoRA, `SFTTrainer` with
its own tokenization), with padding-free batches and completion-only loss on prompt/completion rows, as a
user of TRL alone would write it. The values (model directory, rows, SFTConfig, LoRA, quantization) come
from a settings file that bench/cpu.py writes from medsft's resolved run, so both train the same rows with
the same settings; this process only reads it as data.

    python bench/bare_trl.py SETTINGS.json [--baton READ_FD WRITE_FD]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def trainer_from(settings: dict, callbacks: list) -> object:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    q = settings["quantization"]
    dtype = getattr(torch, settings["dtype"])
    model = AutoModelForCausalLM.from_pretrained(settings["model_dir"], dtype=dtype, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"] or settings["dtype"]),
        bnb_4bit_quant_storage=getattr(torch, q["quant_storage"])))
    tokenizer = AutoTokenizer.from_pretrained(settings["model_dir"])
    rows = load_dataset("json", data_files=settings["train_file"], split="train")
    lora = settings["lora"]
    return SFTTrainer(model=model, args=SFTConfig(**settings["sft"]), train_dataset=rows, processing_class=tokenizer,
                      peft_config=LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             bias=lora["bias"], target_modules=lora["target_modules"],
                                             task_type="CAUSAL_LM"),
                      callbacks=callbacks)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("settings", type=Path)
    p.add_argument("--baton", nargs=2, type=int, metavar=("READ_FD", "WRITE_FD"))
    args = p.parse_args(argv)
    settings = json.loads(args.settings.read_text())
    from common import step_clock

    clock = step_clock()
    callbacks: list = [clock]
    if args.baton:
        from baton import baton_callback

        callbacks.append(baton_callback(*args.baton))  # last: its cycle covers the other callbacks' work
    trainer = trainer_from(settings, callbacks)
    t0 = time.perf_counter()
    result = trainer.train()
    assert not any(name == "medsft" or name.startswith("medsft.") for name in sys.modules), "medsft was imported"
    out = {"train_runtime": time.perf_counter() - t0, "steps": trainer.state.global_step,
           "train_loss": result.training_loss, "log_times": clock.times,
           "cycles": callbacks[-1].cycles if args.baton else []}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
