#!/usr/bin/env bash
# Single-GPU debugging outside Slurm: the same entrypoint through accelerate's single-GPU config.
#   launch/local.sh recipes/qwen3-0.6b.yaml --set training.max_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: launch/local.sh RECIPE [--set key=value ...]" >&2; exit 2; }
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
exec python -m medsft launch --config_file accelerate_configs/single_gpu.yaml train "$@"
