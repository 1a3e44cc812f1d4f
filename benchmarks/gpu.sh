#!/usr/bin/env bash
# Every figure of a GPU in one call, in a few minutes (alexnet bench gpu; src/alexnet/bench/gpu.py says what):
#     bash benchmarks/gpu.sh [OUT.json] [more `alexnet bench gpu` flags]
# Uses .venv when `make test` or `make demo` has built it, else the python3 at hand (with torch and this
# package importable). Prints a table; OUT.json (default bench-gpu.json, in the folder it is called from)
# holds every figure, written as each section ends. The README's GPU figures come from here; the test suite runs it at toy size on a CPU.
set -euo pipefail
OUT=bench-gpu.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac   # the caller's folder, before the cd to the checkout
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -m alexnet bench gpu --out "$OUT" "$@"
echo "gpu.sh: every figure is in $OUT"
