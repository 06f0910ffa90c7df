#!/usr/bin/env bash
# The GPU check in one command (README, "GPU check"); writes docs/benchmarks/gpu_check_<date>_<device>.md.
#
#   kernels/bench/gpu_check.sh --fetch-wheels [--python 3.11]            # where there is network: wheels of
#                                              # what the GPU image lacks -> kernels/bench/wheels/
#   kernels/bench/gpu_check.sh [--dry-run] [gpu_check options]           # on the GPU machine, offline
#
# PYTHON picks the interpreter (default python3), XDIST_WHEELS the wheel folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=${XDIST_WHEELS:-kernels/bench/wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's xdist and kernels, installed or not

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  shift
  exec "$PYTHON" -m kernels.bench.gpu_check_wheels fetch --dest "$WHEELS" "$@"
fi
# Install from the carried wheels only what is missing (GPU images bring torch, triton, transformers).
if ! "$PYTHON" -c "import deepspeed, webdataset, accelerate, tensorboard, matplotlib, pytest" 2>/dev/null; then
  echo "gpu_check.sh: installing the missing packages from $WHEELS (no index)"
  "$PYTHON" -m kernels.bench.gpu_check_wheels install --dest "$WHEELS"
fi
exec "$PYTHON" -m kernels.bench.gpu_check "$@"
