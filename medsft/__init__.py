"""medsft: QLoRA supervised fine-tuning for medical reasoning, on one GPU, DDP, DeepSpeed or Slurm."""

from medsft.upstream import keep_bitsandbytes_off_the_hub, quiet_peft_checkpointing_alias

__version__ = "0.1.0"
keep_bitsandbytes_off_the_hub()  # before anything imports bitsandbytes
quiet_peft_checkpointing_alias()
