#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the embedded defaults.
# Data root: $DISTKG_DATA, else ../shared/data beside the checkout if present, else the cache's data/
# folder (README, "Data"), where the dataset is downloaded (with sha256 checks) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DISTKG_DATA:-}" ] && [ -d ../shared/data ]; then
  export DISTKG_DATA="$(cd ../shared/data && pwd)"
fi
CONFIG="${1:-configs/quickstart.yaml}"
OUT="${2:-runs/quickstart}"
DATASET=$(.venv/bin/python -c "import sys; from distkg.config import load_config; print(load_config(sys.argv[1]).data.dataset)" "$CONFIG")
if ! .venv/bin/distkg data stats "$DATASET" >/dev/null 2>&1 && ! .venv/bin/distkg data download "$DATASET"; then
  ROOT=$(.venv/bin/python -c "from distkg.data import resolve_data_root; print(resolve_data_root())")
  echo "quickstart: no $DATASET/ in the data root $ROOT and its download failed; set DISTKG_DATA to a folder that holds $DATASET/ (distkg commands also take --data-root), or DISTKG_DATA_MIRROR to a mirror that serves it" >&2
  exit 1
fi
.venv/bin/distkg run "$CONFIG" --out "$OUT"
echo "results: $OUT/metrics.json  $OUT/report.md"
