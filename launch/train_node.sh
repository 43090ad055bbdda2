#!/usr/bin/env bash
# One node's share of a Slurm training job: run by `srun` once per node (see *.sbatch).
# Everything node-specific is read here, on the node itself: SLURM_NODEID is expanded by this
# shell on each node, never by the batch shell (where it would be 0 everywhere: the classic bug).
set -euo pipefail
: "${MEDSFT_RECIPE:?}" "${MEDSFT_ACCEL_CONFIG:?}" "${MASTER_ADDR:?}" "${MASTER_PORT:?}" "${GPUS_PER_NODE:?}"
NNODES=${SLURM_JOB_NUM_NODES:-1}
NODE_RANK=${SLURM_NODEID:-0}
# This node's own GPUs: Slurm's count must be what CUDA will see (a node whose GPUs are hidden or missing
# would start its processes on the CPU, or fail in the first collective).
if [ "${MEDSFT_ALLOW_CPU:-0}" != 1 ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE}" != 0 ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    visible=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)  # grep -c: 0 matches exit 1
  elif command -v nvidia-smi > /dev/null; then
    visible=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
  else
    visible=0
  fi
  if [ "$visible" -lt "$GPUS_PER_NODE" ]; then
    echo "error: node $(hostname): Slurm allocated ${GPUS_PER_NODE} GPUs but ${visible} are visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}) — check the node's GPUs (nvidia-smi) and the job's --gpus-per-node" >&2
    exit 2
  fi
fi
echo "[medsft] node $(hostname) rank ${NODE_RANK}/${NNODES}: ${GPUS_PER_NODE} processes, head ${MASTER_ADDR}:${MASTER_PORT}"
# exec: the launcher becomes the task process, so the signals srun forwards reach it (and the workers).
# `medsft launch` is accelerate launch with medsft's checks first (a bad recipe: one line, exit 2) and the
# workers' exit status passed on (75 after a preemption checkpoint: slurm_job.sh requeues).
# MEDSFT_EXTRA_ARGS holds the --set overrides, one per line (spaces inside values survive).
mapfile -t extra < <(printf '%s' "${MEDSFT_EXTRA_ARGS:-}")
exec python -m medsft launch \
  --config_file "${MEDSFT_ACCEL_CONFIG}" \
  --num_machines "${NNODES}" \
  --machine_rank "${NODE_RANK}" \
  --num_processes "$((NNODES * GPUS_PER_NODE))" \
  --main_process_ip "${MASTER_ADDR}" \
  --main_process_port "${MASTER_PORT}" \
  --rdzv_backend static \
  train "${MEDSFT_RECIPE}" "${extra[@]}"
