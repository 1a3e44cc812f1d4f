#!/usr/bin/env bash
# Every figure of a GPU in one call, in a few minutes (alexnet bench gpu; src/alexnet/bench/gpu.py says what):
#     bash benchmarks/gpu.sh [OUT.json] [more `alexnet bench gpu` flags]
# Uses .venv when `make test` or `make demo` has built it, else the python3 at hand (with torch and this
# package importable). Prints a table; OUT.json (default bench-gpu.json) holds every figure, written as
# each section ends. The README's GPU figures come from here; the test suite runs it at toy size on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
OUT=bench-gpu.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
exec "$PY" -m alexnet bench gpu --out "$OUT" "$@"
