#!/usr/bin/env bash
# ALSACE (Zhao et al.) on a 2-core CPU with a small random-init model: stage 0 (English XNLI dev rows, prompt
# head, CE) -> teacher selection by majority vote on the unlabelled XNLI test text (15 languages) ->
# pair shards -> cross-lingual self-distillation -> per-language accuracy, groups before/after, McNemar.
# Writes runs/alsace-cpu/. Sizes below are the ones of docs/experiments/alsace_cpu.md (smaller than the
# recipes' defaults, to fit a loaded 2-core machine): 300 vote instances, 30 instances per language pair.
#
#   bash docs/experiments/alsace_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
xdist=${XDIST:-.venv/bin/xdist}
cfg=configs/alsace/cpu
small=(--set train.epochs=2 --set data.samples_per_shard=256)
distil=(--set data.train.0.max_examples=300 --set method.alsace.selection.max_instances=300
        --set method.alsace.pairs.per_pair=30 --set data.samples_per_shard=256)
$xdist prepare $cfg/stage0.yaml "${small[@]}"
$xdist train $cfg/stage0.yaml --nproc 2 "${small[@]}"
$xdist select-teachers $cfg/distil.yaml --checkpoint runs/alsace-cpu/stage0/export --nproc 2 "${distil[@]}"
$xdist prepare $cfg/distil.yaml "${distil[@]}"
$xdist train $cfg/distil.yaml --nproc 2 "${distil[@]}"
$xdist compare runs/alsace-cpu/stage0 runs/alsace-cpu/distil --names stage0,alsace \
  --selection runs/alsace-cpu/selection/selection.json --out runs/alsace-cpu/compare
