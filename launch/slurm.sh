#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one task per node, all GPUs of a node per
# task. camjax sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(),
# which reads the coordinator and process ids from SLURM.
# Usage: sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/slurm.sh configs/x.py
#SBATCH --job-name=camjax
#SBATCH --ntasks-per-node=1
set -euo pipefail
config=$1; shift
srun .venv/bin/python -m camjax.main --config="$config" --workdir="runs/${SLURM_JOB_ID}" "$@"
