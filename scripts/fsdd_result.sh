#!/usr/bin/env bash
# The README's "Results": pre-train fsdd_small on FSDD takes 5-49 (labels unused), then the
# EVAR linear probe on digits and speakers (takes 0-4 as test) next to both baselines, with
# 1 s clips (--unit_sec 1.0, as EVAR for 1 s speech commands; FSDD clips are 0.14-2.3 s).
# Usage: bash scripts/fsdd_result.sh [RUN_DIR]   (default runs/fsdd_small; ~30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fsdd_small}
PY=.venv/bin/python
OUT=$RUN/eval
mkdir -p "$OUT"
$PY scripts/make_fsdd_csv.py "$OUT/fsdd.csv"
SECONDS=0
$PY train.py --config configs/msm_mae.py:fsdd_small --workdir "$RUN"
echo "pre-training wall time: ${SECONDS} s" | tee "$OUT/train_time.txt"
$PY -m msm_mae_jax.export --workdir "$RUN" --out "$RUN/export"
for label in digit speaker; do
  $PY evaluate.py --checkpoint "$RUN/export" --task "csv:$OUT/fsdd.csv" --label $label --unit_sec 1.0 \
      --out "$OUT/msm_mae_$label.json" --no_progress
  $PY evaluate.py --baseline random --config configs/msm_mae.py:fsdd_small \
      --task "csv:$OUT/fsdd.csv" --label $label --unit_sec 1.0 --out "$OUT/random_$label.json" --no_progress
  $PY evaluate.py --baseline logmel --task "csv:$OUT/fsdd.csv" --label $label --unit_sec 1.0 \
      --out "$OUT/logmel_$label.json" --no_progress
done
echo "total wall time: ${SECONDS} s"
