#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite (what CI runs). Extra arguments go to pytest.
#   --fast   the tests that need no data files and no Ray and are not marked slow or faults (the lanes
#            of pyproject.toml's markers, set by tests/conftest.py; tiny random LLMs are in): under 2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
lane=()
if [ "${1:-}" = "--fast" ]; then
  shift
  lane=(-m "not data and not ray and not slow and not faults and not readme")
fi
exec .venv/bin/python -m pytest -q --timeout 600 "${lane[@]}" "$@"
