"""medsft: QLoRA supervised fine-tuning for medical reasoning, on one GPU, DDP, DeepSpeed or Slurm."""

__version__ = "0.1.0"
