#!/usr/bin/env bash
# The TPU plan table of docs/training.md: ViT-B 80x208, ViT-L 80x208 and ViT-B 80x608 (bf16
# compute) at 128 samples per chip on v5e-16, v4-8, v4-32, v5p-128 and v5e-256, all chips on
# data, then data x fsdp 4; one JSON per (model, mesh) in scripts/plan_tpu/, then the Markdown
# table.
# Usage: bash scripts/plan_tpu.sh   (needs `make setup-tpu`; a case took 8-13 min, a few up to
#   41 min, on a busy 2-core CPU with two plans at a time: about five hours in all, niced)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=scripts/plan_tpu
mkdir -p "$OUT"
SLICES=v5e-16,v4-8,v4-32,v5p-128,v5e-256
for mesh in data fsdp; do
  for cfg in base_208 large_208 base_608; do
    m=(); [ $mesh = fsdp ] && m=(--mesh data=-1,fsdp=4)
    nice -n 10 .venv/bin/msm-mae plan --tpu $SLICES --config $cfg --batch-per-chip 128 "${m[@]}" \
      --json "$OUT/${cfg}_$mesh.json" --config.model.dtype=bfloat16
  done
done
.venv/bin/python scripts/plan_table.py "$OUT"/*.json
