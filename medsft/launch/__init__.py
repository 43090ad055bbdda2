"""The launch: what accelerate, torchrun or Slurm started, and where the model goes in it."""
