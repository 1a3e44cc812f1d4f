"""Processes that end with the process that made them: helpers (loader workers, demo-data's pool) and
torchrun's workers. Torch-free, like data/demo.py, which uses it.

A parent killed with kill -9 runs no cleanup: its loader workers and pool processes are left to notice by
themselves, and some never do (a worker that read its parent's pid after the parent was gone watches init)."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent: int) -> None:
    """On Linux, this process is killed when ``parent`` (the thread of it that made this process) ends, and
    ends at once if it already has."""
    if _signal_when_parent_ends(signal.SIGKILL) and os.getppid() != parent:   # too late: nothing would signal it
        os._exit(1)


_agent: int | None = None   # the torchrun agent that started this process, under torchrun


def stop_with_torchrun_agent() -> None:
    """Under torchrun, a SIGTERM when the agent that started this worker ends, as when the agent stops its
    workers itself: a training saves last.pt, releases its folder and says how to resume. Killed with
    kill -9 (or by the OOM killer), the agent could tell no one, and its workers trained on unsupervised: the
    same torchrun command run again was refused, the run folder in use by processes the user no longer saw.
    torchrun starts each worker from its agent's main thread (the thread's end is what the kernel signals)."""
    global _agent
    if "TORCHELASTIC_RESTART_COUNT" in os.environ:
        _agent = os.getppid()
        if _signal_when_parent_ends(signal.SIGTERM) and os.getppid() != _agent:   # it ended in between
            os.kill(os.getpid(), signal.SIGTERM)


def signal_name(signum: int) -> str:
    """How a stop line names ``signum``: a SIGTERM that came of the torchrun agent's end says so, where the
    user who killed torchrun sent no SIGTERM and would not know where it came from."""
    name = signal.Signals(signum).name
    if signum == signal.SIGTERM and _agent is not None and os.getppid() != _agent:
        return f"{name} (torchrun, which started this process, ended)"
    return name


def _signal_when_parent_ends(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG): whether this system has it (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    return True
