"""Loader processes and stop signals: a group's SIGTERM is the trainer's to handle, its own ends them."""

import os
import signal
import subprocess
import time

import pytest
from torch.utils.data import DataLoader, Dataset

from alexnet.data.loader import leave_stop_signals_to_the_parent


class Pids(Dataset):
    """Each item is the pid of the process that read it: a loader process's own."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return os.getpid()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has ended
    except FileNotFoundError:
        return False


def ended_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_loader_process_ignores_others_stop_signals_and_ends_on_its_parents(signum):
    loader = DataLoader(Pids(), batch_size=None, num_workers=1, worker_init_fn=leave_stop_signals_to_the_parent)
    batches = iter(loader)
    worker = next(batches)
    assert worker != os.getpid()
    # From another process (a scheduler, torchrun's agent signalling the group): ignored, loading goes on.
    subprocess.run(["kill", f"-{signal.Signals(signum).name[3:]}", str(worker)], check=True)
    assert not ended_within(worker, 1.0)
    assert next(batches) == worker
    # From its parent (the loader's terminate() of a worker that will not finish): it ends.
    os.kill(worker, signum)
    assert ended_within(worker, 10.0)
    del batches
