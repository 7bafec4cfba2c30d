#!/usr/bin/env bash
# Train every config given (default: configs/train/*.yaml) into runs/train/NAME, one after another.
# Resumable: a finished run (metrics.json present) is skipped, an interrupted one resumes.
#   bash scripts/train_grid.sh [CONFIG ...]      then: python scripts/results_table.py runs/train/*
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${DISTKG_RUNS:-runs/train}"
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(configs/train/*.yaml)
mkdir -p "$OUT"  # before the first "> $OUT/NAME.log"
for c in "${configs[@]}"; do
  name=$(basename "$c" .yaml)
  if [ -f "$OUT/$name/metrics.json" ]; then echo "skip $name (done)"; continue; fi
  echo "train $name"
  .venv/bin/distkg train --config "$c" --out "$OUT/$name" --set train.progress=false --set eval.progress=false \
    > "$OUT/$name.log" 2>&1 || { echo "FAILED $name (see $OUT/$name.log)"; }
done
