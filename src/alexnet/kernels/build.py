"""Compile a kernel's C source once per machine and load it with ctypes; None when that cannot be done.

The shared object is cached under files.cache_root()/kernels (~/.cache/alexnet/kernels), keyed by the
source, the compiler and the CPU, so a fresh clone builds it in about a second on first use and every
later process (torchrun workers included) just loads it. Compiling to a temporary name and renaming makes
concurrent first uses safe. Any failure (no compiler, no OpenMP, a read-only home) means the caller falls
back to its plain-PyTorch path; ALEXNET_NATIVE=0 forces that fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

from alexnet.files import cache_root, spare_cache_root

_HERE = Path(__file__).resolve().parent
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
# Linked apart from -ffast-math: linking a shared object with it adds crtfastmath (gcc before 13, clang), whose
# constructor sets flush-to-zero in the thread that loads the kernel, so that every later float in the user's
# process (torch's, NumPy's) lost its subnormals there and not in the other threads.
LINK = ["-shared", "-fopenmp"]


def cache_dir() -> Path:
    return cache_root() / "kernels"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _cpu_key() -> str:
    # -march=native code is only valid on a CPU with the same instruction sets.
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


@cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernels/NAME.c, or None (with one warning saying why) when it cannot be had."""
    if os.environ.get("ALEXNET_NATIVE", "1") == "0":
        return None
    # CC as make reads it: a command with its own arguments ("ccache gcc", "gcc -g").
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if compiler[0] is None:
        warnings.warn(f"no C compiler found; {name} uses the slower PyTorch fallback", stacklevel=2)
        return None
    source = _HERE / f"{name}.c"
    built_by = " ".join([*compiler, *FLAGS, *LINK, _cpu_key()])
    key = hashlib.sha256(source.read_bytes() + built_by.encode()).hexdigest()[:16]
    try:
        target = cache_dir() / f"{name}-{key}.so"
        if not target.exists() and not _writable(target.parent) and not os.environ.get("ALEXNET_CACHE"):
            # A read-only home (shared machines): built where this user can write, not given up for the slower path.
            target = spare_cache_root() / "kernels" / target.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            obj = tmp[:-3] + ".o"
            try:
                for command in ([*compiler, *FLAGS, "-c", str(source), "-o", obj],
                                [*compiler, *LINK, obj, "-o", tmp, "-lm"]):
                    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
                os.chmod(tmp, 0o755)   # as the linker makes it: mkstemp's 0600 kept others sharing the cache out
                os.replace(tmp, target)
            finally:
                for left in (tmp, obj):
                    if os.path.exists(left):
                        os.unlink(left)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        where = " (ALEXNET_CACHE names another folder for it)" if isinstance(e, PermissionError) else ""
        warnings.warn(f"could not build {name} ({detail.strip().splitlines()[-1] if detail.strip() else e}){where}; "
                      "using the slower PyTorch fallback", stacklevel=2)
        return None
