"""medsft: QLoRA supervised fine-tuning for medical reasoning, on one GPU, DDP, DeepSpeed or Slurm."""

from medsft.upstream import quiet_bitsandbytes_kernel_hub

__version__ = "0.1.0"
quiet_bitsandbytes_kernel_hub()  # before anything imports bitsandbytes
