#!/usr/bin/env bash
# Seed robustness of the MBLM CPU experiment (docs/experiments/mblm_cpu.md, section "Across seeds"): the
# baseline, the K = 0 control and the K = 2 students (lambda 0 and 1) with several training seeds (model
# init, batch order, dropout), against the same three teachers. Through the CLI only; run from the
# repository root after `pip install -e .`, with the XNLI dev set in $XDIST_DATA and the mBERT tokenizer
# reachable, like mblm_cpu.sh.
#   bash docs/experiments/mblm_cpu_seeds.sh      # 25-30 min per seed on 2 idle cores after mblm_cpu.sh (4 runs)
#   SEEDS="1 2 42" bash docs/experiments/mblm_cpu_seeds.sh
# Writes runs/mblm-cpu-seeds/s<seed>/{baseline,student-k0-l1,student-k2-l0,student-k2-l1,compare}/ and
# reuses the teachers of runs/mblm-cpu/ (trains them first, seed 42, if they are not there): the spread
# measured is the student's and the baseline's, not the teachers'. The configs' own seed, 42, is the run of
# mblm_cpu.sh: linked as s42 when it is there and 42 is not in SEEDS.
set -euo pipefail
cfg=configs/mblm/cpu
teachers=runs/mblm-cpu
out=runs/mblm-cpu-seeds
nproc=${NPROC:-2}
seeds=${SEEDS:-1 2 3}
mkdir -p "$out"

train() {  # train NAME CONFIG [--set ...]: one run; stops the script if it left no final metrics
  local dir=$1 config=$2
  shift 2
  xdist train "$config" --nproc "$nproc" --overwrite --set "train.output_dir=$dir" "$@" \
    > "$dir.log" 2>&1 || true
  [ -f "$dir/eval/final/metrics.json" ] || { echo "run $dir failed: see $dir.log" >&2; exit 1; }
  echo "$dir done"
}

for lang in en de zh; do
  if [ ! -f "$teachers/teacher-$lang/export/config.json" ]; then
    xdist prepare "$cfg/teacher_$lang.yaml"
    mkdir -p "$teachers"
    train "$teachers/teacher-$lang" "$cfg/teacher_$lang.yaml"
  fi
done
xdist prepare "$cfg/baseline.yaml"
for seed in $seeds; do
  dir=$out/s$seed
  mkdir -p "$dir"
  train "$dir/baseline" "$cfg/baseline.yaml" --set "train.seed=$seed"
  train "$dir/student-k0-l1" "$cfg/student.yaml" --set "train.seed=$seed" \
    --set model.branches.layers=0 --set method.mblm.mixture_weight=1
  for lambda in 0 1; do
    train "$dir/student-k2-l$lambda" "$cfg/student.yaml" --set "train.seed=$seed" \
      --set model.branches.layers=2 --set "method.mblm.mixture_weight=$lambda"
  done
  xdist compare "$dir/baseline" "$dir/student-k0-l1" "$dir/student-k2-l0" "$dir/student-k2-l1" \
    --per-cell --out "$dir/compare" > "$dir/compare.md"
done
if [[ " $seeds " != *" 42 "* && -f runs/mblm-cpu/compare/comparison.json ]]; then
  ln -sfn ../mblm-cpu "$out/s42"
fi
python docs/experiments/mblm_cpu_seeds_report.py "$out"
