"""The CPU cores this process may use: its affinity mask (taskset, a container's or a SLURM job's cpuset),
not the machine's count, which on a shared node can be many times more. Torch-free, like data/demo.py."""

from __future__ import annotations

import os


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):   # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def most_workers() -> int:
    """The most loader or decoding processes a command starts. Each holds a copy of the dataset's index and
    its own decoding buffers: thousands of them (a slip of the keyboard) would fill the memory first."""
    return max(32, 4 * (os.cpu_count() or 1))
