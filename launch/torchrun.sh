#!/usr/bin/env bash
# Multi-node (or single-node) launch with torchrun's c10d rendezvous. Run the same command on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 NPROC_PER_NODE=8 launch/torchrun.sh configs/demo.yaml [--set ...]
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 NPROC_PER_NODE=8 launch/torchrun.sh configs/demo.yaml [--set ...]
#
# Extra arguments go to `xdist train` (e.g. --resume, --set train.lr=3e-5). Set XDIST_COMMAND=eval to
# run `xdist eval` instead. On CPU-only machines export DS_ACCELERATOR=cpu (gloo backend).
set -euo pipefail
config=${1:?usage: launch/torchrun.sh CONFIG [xdist args...]}
shift
: "${NNODES:=1}" "${NODE_RANK:=0}" "${NPROC_PER_NODE:=1}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}"
: "${XDIST_COMMAND:=train}" "${PYTHON:=python}"
# torchrun sets OMP_NUM_THREADS=1 for >1 local ranks; keep the user's value if they chose one.
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-xdist}" \
  -m xdist.cli "$XDIST_COMMAND" "$config" "$@"
