#!/usr/bin/env bash
# Launch with DeepSpeed's own launcher and an OpenMPI-style hostfile ("worker-1 slots=8" per line).
# The launcher starts the ranks on every host (over ssh, or pdsh) from this one command:
#
#   HOSTFILE=hostfile launch/deepspeed.sh configs/demo.yaml [--set ...]
#
# Variables listed in a `.deepspeed_env` file in the working directory (KEY=VALUE lines, e.g.
# NCCL_IB_DISABLE=1) are propagated to every node by the launcher.
# One machine without ssh: a hostfile "localhost slots=2" and DEEPSPEED_ARGS="--no_ssh_check".
# On CPU-only machines export DS_ACCELERATOR=cpu; the launcher does not set OMP_NUM_THREADS, so
# this script sets it to 1 unless you did (two ranks x two threads on two cores is 4x slower).
set -euo pipefail
config=${1:?usage: launch/deepspeed.sh CONFIG [xdist args...]}
shift
: "${HOSTFILE:=hostfile}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}" "${XDIST_COMMAND:=train}"
: "${PYTHON:=python}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# shellcheck disable=SC2086  # DEEPSPEED_ARGS is a list of flags
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" ${DEEPSPEED_ARGS:-} \
  --module xdist.cli "$XDIST_COMMAND" "$config" "$@"
