#!/usr/bin/env bash
# Train on several nodes with SLURM: one task per node runs torchrun, which starts one process
# per GPU; the tasks meet through a c10d rendezvous on the first node. Requeued or resubmitted,
# the same script resumes the run exactly (it adds --resume once the folder holds last.pt).
#   sbatch --nodes 4 examples/train_slurm.sh examples/configs/k400_cpnet_r101.toml data/k400_4 runs/k400_cpnet_r101
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=128
#SBATCH --signal=TERM@120          # SIGTERM to every task two minutes before the time limit
#SBATCH --requeue
set -euo pipefail
CONFIG=${1:?config file}
DATA=${2:?prepared data folder}
OUT=${3:?run folder}
GPUS=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RESUME=()
if [ -f "$OUT/last.pt" ]; then RESUME=(--resume); fi
# On SIGTERM (the time limit, scancel, preemption) torchrun passes it to its workers, which
# stop at the next safe point, write last.pt (rank 0) and exit within seconds.
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
    --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" --rdzv_id "$SLURM_JOB_ID" \
    -m vcorr.cli train "$CONFIG" --data "$DATA" --out "$OUT" --no-progress "${RESUME[@]}" \
    --set data.workers=$(( SLURM_CPUS_PER_TASK / GPUS ))
