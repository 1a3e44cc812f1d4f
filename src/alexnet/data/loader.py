"""DataLoaders of uint8 batches: sharded across processes, resumable mid-epoch, exact for evaluation.

Training: DistributedSampler's shuffle (seeded by seed + epoch, the same on every rank), so that with
P processes the P per-rank batches of step k together hold exactly the samples one process would put
in its global batch k; and a start offset, so a resumed run continues with the very next batch.
Evaluation: rank r takes samples r, r + P, r + 2P, ... with no padding, so sums over ranks count every
sample exactly once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from alexnet.cores import local_world, usable_cores
from alexnet.data.imageset import ImageSet
from alexnet.orphans import die_with_parent

MAX_DEFAULT_WORKERS = 16


# Signals that stop a command (Ctrl-C, a scheduler's SIGTERM or its notice): held while loader processes start.
_STOPS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Loader(DataLoader):
    """A DataLoader whose start of its worker processes a stop signal cannot split.

    Python runs a signal's handler between any two steps of the main thread, and one landing while the
    workers are forked runs inside the interpreter's fork handlers, which swallow its exception ("Exception
    ignored in: _releaseLock"), or inside the iterator's construction, which leaves one that fails again as it
    is collected: `prepare` starts a loader per shard, and a Ctrl-C or SIGTERM within some 50 ms of a shard's
    start was lost and the command ran on to the end. During the start the signals are only noted (masking
    them would not do: any other thread may take them), then handled as they would have been. Its workers
    die with it (orphans.py)."""

    def _get_iterator(self):
        main = threading.current_thread() is threading.main_thread()
        if self.num_workers and main:
            self._workers_die_with_this_process()
        if not self.num_workers or not main:
            return super()._get_iterator()
        noted: list[int] = []
        held = {}
        for signum in _STOPS:
            if signal.getsignal(signum) is not None:   # None: a handler not set from Python, not to be put back
                held[signum] = signal.signal(signum, lambda got, _frame: noted.append(got))
        try:
            return super()._get_iterator()
        finally:
            for signum, handler in held.items():
                signal.signal(signum, handler)
            for signum in dict.fromkeys(noted):
                signal.raise_signal(signum)

    def _workers_die_with_this_process(self) -> None:
        # Started from the main thread only: a worker dies with the thread that made it, which may end first.
        # Not under forkserver (Python 3.14's default on Linux): the workers' parent is the server then.
        if (self.multiprocessing_context or multiprocessing.get_context()).get_start_method() == "forkserver":
            return
        init = self.worker_init_fn
        if isinstance(init, _WorkerStart):
            if init.parent == os.getpid():
                return
            init = init.then
        self.worker_init_fn = _WorkerStart(os.getpid(), init)


def default_workers(images, device: torch.device, training: bool = True) -> int:
    """DataLoader workers for reading ``images`` (as handed to ``device``: ImageSet.for_device) when the user
    gives no --workers:

    - files decoded on their way to a GPU: this process's share of the cores, less its own (at least 2, at
      most 16). A core decodes and resizes 250-350 photo-sized JPEGs a second (bench data), and one GPU
      trains thousands (11,000 img/s on an H200, README) and evaluates tens of thousands;
    - 0 for stored pixels feeding training on a CPU: nothing to decode, and next to a step of a second a
      worker would only add a copy through shared memory. Evaluation keeps 2 there: its batches are quick
      enough that reading the next beside them pays (1 view of the demo's 300 val images, 2-core Xeon:
      2.8-2.9 s with 2 workers, 3.0-3.05 s with 0);
    - 2 otherwise: a CPU that decodes and computes (the network needs the cores), stored pixels for a GPU.

    A set that says nothing (``decodes`` missing, as dense views' whole images) counts as decoding.
    """
    decodes = getattr(images, "decodes", True)
    if decodes and device.type == "cuda":
        share = usable_cores() // local_world()
        return max(2, min(MAX_DEFAULT_WORKERS, share - 1))
    return 0 if training and not decodes and device.type == "cpu" else 2


class _WorkerStart:
    """A loader process's worker_init_fn: it dies with the process that made it, then runs ``then``. torch's
    workers watch their parent through the pid they read when their loop starts: one whose parent was killed
    (kill -9) between the fork and then watched init (pid 1) and stayed for good, some 300 MB each."""

    def __init__(self, parent: int, then: Callable[[int], None] | None) -> None:
        self.parent, self.then = parent, then

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent)
        if self.then is not None:
            self.then(worker_id)


def leave_stop_signals_to_the_parent(worker_id: int) -> None:
    """A loader process's worker_init_fn: SIGTERM and SIGUSR1 are for the process that trains.

    A scheduler or torchrun's agent signals the whole process group, loader processes included, and
    torch's worker code dies of SIGTERM by design; the trainer then met "DataLoader worker (pid ...) is
    killed by signal: Terminated" mid-step instead of finishing the step and writing last.pt. So a loader
    process takes these signals on a thread of its own and ends only when its parent sends one: the
    trainer's loader giving up on a worker that does not finish (its terminate()). Others are ignored; the
    loaders end as always when the trainer closes its loader, or by themselves once it is gone.
    """
    stops = {signal.SIGTERM, signal.SIGUSR1}
    if not hasattr(signal, "sigwaitinfo"):   # macOS: no sender to tell apart; the trainer's close still ends it
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)   # before any other thread starts: all of them inherit it

    def wait() -> None:
        while True:
            if signal.sigwaitinfo(stops).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="stop signals", daemon=True).start()


def rank_batches(batch_size: int, world: int) -> list[int]:
    """Each rank's share of a global batch: equal where ``world`` divides it, else differing by one (128 over
    24 processes: 8 ranks of 6, 16 of 5), the first ranks taking one more."""
    return [batch_size // world + (rank < batch_size % world) for rank in range(world)]


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way through (after ``start`` of this rank's samples).

    With ``batches`` (every rank's share of a global batch, rank_batches) that differ, global batch k is
    still samples k*B .. (k+1)*B of the epoch's permutation (DistributedSampler's, from seed + epoch), as
    it is for an equal split: each rank takes its own run of them, and the incomplete last one is dropped.
    With ``batches`` given, a rank's stream ends with its share of the epoch's last full batch, equal or not:
    DistributedSampler's padding, images the epoch already gave, is never reached (a run resumed after its
    epoch's last step took one more step of it)."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True,
                 batches: list[int] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0
        self.batches = batches if batches and len(set(batches)) > 1 else None
        self.per_epoch = len(dataset) // sum(batches) * batches[rank] if batches else self.num_samples

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if self.batches is None:
            indices = list(super().__iter__())[:self.per_epoch]
            return iter(indices[self.start:])
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        size, first, mine = sum(self.batches), sum(self.batches[:self.rank]), self.batches[self.rank]
        runs = [order[k * size + first:k * size + first + mine] for k in range(len(order) // size)]
        return iter([i for run in runs for i in run][self.start:])

    def __len__(self) -> int:
        return max(0, self.per_epoch - self.start)


class ShardSampler(Sampler[int]):
    """Samples rank, rank + world, ...: every sample once over all ranks, none padded or repeated."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.length, self.rank, self.world = length, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


def steps_per_epoch(dataset_len: int, batch_per_rank: int, world: int, batches: list[int] | None = None) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as is usual); ``batches`` as for
    ResumableSampler. The same for any number of processes: DistributedSampler pads every rank's share to
    ceil(n / P) with samples from the epoch's start, and a step counted from the padded share (11 images in
    batches of 4: 3 steps on 2 processes, 2 on one) would train on images that epoch already gave."""
    return dataset_len // (sum(batches) if batches else batch_per_rank * world)


def train_loader(dataset: ImageSet, batch_per_rank: int, rank: int, world: int, seed: int,
                 workers: int, pin_memory: bool, batches: list[int] | None = None) -> DataLoader:
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=seed, batches=batches)
    return Loader(dataset, batch_size=batch_per_rank, sampler=sampler, num_workers=workers,
                  pin_memory=pin_memory, drop_last=True, persistent_workers=False,
                  collate_fn=ImageSet.collate,   # an ImageSet reads whole batches
                  worker_init_fn=leave_stop_signals_to_the_parent,
                  # Its own generator: otherwise each new iterator draws its worker seed from the
                  # global RNG, and resuming would shift dropout's random numbers.
                  generator=torch.Generator().manual_seed(seed))


def eval_loader(dataset, batch_size: int, rank: int, world: int, workers: int,
                pin_memory: bool, collate=ImageSet.collate) -> DataLoader:
    """An ImageSet's batches (or, with its ``collate``, any map-style dataset's) sharded by ShardSampler."""
    return Loader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world),
                  num_workers=workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
                  collate_fn=collate, worker_init_fn=leave_stop_signals_to_the_parent)

