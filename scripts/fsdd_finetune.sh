#!/usr/bin/env bash
# The fine-tuning result of docs/finetuning.md: FSDD digits and speakers (takes 0-4 test), fine-tuning the
# fsdd_small encoder that scripts/fsdd_result.sh pre-trains (and probes), and the same encoder
# with random weights; configs/finetune.py:fsdd, one seed each (CPU budget), whole clips.
# Usage: bash scripts/fsdd_finetune.sh [RUN_DIR] [SEEDS]
#   (default runs/fsdd_small, 1 seed; needs RUN_DIR/export and RUN_DIR/eval/fsdd.csv from
#    scripts/fsdd_result.sh; the linear-probe JSONs it writes sit in RUN_DIR/eval)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fsdd_small}
SEEDS=${2:-1}
PY=.venv/bin/python
OUT=$RUN/finetune
mkdir -p "$OUT"
for label in digit speaker; do
  for model in msm_mae random; do
    if [ $model = msm_mae ]; then src=(--checkpoint "$RUN/export"); else
      src=(--random-init configs/msm_mae.py:fsdd_small); fi
    SECONDS=0
    $PY finetune.py "${src[@]}" --task "csv:$RUN/eval/fsdd.csv" --label $label \
        --config configs/finetune.py:fsdd --config.num_seeds="$SEEDS" \
        --out "$OUT/${model}_$label.json" --no-progress
    echo "$model $label: ${SECONDS} s" | tee -a "$OUT/wall_times.txt"
  done
done
