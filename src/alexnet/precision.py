"""Numeric precision as a setting: which autocast dtype a device gets, and whether a loss scaler is needed.

Training also takes fp64: float64 weights and arithmetic, no autocast. It is no speed setting (oneDNN has
no float64 kernels) but a reference: two set-ups that should compute the same run (one process or two,
one node or two, resumed or not) agree in float64 to about 1e-12, where in float32 the max-pool and ReLU
decisions of a few steps can turn a rounding difference into 1e-3."""

from __future__ import annotations

import contextlib

import torch

from alexnet.errors import UserError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an unusual build without oneDNN: take the safe answer
        return False


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: ROCm GPUs, and NVIDIA's from compute capability 8 (Ampere) on.
    torch.cuda.is_bf16_supported() says yes on older ones too (a V100, a T4), where bf16 is emulated, far
    slower than their fp16 tensor cores, and it asks the current GPU, not the run's."""
    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).major >= 8


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means no autocast (fp32, or fp64's float64 weights). "auto": bf16 where the hardware computes it
    natively; on an older GPU fp16 (its tensor cores; training adds the loss scaler); else fp32."""
    if precision == "fp64":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    return DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype of the network's weights: float64 for fp64, else float32 (autocast lowers the arithmetic)."""
    return torch.float64 if precision == "fp64" else torch.float32


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """What a batch is cast to before ``model``: float64 for a float64 network, else float32."""
    p = next(model.parameters(), None)
    return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32


def widen(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 (8 or 11 bits of mantissa are too few for sums and losses); others unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def name(dtype: torch.dtype | None, precision: str = "") -> str:
    if precision == "fp64":
        return "fp64"
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
