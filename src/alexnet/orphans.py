"""Helper processes that end with the process that made them. Torch-free, like data/demo.py, which uses it.

A parent killed with kill -9 runs no cleanup: its loader workers and pool processes are left to notice by
themselves, and some never do (a worker that read its parent's pid after the parent was gone watches init)."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent: int) -> None:
    """On Linux, this process is killed when ``parent`` (the thread of it that made this process) ends, and
    ends at once if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:   # it died before the call: nothing would signal it now
            os._exit(1)
