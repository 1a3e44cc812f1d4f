"""Timing shared by the benchmarks: warm-up, then the median of timed repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` over ``repeats`` calls after ``warmup`` untimed ones.

    The median, not the best: a benchmark that reports its luckiest run flatters whoever ran it."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(ours: Callable[[], object], baseline: Callable[[], object], repeats: int,
                   warmup: int = 1) -> tuple[float, float]:
    """Median seconds of each, timed in alternation so that both see the same drift in machine load."""
    for _ in range(warmup):
        ours()
        baseline()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_seconds(ours, 1, warmup=0))
        b.append(median_seconds(baseline, 1, warmup=0))
    return statistics.median(a), statistics.median(b)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5, warmup: int = 2) -> float:
    """FLOP/s of a large square matrix product in ``dtype``: the ceiling the utilisation is measured against."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = median_seconds(lambda: a @ b, repeats, warmup=warmup)
    return 2 * n**3 / seconds
