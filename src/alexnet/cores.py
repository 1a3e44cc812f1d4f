"""The CPU cores this process may use: its affinity mask (taskset, a container's or a SLURM job's cpuset),
not the machine's count, which on a shared node can be many times more. Torch-free, like data/demo.py."""

from __future__ import annotations

import os


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):   # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
