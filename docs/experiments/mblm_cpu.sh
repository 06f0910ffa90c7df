#!/usr/bin/env bash
# MBLM against the unbranched multilingual CE baseline on 2 CPU cores, through the CLI only
# (docs/experiments/mblm_cpu.md has the results). Run from the repository root after `pip install -e .`,
# with the XNLI dev set in $XDIST_DATA (`xdist data fetch xnli-dev`) and the mBERT tokenizer reachable.
#   bash docs/experiments/mblm_cpu.sh            # 30-55 min on 2 idle cores (9 training runs of 2-8 min each)
# Writes runs/mblm-cpu/: three teachers, the baseline, the K = 0 control (KD without branches), the
# students of the K x lambda sweep, compare/ and
# timings.tsv (wall seconds of each training run, model parameters).
set -euo pipefail
cfg=configs/mblm/cpu
out=runs/mblm-cpu
nproc=${NPROC:-2}
mkdir -p "$out"
printf 'run\tseconds\tparameters\n' > "$out/timings.tsv"

train() {  # train NAME CONFIG [--set ...]: one run, its wall time and parameter count into timings.tsv
  local name=$1 config=$2
  shift 2
  local start=$SECONDS
  xdist train "$config" --nproc "$nproc" --overwrite --set "train.output_dir=$out/$name" "$@" \
    2>&1 | tee "$out/$name.log" | grep -E "parameters|eval .* final|error" || true
  [ -f "$out/$name/eval/final/metrics.json" ] || { echo "run $name failed: see $out/$name.log" >&2; exit 1; }
  local params
  params=$(grep -oE '[0-9.]+M parameters' "$out/$name.log" | head -1 | cut -d' ' -f1)
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$params" >> "$out/timings.tsv"
}

for lang in en de zh; do
  xdist prepare "$cfg/teacher_$lang.yaml"
  train "teacher-$lang" "$cfg/teacher_$lang.yaml"
done
xdist prepare "$cfg/baseline.yaml"
train baseline "$cfg/baseline.yaml"
runs=("$out/baseline")
# The control: K = 0 is the unbranched encoder distilled from the same teachers (every "branch" is empty, so
# the mixture is the one representation and lambda changes nothing) -- KD without branches.
train student-k0-l1 "$cfg/student.yaml" --set model.branches.layers=0 --set method.mblm.mixture_weight=1
runs+=("$out/student-k0-l1")
for k in 1 2; do
  for lambda in 0 1; do
    train "student-k$k-l$lambda" "$cfg/student.yaml" --set "model.branches.layers=$k" \
      --set "method.mblm.mixture_weight=$lambda"
    runs+=("$out/student-k$k-l$lambda")
  done
done
xdist compare "${runs[@]}" --per-cell --out "$out/compare" > "$out/compare.md"
python docs/experiments/mblm_cpu_report.py "$out"   # the tables of docs/experiments/mblm_cpu.md
echo "comparison: $out/compare.md"
