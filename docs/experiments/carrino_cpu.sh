#!/usr/bin/env bash
# Carrino et al. on a 2-core CPU with small random-init models: stage 1 (TyDi QA English, CE), then
# stage 2 CE vs SKD vs SKD + mAP@k on cross-lingually sampled XQuAD training articles (7 MLQA
# languages), evaluated on held-out XQuAD articles (49 cells), compared with a Wilcoxon test; plus the
# wall-clock cost of the online teacher vs the teacher-logit cache. Writes runs/carrino-cpu/.
#
#   bash docs/experiments/carrino_cpu.sh            # everything (about an hour on 2 cores)
#   SKIP_STAGE1=1 bash docs/experiments/carrino_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
xdist=${XDIST:-.venv/bin/xdist}
cfg=configs/carrino/cpu
timed() {  # timed NAME COMMAND...: run, record wall seconds in runs/carrino-cpu/timings.tsv
  local name=$1; shift
  local start=$EPOCHREALTIME
  "$@"
  awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' \
    >> runs/carrino-cpu/timings.tsv
}
mkdir -p runs/carrino-cpu
if [ -z "${SKIP_STAGE1:-}" ]; then
  $xdist prepare $cfg/stage1_teacher.yaml
  timed stage1 $xdist train $cfg/stage1_teacher.yaml --nproc 2
fi
for variant in ce skd skd_map; do
  $xdist prepare $cfg/stage2_$variant.yaml
  rm -rf "runs/carrino-cpu/stage2-${variant//_/-}"
  timed "stage2-${variant//_/-} (online teacher)" $xdist train $cfg/stage2_$variant.yaml --nproc 2
done
# The same SKD + mAP@k run with the full teacher-logit cache: identical losses, different wall clock.
rm -rf runs/carrino-cpu/stage2-skd-map-cache
timed "stage2-skd-map (full teacher cache)" $xdist train $cfg/stage2_skd_map.yaml --nproc 2 \
  --set method.teacher_cache=full --set train.output_dir=runs/carrino-cpu/stage2-skd-map-cache
$xdist compare runs/carrino-cpu/stage2-ce runs/carrino-cpu/stage2-skd runs/carrino-cpu/stage2-skd-map \
  --names ce,skd,skd-map --out runs/carrino-cpu/compare
