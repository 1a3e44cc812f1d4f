"""Loader processes and stop signals: a group's SIGTERM is the trainer's to handle, its own ends them."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader, Dataset

from alexnet.data.loader import leave_stop_signals_to_the_parent
from alexnet.data.prepared import MARKER
from conftest import write_image_folders


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


# A process iterating a Loader whose worker is held in its worker_init_fn: before torch's watchdog reads its
# parent's pid, where a parent killed with kill -9 left workers watching init (pid 1) for good.
HELD_WORKER = """
import os, sys, time
from alexnet.data.loader import Loader
def hold(worker_id):
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(30)
for batch in Loader(list(range(8)), batch_size=2, num_workers=1, worker_init_fn=hold):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dying with the parent is Linux's prctl")
def test_a_loaders_workers_die_with_the_process_that_made_them(tmp_path):
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", HELD_WORKER, str(pid_file)])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            assert parent.poll() is None
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        assert ended_within(worker, 10.0)
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


START_METHODS = """
import multiprocessing, sys
from alexnet.data.loader import Loader
if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print(sorted(int(i) for batch in Loader(list(range(8)), batch_size=4, num_workers=2) for i in batch))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver and fork are Unix's")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_loader_runs_under_every_start_method(method, tmp_path):
    # Under forkserver (Python 3.14's default on Linux) a worker's parent is the server: the check that the
    # worker's parent was still the loader's process ended every worker at once.
    script = tmp_path / "loader_start.py"
    script.write_text(START_METHODS)
    r = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == str(list(range(8))), r.stderr[-2000:]


@pytest.mark.parametrize("world", [3, 5, 6])
def test_a_global_batch_the_world_does_not_divide_is_the_same_batch_in_shares(world):
    # An elastic job that lost a node: 8 over 3 processes. Global batch k must be the samples it is for an
    # even split (DistributedSampler's, any world that divides 8), only shared out unevenly.
    from alexnet.data.loader import ResumableSampler, rank_batches, steps_per_epoch

    data, batch, seed, epoch = list(range(45)), 8, 3, 2
    even = ResumableSampler(data, num_replicas=1, rank=0, seed=seed)
    even.set_position(epoch, 0)
    expected = list(even)
    shares = rank_batches(batch, world)
    assert sum(shares) == batch and max(shares) - min(shares) == 1
    steps = steps_per_epoch(len(data), shares[0], world, shares)
    assert steps == len(data) // batch == 5
    ranks = [ResumableSampler(data, num_replicas=world, rank=r, seed=seed, batches=shares) for r in range(world)]
    got = []
    for sampler in ranks:
        sampler.set_position(epoch, 0)
        got.append(list(sampler))
        assert len(got[-1]) == len(sampler) == steps * shares[sampler.rank]
    for k in range(steps):
        together = [i for r in range(world) for i in got[r][k * shares[r]:(k + 1) * shares[r]]]
        assert together == expected[k * batch:(k + 1) * batch]
    # Resumed part-way (after 2 steps): the rest of each rank's stream.
    ranks[1].set_position(epoch, 2 * shares[1])
    assert list(ranks[1]) == got[1][2 * shares[1]:] and len(ranks[1]) == (steps - 2) * shares[1]


@pytest.mark.parametrize("images", [11, 12, 14, 15])
def test_an_even_split_takes_one_processs_batches_and_never_its_padding(images):
    # DistributedSampler pads each rank's share with samples from the epoch's start: 11 images in global batches
    # of 4 made 3 steps on 2 or 4 processes (the third repeating images of the epoch), 2 on one process.
    from alexnet.data.loader import ResumableSampler, rank_batches, steps_per_epoch

    batch, seed, epoch = 4, 5, 1
    one = ResumableSampler(list(range(images)), num_replicas=1, rank=0, seed=seed)
    one.set_position(epoch, 0)
    expected = list(one)
    for world in (1, 2, 4):
        shares = rank_batches(batch, world)
        steps = steps_per_epoch(images, shares[0], world, shares)
        assert steps == images // batch
        ranks = [ResumableSampler(list(range(images)), num_replicas=world, rank=r, seed=seed, batches=shares)
                 for r in range(world)]
        streams = []
        for sampler in ranks:
            sampler.set_position(epoch, 0)
            streams.append(list(sampler))
        for k in range(steps):
            together = sorted(i for r in range(world) for i in streams[r][k * shares[r]:(k + 1) * shares[r]])
            assert together == sorted(expected[k * batch:(k + 1) * batch]), (world, k)
        taken = [i for r in range(world) for i in streams[r]]
        assert len(taken) == len(set(taken)) == steps * batch   # no image twice in an epoch, no padding
        # Resumed after the epoch's last step (stopped in its validation): nothing is left to take.
        for r, sampler in enumerate(ranks):
            sampler.set_position(epoch, steps * shares[r])
            assert list(sampler) == [] and len(sampler) == 0


# A stop signal sent while the loader's worker is being forked, from inside the interpreter's fork handlers
# (where a handler's exception is swallowed), during the real `alexnet prepare`.
# The file argv[4] records that the signal was sent, and from where. A shell's background job (`./.ci/run &`)
# starts with SIGINT ignored, which a command keeps, as it should: Ctrl-C as from a terminal is put back first.
SIGNAL_IN_THE_FORK = """
import os, runpy, signal, sys, traceback
signal.signal(signal.SIGINT, signal.default_int_handler)
sent, stop, record = [], getattr(signal, sys.argv[1]), sys.argv[4]
def before():
    stack = traceback.extract_stack()
    if not sent and any(f.filename.endswith("dataloader.py") for f in stack):
        sent.append(1)
        with open(record, "w") as f:
            f.write("".join(traceback.format_list(stack)))
        os.kill(os.getpid(), stop)
os.register_at_fork(before=before)
sys.argv = ["alexnet", "prepare", "--data", sys.argv[2], "--out", sys.argv[3], "--workers", "1"]
runpy.run_module("alexnet", run_name="__main__")
"""


@pytest.mark.parametrize("name, code, said", [("SIGTERM", 143, "alexnet prepare: stopped by SIGTERM"),
                                               ("SIGINT", 130, "alexnet prepare: interrupted")])
def test_a_stop_signal_while_workers_start_stops_the_command_in_one_line(tmp_path, name, code, said):
    data = write_image_folders(tmp_path / "data", {"a": [(200, 10, 10)] * 3, "b": [(10, 10, 200)] * 3})
    store, sent = tmp_path / "store", tmp_path / "sent"
    r = subprocess.run([sys.executable, "-c", SIGNAL_IN_THE_FORK, name, str(data), str(store), str(sent)],
                       capture_output=True, text=True, timeout=300)
    assert sent.exists(), f"no loader worker was forked: {r.returncode}, {r.stderr}"
    assert r.returncode == code, f"{r.stderr}\nsent from:\n{sent.read_text()}"   # sent, and lost: ran to its end
    assert r.stderr.strip().splitlines() == [said], r.stderr
    assert not (store / MARKER).exists()


@pytest.mark.parametrize("value", ["two", "0", "-3", ""])
def test_a_local_world_size_that_is_no_count_is_one_line_where_the_default_workers_read_it(monkeypatch, value):
    # The GPU path's default workers divide the cores by LOCAL_WORLD_SIZE: a stray export ("two") was a
    # ValueError traceback there, where setup() says it in one line. One reader for both.
    import torch

    from alexnet.data import loader
    from alexnet.errors import UserError

    monkeypatch.setattr(loader, "usable_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    with pytest.raises(UserError, match=rf"^the environment variable LOCAL_WORLD_SIZE is '{value}', not a process "
                                        r"count or number \(torchrun sets it; unset it to run one process\)$"):
        loader.default_workers(object(), torch.device("cuda"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader.default_workers(object(), torch.device("cuda")) == 3   # 16 cores over 4: 4 each, less one
