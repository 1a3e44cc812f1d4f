"""Numeric precision as a setting: which autocast dtype a device gets, and whether a loss scaler is needed."""

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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. "auto": bf16 where the hardware computes it natively, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    return DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
