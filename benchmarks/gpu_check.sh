#!/usr/bin/env bash
# What a GPU should be asked, in one call of about five minutes:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the CUDA tests (tests/test_cuda.py and nvJPEG's): the Triton kernels chosen by themselves and right,
#    compile, train and evaluate on the device; 2. where a training step's time goes
#    (benchmarks/step_parts.py --profile, batch 256); 3. every figure of `alexnet bench gpu` (benchmarks/gpu.sh).
# Each part's output goes to OUT_DIR (default gpu-check/, in the folder it is called from) as well as the terminal; a part that fails does not
# stop the next. Exit status: the tests'. Uses .venv when make built it, else python3 with this checkout's src/.
set -uo pipefail
OUT=${1:-gpu-check}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac   # the caller's folder, before the cd to the checkout
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -c "import alexnet" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: no CUDA device here; on a CPU, alexnet bench and make test measure what there is" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_jpeg_store.py::test_nvjpeg_decodes_within_a_level_of_libjpeg" 2>&1 | tee "$OUT/tests.txt"
tests=${PIPESTATUS[0]}
"$PY" benchmarks/step_parts.py --batch-size 256 --profile 2>&1 | tee "$OUT/step_parts.txt"
bash benchmarks/gpu.sh "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt"
echo "gpu_check.sh: each part's output is in $OUT"
exit "$tests"
