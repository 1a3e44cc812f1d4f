"""Whether a benchmark's --batch-size fits in memory: checked before the work from an estimate, and said in
one line when the allocator refuses anyway (an estimate cannot see what else the machine holds)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from alexnet.errors import UserError

# Bytes a training step of the paper network holds, measured on a CPU (peak resident memory, bf16, batch
# 16 and 64, torchvision's alexnet beside it): its weights, gradients and momentum for both networks, and
# what each image's activations add. Inference keeps no activations for a backward pass.
TRAIN = (2.0e9, 6e6)
INFER = (1.0e9, 3e6)


def need_bytes(batch: int, costs: tuple[float, float]) -> float:
    fixed, per_image = costs
    return fixed + batch * per_image


def available_bytes(device: torch.device) -> float | None:
    """What this process could still allocate on ``device``: a GPU's free memory, or on a CPU the kernel's
    MemAvailable and free swap, no more than a cgroup's limit leaves; None where it cannot be told."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return float(free)


def too_big(batch: int, need: float, free: float | None = None) -> UserError:
    there = f", {max(free, 0) / 1e9:.1f} GB are free" if free is not None else ""
    return UserError(f"--batch-size {batch} does not fit in memory here (it needs about {need / 1e9:.1f} GB"
                     f"{there}); give a smaller --batch-size")


def check_fits(batch: int, costs: tuple[float, float], device: torch.device) -> float:
    """The bytes ``batch`` needs, refused in one line before the work where they are more than are free.
    On a CPU only: the costs were measured there, and a GPU's allocator refuses cleanly by itself (caught by
    said_if_out_of_memory), where a CPU's may grant the memory and the kernel's out-of-memory killer end the
    process later."""
    need, free = need_bytes(batch, costs), available_bytes(device)
    if device.type == "cpu" and free is not None and need > free:
        raise too_big(batch, need, free)
    return need


def is_out_of_memory(text: str) -> bool:
    """Whether an error (or a child process's stderr) is an allocator's refusal: CUDA's OutOfMemoryError, or
    the CPU allocator's "[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate memory"."""
    return "OutOfMemoryError" in text or "can't allocate memory" in text or "CUDA out of memory" in text


@contextlib.contextmanager
def said_if_out_of_memory(batch: int, need: float):
    """The allocator's refusal inside as one line naming --batch-size, not a traceback."""
    try:
        yield
    except RuntimeError as e:   # torch.OutOfMemoryError is one
        if not (isinstance(e, torch.OutOfMemoryError) or is_out_of_memory(str(e))):
            raise
        raise too_big(batch, need) from None
