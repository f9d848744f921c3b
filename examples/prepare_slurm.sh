#!/usr/bin/env bash
# Prepare Kinetics-400 at 1/12 of its frame rate with 8 SLURM array tasks writing one OUT.
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
set -euo pipefail
K400=${K400:-/datasets/kinetics400}
vcorr prepare --format kinetics \
    --annotations "$K400/annotations/train.csv" --annotations "$K400/annotations/validate.csv" \
    --root "$K400/videos" --out data/k400_every12 --every 12 --short-side 128 \
    --workers "${SLURM_CPUS_PER_TASK:-16}" --part "${SLURM_ARRAY_TASK_ID}/8" --no-progress
