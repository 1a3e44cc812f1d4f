"""Keep freed memory for reuse instead of handing it back to the OS (glibc only; a no-op elsewhere).

A training step allocates and frees hundreds of MB of activations. glibc serves each block over 32 MB
(and, by its sliding threshold, many smaller ones) with a fresh mmap and unmaps it when freed, so the next
step faults every page in again, zero-filled by the kernel: on a 2-core machine that was a fifth of the
step (`alexnet bench train`: 58 img/s before, 77 after). Serving every block from the heap and never
trimming it lets the second step reuse the first step's pages. The price is that the process keeps its
peak memory until it exits, which a training or evaluation run reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep freed ones; True if it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and others: no mallopt, nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
