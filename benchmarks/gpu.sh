#!/usr/bin/env bash
# Train and inference throughput and FLOP utilisation on a CUDA machine, in a few minutes:
#     bash benchmarks/gpu.sh            (after `make test` or `make demo` has built .venv)
# Prints one JSON object per line; the README's GPU figures come from here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script measures a GPU"
print({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
       "bf16": torch.cuda.is_bf16_supported()}, flush=True)
PY
for batch in 128 512; do
    $PY -m alexnet bench train --device cuda --batch-size "$batch" --steps 10 --json
done
$PY -m alexnet bench train --device cuda --batch-size 512 --steps 10 --compile --json || echo '{"compile": "failed"}'
$PY -m alexnet bench infer --device cuda --batch-size 512 --steps 10 --json
$PY -m alexnet bench data --images 2048 --workers "$(nproc)" --json
