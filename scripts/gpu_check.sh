#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): on one GPU, in <= 8 minutes, ONE JSON with the test suite on
# CUDA (tests/runtime excluded), the main job's wall time and metrics, teacher epoch time beside a
# matmul probe in the same dtype, LLM encoding texts/s, QLoRA step time, and bf16 against fp32 training.
#   bash scripts/gpu_check.sh            # on the GPU machine: bash .gpu/device.sh bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh --smoke    # CPU, tiny sizes, < 2 minutes (CI: tests/test_gpu_check.py)
# The JSON goes to $OUT/gpu_check.json when OUT is set (the device tool fetches $OUT), else to
# runs/gpu_check/gpu_check-<UTC time>.json; its path is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODE=full
for arg in "$@"; do
  case "$arg" in
    --smoke) MODE=smoke ;;
    *) echo "gpu_check.sh: unknown argument $arg (only --smoke)" >&2; exit 2 ;;
  esac
done
if [ -n "${OUT:-}" ]; then
  JSON="$OUT/gpu_check-$MODE.json"
else
  JSON="runs/gpu_check/gpu_check-$MODE-$(date -u +%Y%m%dT%H%M%SZ).json"
fi
if [ "$MODE" = smoke ]; then
  export CUDA_VISIBLE_DEVICES=""   # the smoke run is the CPU path, on any machine
  exec "$PY" scripts/gpu_check.py --smoke --out "$JSON"
fi
exec "$PY" scripts/gpu_check.py --out "$JSON"
