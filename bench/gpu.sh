#!/usr/bin/env bash
# camjax GPU benchmarks in one command: ResNet-50 training throughput (the
# CLI's train step, bf16, 224 px) from synthetic device-resident batches
# against the 5,000 img/s goal and through camjax's grain pipeline on JPEGs,
# then the HNC / L1-penalty step-time ratios (bench/loss_overhead.py) and the
# LinR step-time ratios (bench/linr_overhead.py). Every figure line starts
# with the device kind, [jax.devices()[0].device_kind].
#
#   bench/gpu.sh                      # everything (one GPU: several minutes, mostly compiling)
#   bench/gpu.sh --install            # first pip install -e '.[cuda]' into the venv
#   bench/gpu.sh --install=cuda13     # ... or '.[cuda13]'
#   bench/gpu.sh --only synthetic     # sections: synthetic,pipeline,hnc,linr
#   bench/gpu.sh --batch 512 --data /path/to/imagefolder
#   bench/gpu.sh --smoke              # tiny everything, on any machine (CPU included): wiring only
#
# Environment: PYTHON (default .venv/bin/python), JAX_COMPILATION_CACHE_DIR
# (default ~/.cache/camjax/xla, the CLI's cache: a rerun skips the compiles; compile
# times then read near 0), XLA_FLAGS passed through. Exit status: the first
# failing section's, else 0.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SMOKE=0
INSTALL=""
ONLY="synthetic,pipeline,hnc,linr"
BATCH=256
DATA=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --install) INSTALL=cuda ;;
    --install=*) INSTALL=${1#--install=} ;;
    --only) ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --batch) BATCH=$2; shift ;;
    --batch=*) BATCH=${1#--batch=} ;;
    --data) DATA=$2; shift ;;
    --data=*) DATA=${1#--data=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for section in ${ONLY//,/ }; do
  case "$section" in
    synthetic|pipeline|hnc|linr) ;;
    *) echo "gpu.sh: --only: unknown section $section (synthetic,pipeline,hnc,linr)" >&2; exit 2 ;;
  esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

if [ -n "$INSTALL" ]; then
  case "$INSTALL" in cuda|cuda13) ;; *) echo "gpu.sh: --install=cuda or cuda13" >&2; exit 2 ;; esac
  echo "== pip install -e '.[$INSTALL]'"
  "$PYTHON" -m pip install -q -e ".[$INSTALL]"
fi

export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/camjax/xla}
IFS=$'\t' read -r KIND PLATFORM COUNT VERSION < <("$PYTHON" -c 'import jax
print(jax.devices()[0].device_kind, jax.default_backend(), jax.device_count(), jax.__version__,
      sep="\t")')
[ -n "$KIND" ] || { echo "gpu.sh: $PYTHON could not start jax" >&2; exit 2; }
echo "gpu.sh: device [$KIND], platform $PLATFORM, $COUNT device(s), jax $VERSION, smoke=$SMOKE"
if [ "$PLATFORM" = cpu ] && [ "$SMOKE" = 0 ]; then
  echo "gpu.sh: JAX sees no GPU (platform cpu): install the plugin with --install, or run --smoke" >&2
  exit 2
fi

# Each line of a sub-benchmark's output, prefixed with the device kind.
tag() { awk -v k="$KIND" '{ print "[" k "] " $0; fflush() }'; }
section() {  # section NAME COMMAND...: run it, its output tagged, and time it
  local name=$1 start=$SECONDS
  shift
  echo
  echo "== $name"
  "$@"
  echo "== $name: $((SECONDS - start)) s"
}

if wants synthetic || wants pipeline; then
  modes=""
  if wants synthetic; then modes="synthetic"; fi
  if wants pipeline; then modes="${modes:+$modes,}pipeline"; fi
  args=(--modes "$modes")
  if [ "$SMOKE" = 1 ]; then args+=(--smoke); else args+=(--batch "$BATCH"); fi
  if [ -n "$DATA" ]; then args+=(--data "$DATA"); fi
  section "ResNet-50 training throughput (bench/resnet50_throughput.py ${args[*]})" \
    "$PYTHON" bench/resnet50_throughput.py "${args[@]}"
fi

if wants hnc; then
  if [ "$SMOKE" = 1 ]; then
    # loss_overhead.py has no model flag and its --quick still compiles
    # ResNet-56 four times; the smoke runs its bench_case on a ResNet-8.
    run_hnc() {
      "$PYTHON" -c 'import argparse, sys; sys.path.insert(0, "bench"); import loss_overhead as lo
lo.bench_case("resnet8", size=16, num_classes=12, k=3, batch_size=8,
              args=argparse.Namespace(rounds=2, steps=1, quick=True, conv_impl="xla"))' | tag
    }
  else
    run_hnc() {
      "$PYTHON" bench/loss_overhead.py --cases resnet56 resnet50 --batch-resnet56 128 \
        --batch-resnet50 64 --rounds 7 --steps 5 | tag
    }
  fi
  section "HNC / L1 step-time ratios, float32 (bench/loss_overhead.py)" run_hnc
fi

if wants linr; then
  if [ "$SMOKE" = 1 ]; then
    linr_args=(--model resnet8 --size 16 --batch 8 --num-classes 10 --rounds 2 --steps 1)
  else
    linr_args=(--model resnet18_imagenet --size 224 --batch 256 --num-classes 1000
               --dtype bfloat16 --rounds 7 --steps 5)
  fi
  run_linr() { "$PYTHON" bench/linr_overhead.py "${linr_args[@]}" | tag; }
  section "LinR step-time ratios (bench/linr_overhead.py ${linr_args[*]})" run_linr
fi
echo
echo "gpu.sh: done on [$KIND]"
