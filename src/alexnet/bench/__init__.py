"""`alexnet bench data|train|infer|towers|gpu`: this project against the usual PyTorch baseline, side by side.

Each benchmark measures ours and the baseline in the same process, one after the other, and reports
images per second for both and their ratio: on shared machines absolute speeds drift, ratios much less.
Every result is a dict with at least "benchmark", "ours", "baseline" (img/s) and "ratio" (ours / baseline),
except gpu's: every figure of a GPU in one call (bench/gpu.py).
"""

from __future__ import annotations

BENCHMARKS = ("data", "train", "infer", "towers", "gpu")


def run(name: str, **kwargs) -> dict:
    if name == "data":
        from alexnet.bench.data import bench_data as fn
    elif name == "train":
        from alexnet.bench.train import bench_train as fn
    elif name == "infer":
        from alexnet.bench.infer import bench_infer as fn
    elif name == "towers":
        from alexnet.bench.towers import bench_towers as fn
    elif name == "gpu":
        from alexnet.bench.gpu import bench_gpu as fn
    else:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return fn(**kwargs)
