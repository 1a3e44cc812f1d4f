"""Hand-written C kernels for what PyTorch has no fast single op for on the CPU (LRN, the training crop);
see build.py for how they are built and when they are not."""

from __future__ import annotations

import ctypes
from functools import cache

from .build import load

_I64, _INT, _F32, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p


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
