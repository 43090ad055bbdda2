#!/usr/bin/env bash
# The body shared by single_node.sbatch and multi_node.sbatch (sourced from the batch shell).
# Usage inside an allocation: slurm_job.sh RECIPE ACCELERATE_CONFIG [--set key=value ...]
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch launch/multi_node.sbatch RECIPE ACCELERATE_CONFIG [--set key=value ...]" >&2
  exit 2
fi
export MEDSFT_RECIPE=$1 MEDSFT_ACCEL_CONFIG=$2
shift 2
MEDSFT_EXTRA_ARGS=$(printf '%s\n' "$@")
export MEDSFT_EXTRA_ARGS
[ -f "$MEDSFT_RECIPE" ] || { echo "error: recipe $MEDSFT_RECIPE not found — run sbatch from the repository root" >&2; exit 2; }
[ -f "$MEDSFT_ACCEL_CONFIG" ] || { echo "error: accelerate config $MEDSFT_ACCEL_CONFIG not found — see accelerate_configs/" >&2; exit 2; }

# GPUs per node from Slurm's own variables (never hard-coded). A job without GPUs is refused here, before any
# worker starts, unless the accelerate config is a CPU one or the user says so (MEDSFT_ALLOW_CPU=1).
gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
gpus=${gpus##*:}  # "h100:8" -> "8"
if [ -z "$gpus" ] || [ "$gpus" = 0 ]; then
  if grep -Eiq '^[[:space:]]*(use_cpu:[[:space:]]*true|distributed_type:[[:space:]]*["'"'"']?MULTI_CPU)' "$MEDSFT_ACCEL_CONFIG" \
     || [ "${MEDSFT_ALLOW_CPU:-0}" = 1 ]; then
    gpus=1  # one CPU process per node
  else
    echo "error: Slurm job ${SLURM_JOB_ID:-?} has no GPUs (SLURM_GPUS_ON_NODE is ${SLURM_GPUS_ON_NODE:-unset}) but $MEDSFT_ACCEL_CONFIG trains on GPUs — submit with --gpus-per-node=N (#SBATCH --gpus-per-node in launch/*.sbatch, or medsft slurm … --gpus-per-node N), or set MEDSFT_ALLOW_CPU=1 to train on the CPU on purpose" >&2
    exit 2
  fi
fi
export GPUS_PER_NODE=$gpus
nodes=${SLURM_JOB_NUM_NODES:-1}
if [ "$nodes" -gt 1 ]; then
  # The head node's address from the allocation, and a port that is free on it (this shell runs there).
  head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  MASTER_ADDR=$(scontrol show node "$head_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
  export MASTER_ADDR=${MASTER_ADDR:-$head_node}
else
  export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
fi
export MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
# Defaults that make distributed failures debuggable rather than silent hangs.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export PYTHONUNBUFFERED=1 HF_HUB_ENABLE_HF_TRANSFER=${HF_HUB_ENABLE_HF_TRANSFER:-0}
# torch elastic kills workers 30 s after passing a signal on; a large model's checkpoint needs longer, and
# the warning comes 5 minutes ahead (--signal=B:USR1@300)
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}

echo "[medsft] job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${nodes} nodes x ${GPUS_PER_NODE}, recipe ${MEDSFT_RECIPE}, config ${MEDSFT_ACCEL_CONFIG}"
preempted=0
if [ "$nodes" -gt 1 ]; then
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash launch/train_node.sh &
else
  bash launch/train_node.sh &  # one node: this shell's own node, no job step needed
fi
srun_pid=$!
# --signal=B:USR1@300 lands here: pass it on as SIGTERM; medsft checkpoints after the current step.
trap 'preempted=1; echo "[medsft] time limit near: checkpointing, then requeue"; kill -TERM "$srun_pid"' USR1
wait "$srun_pid"; status=$?
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; status=$?; done
if [ "$preempted" = 1 ] || [ "$status" = 75 ]; then
  echo "[medsft] requeueing job ${SLURM_JOB_ID}; it resumes from the newest complete checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
fi
echo "[medsft] job ${SLURM_JOB_ID} exit ${status}"
exit "$status"
