#!/usr/bin/env bash
# Cloud TPU pod slice: run the same command on every worker. camjax sees
# TPU_WORKER_HOSTNAMES and calls jax.distributed.initialize(). The workdir must
# be a filesystem path every worker can reach (e.g. an NFS or gcsfuse mount).
# Usage: launch/tpu_pod.sh TPU_NAME ZONE configs/x.py /mnt/shared/runs/x [--config.x=y ...]
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd camjax && .venv/bin/python -m camjax.main --config=$config --workdir=$workdir $*"
