"""Which device a process computes on, and in which autocast dtype: one rule for every command.

    pick_device("auto")                 # this process's CUDA device when there is one, else the CPU
    pick_device("cuda", local_rank=1)   # under torchrun: the GPU of local rank 1
    pick_device("cuda:3")               # GPU 3, whatever the rank
    device_and_dtype("auto", "auto")    # (device, bf16 where the hardware has it, else None for fp32)
"""

from __future__ import annotations

import torch

from alexnet.choices import CUDA_DEVICE, device_setting
from alexnet.errors import UserError
from alexnet.precision import autocast_dtype


def pick_device(setting: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": CUDA when present, else the CPU. "cuda" is this process's GPU (local_rank, as torchrun
    numbers them); "cuda:N" names GPU N, whatever the rank."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    match = CUDA_DEVICE.fullmatch("cuda" if setting == "auto" else device_setting(setting))
    if not torch.cuda.is_available():
        raise UserError(f"--device {setting} was asked for, but PyTorch sees no CUDA device")
    count = torch.cuda.device_count()
    if match[1] is None:
        return torch.device("cuda", local_rank % count)
    index = int(match[1])
    if index >= count:
        valid = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise UserError(f"--device {setting}: there is no such GPU; PyTorch sees {valid}")
    return torch.device("cuda", index)


def device_and_dtype(device_setting: str, precision: str,
                     local_rank: int = 0) -> tuple[torch.device, torch.dtype | None]:
    """The device, then the autocast dtype on it (None: plain fp32); the dtype depends on the device."""
    device = pick_device(device_setting, local_rank)
    return device, autocast_dtype(precision, device)
