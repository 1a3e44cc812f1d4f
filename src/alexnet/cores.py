"""The CPU cores this process may use: its affinity mask (taskset, a container's or a SLURM job's cpuset),
not the machine's count, which on a shared node can be many times more; and the processes of this machine
that share them, as the launcher says. Torch-free, like data/demo.py."""

from __future__ import annotations

import os

from alexnet.errors import UserError


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):   # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def most_workers() -> int:
    """The most loader or decoding processes a command starts. Each holds a copy of the dataset's index and
    its own decoding buffers: thousands of them (a slip of the keyboard) would fill the memory first."""
    return max(32, 4 * (os.cpu_count() or 1))


def local_world(default: int = 1) -> int:
    """The processes on this machine, as the launcher says (LOCAL_WORLD_SIZE; torchrun sets it), else ``default``;
    a value that is no count (a stray export) is refused in one line wherever it is read."""
    return launcher_number("LOCAL_WORLD_SIZE", str(default), least=1)


def launcher_number(name: str, default: str, least: int = 0) -> int:
    """The launcher's count or rank ``name`` from the environment (``default`` where unset), at least ``least``."""
    value = os.environ.get(name, default)
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < least:
        raise UserError(f"the environment variable {name} is {value!r}, not a process count or number (torchrun "
                        f"sets it; unset it to run one process)")
    return number
