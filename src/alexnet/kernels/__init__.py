"""Hand-written kernels for what PyTorch has no fast single op for: LRN and the training crop in C on
the CPU (build.py says how they are built and when they are not), and both in Triton on CUDA."""

from __future__ import annotations

import ctypes
import importlib
import os
import warnings
from functools import cache
from types import ModuleType

from .build import load

_I64, _INT, _F32, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p


def pixel_strides(t) -> tuple[int, int, int]:
    """A dense 4-D tensor's (N, C, P = H W) strides in elements, as every kernel here sees it: H and W
    merge into one run of pixels in both NCHW and channels_last."""
    return t.stride(0), t.stride(1), t.stride(3) if t.shape[3] > 1 else t.stride(2)


def constant_to_the_compiler(fn):
    """torch.compiler.assume_constant_result, for the checks of whether a kernel is there: the same mark
    on the function (tests/test_lrn.py holds them equal), without that function's import of torch._dynamo,
    which would add a second to every command's start for a mark only a compiler run reads."""
    fn._dynamo_marked_constant = True
    return fn


@cache
def lrn_cpu() -> ctypes.CDLL | None:
    lib = load("lrn_cpu")
    if lib is not None:
        lib.lrn_forward.argtypes = [_PTR, _PTR, _INT, *[_I64] * 7, _INT, _F32, _F32, _F32, _INT]
        lib.lrn_forward.restype = None
        lib.lrn_backward.argtypes = [_PTR, _PTR, _PTR, _INT, *[_I64] * 10, _INT, _F32, _F32, _F32, _INT]
        lib.lrn_backward.restype = None
    return lib


@cache
def crop_cpu() -> ctypes.CDLL | None:
    lib = load("crop_cpu")
    if lib is not None:
        lib.crop_normalize.argtypes = [_PTR, _I64, _I64, _PTR, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR,
                                       _I64, _I64, _PTR, _INT]
        lib.crop_normalize.restype = None
    return lib


def _triton(name: str, fallback: str) -> ModuleType | None:
    # ALEXNET_NATIVE=0 forces the fallback, as for the C kernels.
    if os.environ.get("ALEXNET_NATIVE", "1") == "0":
        return None
    try:
        import triton  # noqa: F401
    except ImportError as e:
        warnings.warn(f"Triton is not available ({e}); {fallback}", stacklevel=3)
        return None
    return importlib.import_module(f"{__name__}.{name}")


@cache
def lrn_cuda() -> ModuleType | None:
    """The LRN kernels for CUDA tensors (lrn_triton.py), or None (with one warning) where Triton is missing."""
    return _triton("lrn_triton", "LRN on CUDA uses the slower PyTorch fallback")


@cache
def crop_cuda() -> ModuleType | None:
    """The training crop for CUDA tensors (crop_triton.py), or None (with one warning) where Triton is missing."""
    return _triton("crop_triton", "the training crop on CUDA uses PyTorch's ops")
