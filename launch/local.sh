#!/usr/bin/env bash
# One process on this machine (all local CPUs/GPUs form the ('data',) mesh).
# Usage: launch/local.sh configs/default.py [--workdir=DIR] [--config.x=y ...]
set -euo pipefail
config=$1; shift
exec .venv/bin/python -m camjax.main --config="$config" "$@"
