"""The recipe and the loop: one code path from a 2-core laptop to many GPUs.

    alexnet train --preset demo --out runs/demo                         # the bundled demo set, one process
    alexnet train --data /imagenet --preset paper --out runs/paper      # the paper's recipe
    torchrun --nproc_per_node=8 -m alexnet train --data /imagenet ...   # data-parallel on one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m alexnet train --data /imagenet ...                           # the same, over two machines
    alexnet train --out runs/paper --resume                             # continue where it stopped
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --max-restarts=3 ... -m alexnet train --resume auto ...
                                                                        # survives failed workers, requeues

Every epoch: RUN/last.pt (and every --save-every steps or --save-every-minutes), RUN/best.pt (best val
top-1, weights only), a line in RUN/metrics.jsonl. SIGTERM, SIGUSR1 or Ctrl-C finishes the step, writes
last.pt and exits; --resume continues from the very next batch with the same random numbers, so the
weights end up as if the run had never stopped. Rank 0 alone prints and writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from alexnet import checkpoint, distributed, finetune, parallel
from alexnet.choices import device_setting
from alexnet.config import (LARS_SGD_SETTINGS, TrainConfig, dump_yaml, from_dict, load_yaml,
                            refuse_settings_that_do_nothing, resolve)
from alexnet.cores import most_workers, usable_cores
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import DataSource, ImageSet
from alexnet.data.loader import default_workers, eval_loader, rank_batches, steps_per_epoch, train_loader
from alexnet.data.sources import open_data
from alexnet.data.stats import STATS_FILE, DataStats, compute_stats, find_stats, fingerprint, has_own_stats
from alexnet.data.transforms import Draws, Normalize, PCANoise, Preprocessing
from alexnet.errors import Stopped, UserError
from alexnet.evaluate import evaluate
from alexnet.files import FolderLock, atomic_write, cache_root
from alexnet.model import AlexNet, freeze
from alexnet.orphans import signal_name
from alexnet.precision import autocast_dtype, weights_dtype
from alexnet.precision import name as precision_name
from alexnet.schedule import LRSchedule
from alexnet.step import TrainStep, optimizer_for
from alexnet.weights import LoadedModel

# What may change when a run is resumed; anything else would make it a different run.
RESUMABLE_CHANGES = {"epochs", "accumulate", "workers", "save_every", "save_every_minutes", "log_every", "tensorboard",
                     "compile", "data", "device", "towers"}
# What may also change when the run stopped because it diverged (RUN/diverged.json): the remedies.
DIVERGED_CHANGES = {"lr", "warmup_epochs", "weight_decay"}
DIVERGED = "diverged.json"
# The torchrun agents whose job started or resumed the run: a restart of theirs may continue it by itself.
JOB = ".torchrun-job.json"
# Until the step after a save shows its weights give a finite loss, the checkpoint before it is kept here.
PREVIOUS = ".last-previous.pt"
# SIGUSR1: what schedulers send ahead of a preemption (SLURM's --signal=USR1@120); handled as SIGTERM.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))
# Below this many training images the paper's recipe (N(0, 0.01) init, batch 128) is pointed away from:
# on a few thousand images it stayed at chance or went to NaN (README, "The demo recipe").
SMALL_DATA = 100_000


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def resolve_run(config: TrainConfig, resume: bool | str, given: dict[str, Any] | None,
                dist: distributed.Dist | None = None
                ) -> tuple[TrainConfig, checkpoint.Resumable | None, LoadedModel | None]:
    """The configuration to run with, the checkpoint to resume from (None for a fresh run), and the weights
    a fresh run starts from (--weights; else None).

    ``resume``: False (a fresh run), True (continue RUN), or "auto" (continue RUN if it holds a
    checkpoint, else start it); a process that torchrun restarted after a failure resumes by itself.
    A fresh run never overwrites an earlier one; a resumed run takes its settings from its checkpoint,
    changed only where RESUMABLE_CHANGES allows. ``given``: the settings asked for by name (the flags
    given); None from the Python API, where ``_asked_in(config)`` says what was asked for.
    """
    run = Path(config.out)
    last = run / "last.pt"
    restarted = _restarted()
    # Only what this job's first attempt took is its own: a restart after that attempt was refused (RUN held
    # another run, or was in use) must be refused again, not continue the other run.
    ours = restarted and _agent() in _job_of(run)
    if dist is not None:   # decided together: the count can differ between nodes, and one node's agent may be gone
        restarted, ours = (bool(x) for x in distributed.all_max(dist, torch.tensor([float(restarted), float(ours)])))
        _check_shared(dist, last)
    if not resume and restarted and ours:
        resume = "auto"   # the group was restarted: what the first attempt saved is this run's
    auto = resume == "auto"
    if auto:
        resume = last.exists()
    if given is None:   # from Python: what the command refuses in its flags is refused here too
        refuse_settings_that_do_nothing(config, _asked_in(config), resuming=bool(resume))
    if not resume:
        if last.exists():
            raise UserError(f"{run} already holds a run (last.pt); add --resume to continue it, "
                            f"or choose another --out")
        _refuse_foreign_config(run)
        start = None
        if config.weights:
            config, start = _start_from(config, given, dist)
        elif config.freeze != "none":
            raise UserError(f"--freeze {config.freeze} keeps layers as trained weights have them; give --weights "
                            f"FILE (from random weights, frozen layers would stay random)")
        outputs = [name for name in ("best.pt", "metrics.jsonl") if (run / name).exists()]
        # With --resume auto they may be this run's own, from an attempt stopped after its first epoch's
        # best.pt and row but before its last.pt: then the fresh start drops that row (_open_folder) and
        # writes best.pt anew. Anything more is an earlier run's, and kept.
        if outputs and not (auto and _first_epoch_of(run, config)):
            raise UserError(f"{run} holds an earlier run's {' and '.join(outputs)} but no last.pt to resume; "
                            f"choose another --out, or remove them to start afresh there")
        return config, None, start
    if not last.exists():
        raise UserError(f"nothing to resume: {last} does not exist")
    ckpt = checkpoint.read_resumable(last)
    saved = ckpt.config
    if given is None:
        given = _asked_in(config)
        for name in ("data", "weights"):
            if given.get(name):
                given[name] = str(Path(given[name]).expanduser().resolve())
    changes = {k: v for k, v in given.items() if k != "out" and getattr(saved, k) != v}
    diverged = (run / DIVERGED).is_file()
    refused = sorted(set(changes) - RESUMABLE_CHANGES - (DIVERGED_CHANGES if diverged else set()))
    if refused:
        remedy = ("" if diverged or not set(refused) & DIVERGED_CHANGES else
                  "; a run that diverged may change --lr, --warmup-epochs and --weight-decay")
        raise UserError(f"cannot change {', '.join('--' + k.replace('_', '-') for k in refused)} when resuming "
                        f"(the run was started with {', '.join(f'{k}={getattr(saved, k)!r}' for k in refused)})"
                        f"{remedy}")
    trained = ckpt.epoch + (ckpt.step_in_epoch > 0)
    if changes.get("epochs", trained) < trained:
        raise UserError(f"--epochs {changes['epochs']} is fewer than {run} has trained ({ckpt.epoch} epochs"
                        + (f" and {ckpt.step_in_epoch} steps of the next" if ckpt.step_in_epoch else "")
                        + f"); give at least {trained}")
    if changes.get("epochs", saved.epochs) <= saved.warmup_epochs and "warmup_epochs" not in changes:
        raise UserError(f"--epochs {changes['epochs']} would end {run} inside its warm-up of "
                        f"{saved.warmup_epochs:g} epochs (set when it started: the preset's share of its "
                        f"{saved.epochs}, or --warmup-epochs); give more than {saved.warmup_epochs:g}")
    values = saved.to_dict() | changes | {"out": str(run)}
    if "data" not in changes and saved.data and not Path(saved.data).exists():
        raise UserError(f"{run} was trained on {saved.data}, which is not there any more; give --data with "
                        f"where its images are now (the same images: a resume of other ones is said so)")
    resumed = from_dict(values, "resumed run")
    _check_config_yaml(run, saved, resumed, RESUMABLE_CHANGES | (DIVERGED_CHANGES if diverged else set()), given)
    return resumed, ckpt, None


# The first line of every config.yaml a start writes: the file is a record, and its digest tells one edited by
# hand from one a start wrote (a start that failed before its first checkpoint leaves its own settings there).
WRITTEN = "# alexnet train's record of the run's settings (a resume takes them from last.pt); digest "


def _config_text(config: TrainConfig) -> str:
    body = dump_yaml(config)
    return f"{WRITTEN}{_digest(body)}\n{body}"


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _as_written(path: Path) -> bool:
    """Whether ``path`` is a config.yaml as a start wrote it, unedited."""
    try:
        first, _, body = path.read_text().partition("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(WRITTEN) and first.removeprefix(WRITTEN) == _digest(body)


def _check_config_yaml(run: Path, saved: TrainConfig, resumed: TrainConfig, resumable: set[str],
                       given: dict[str, Any]) -> None:
    """RUN/config.yaml is what the run's last start wrote, and a resume writes it again. An edit there changes
    nothing (a run's settings come from its checkpoint) and would be lost without a word: refused in one line,
    before anything is written, unless this resume asks for the setting itself. A file as a start wrote it
    (its digest) is no edit, whatever it holds: that start may have failed before its first checkpoint. One
    of an earlier version (no digest) may lack settings added since, and name the run's folder before a move."""
    path = run / "config.yaml"
    if not (path.exists() or path.is_symlink()) or _as_written(path):
        return   # nothing to lose: the resume writes it
    back = "put config.yaml back (alexnet train rewrites it)"
    try:
        values = load_yaml(path)
        recorded = from_dict(saved.to_dict() | values, str(path)).to_dict()
    except UserError as e:
        raise UserError(f"{e}; a run's settings come from its checkpoint: {back}") from None
    before, now = saved.to_dict(), resumed.to_dict()
    for key in (k for k in values if k not in given and k != "out" and recorded[k] not in (before[k], now[k])):
        value = recorded[key]
        flag = f"--{'' if value is not False else 'no-'}{key.replace('_', '-')}"
        asked = flag if isinstance(value, bool) else f"{flag} {_shown(value)}"
        remedy = (f"; give {asked} to change it on resume, or {back}" if key in resumable else
                  f", and a resume cannot change {key} (a new run can: {asked}); {back}")
        raise UserError(f"{path} sets {key} {_shown(value)}, but the run was trained with {_shown(before[key])} "
                        f"(last.pt): a run's settings come from its checkpoint{remedy}")


def _shown(value: Any) -> str:
    """A setting's value as config.yaml writes it."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _asked_in(config: TrainConfig) -> dict[str, Any]:
    """What a configuration made in Python asks of a resume, as the command's flags would: its length of run,
    and the settings in which it differs from its preset at that length (resolve scales the preset's warm-up
    with the epochs). A preset's own values (a newer default, a network a fine-tuning run took from its
    weights) are not asked for: the run keeps what it was started with."""
    try:
        preset = resolve(config.preset, {"epochs": config.epochs}).to_dict()
    except UserError:   # this length is refused with the preset's warm-up: compare with nothing
        preset = {}
    missing = object()
    asked = {k: v for k, v in config.to_dict().items() if k == "epochs" or preset.get(k, missing) != v}
    if config.optimizer == "lars":   # what resolve gives LARS in place of the preset's SGD settings: not asked for
        asked = {k: v for k, v in asked.items() if LARS_SGD_SETTINGS.get(k, missing) != v}
    return asked


def _start_from(config: TrainConfig, given: dict[str, Any], dist: distributed.Dist | None
                ) -> tuple[TrainConfig, LoadedModel | None]:
    """A fresh run from --weights takes their network and input preprocessing (finetune.adopt); every
    process checks the file before anything is written, and all are refused together, with the first
    refused process's reason, if one cannot use it (under torchrun each reads its own copy, or a shared one).
    ``given``: the settings asked for by name (empty from the Python API: then those that differ from
    the preset's)."""
    config = dataclasses.replace(config, weights=str(Path(config.weights).expanduser().resolve()))
    problem, adopted, loaded = "", config, None
    try:
        loaded = finetune.open_weights(config)
        adopted = finetune.adopt(config, loaded, given or finetune.asked_for(config))
    except UserError as e:
        problem = str(e)
    except OSError as e:   # unreadable (permissions, a failing disk): a traceback here would hang the others
        problem = f"cannot read --weights {config.weights} ({e.strerror or e})"
    problems = distributed.gather_objects(dist, problem) if dist is not None else [problem]
    if any(problems):
        rank, first = next((rank, p) for rank, p in enumerate(problems) if p)
        raise UserError(problem or f"{first} (in process {rank} of {len(problems)})")
    return adopted, loaded


# Settings every run's config.yaml has recorded, from the first version on.
RECORDED = ("data", "out", "preset", "variant", "epochs", "batch_size", "lr", "seed")


def _refuse_foreign_config(run: Path) -> None:
    """A fresh run writes RUN/config.yaml over what is there: the one an attempt stopped before its first
    checkpoint left (of this version or an earlier one), which is this run's to replace, but not a file of the
    user's that happens to have the name. A run's is a mapping of known settings holding those every version
    recorded; whether today's rules accept its values does not matter (an earlier version's may not)."""
    path = run / "config.yaml"
    if not (path.exists() or path.is_symlink()):
        return
    try:
        values = load_yaml(path)
    except UserError as e:
        reason = str(e).removeprefix(f"cannot read {path}: ").removeprefix(f"{path} ")
    else:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        # key=str: a hand-edited file may mix keys YAML reads as numbers with names, which do not sort together
        unknown, missing = sorted(set(values) - known, key=str), [k for k in RECORDED if k not in values]
        if not unknown and not missing:
            return
        reason = f"unknown setting {unknown[0]}" if unknown else f"no {missing[0]}, which a run records"
    raise UserError(f"{run} holds a config.yaml that alexnet train did not write ({reason}), which a fresh run "
                    f"would replace; choose another --out, or move the file away to train there")


def _restarted() -> bool:
    """Whether torchrun restarted this process's group after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _agent() -> str | None:
    """The torchrun agent this process runs under, the same in each of its restarts and no other's; None
    outside torchrun. Its host and the log folder it made for its job: a fresh temporary name, whose
    attempt_N/<local rank>/error.json each worker is told of. Not the workers' parent pid, which a wrapper
    script changes at each restart and which is 1 for every job in a container, nor the rendezvous id
    alone, which jobs share. Without that folder (--log-dir /dev/null): the parent pid and rendezvous id."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    parts = Path(os.environ.get("TORCHELASTIC_ERROR_FILE", "")).parts
    if len(parts) > 3 and parts[-3].startswith("attempt_"):
        return f"{socket.gethostname()}:{Path(*parts[:-3])}"
    return f"{socket.gethostname()}:{os.getppid()}:{os.environ.get('TORCHELASTIC_RUN_ID', '')}"


def _job_of(run: Path) -> list[str]:
    """The agents recorded in RUN as those of the job that last started or resumed it."""
    try:
        agents = json.loads((run / JOB).read_text())
    except (OSError, ValueError):
        return []
    return [a for a in agents if isinstance(a, str)] if isinstance(agents, list) else []


def _first_epoch_of(run: Path, config: TrainConfig) -> bool:
    """Whether RUN holds what a stopped first attempt of ``config`` leaves: its config.yaml, and at most
    the row of its first epoch."""
    try:
        recorded = from_dict(load_yaml(run / "config.yaml"), str(run / "config.yaml"))
        rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    except (UserError, OSError):
        return False
    return recorded.to_dict() | {"out": config.out} == config.to_dict() and all(_epoch_of(row) <= 1 for row in rows)


def _check_shared(dist: distributed.Dist, last: Path) -> None:
    """Every process must see the run folder rank 0 sees (they resume from it): refuse in one line if not."""
    seen = distributed.all_max(dist, torch.tensor([float(last.exists()), -float(last.exists())]))
    if seen[0] != -seen[1]:
        raise UserError(f"{last} exists for some processes and not for others: --out must be a folder every "
                        f"node shares (a network file system), or a copy of it on each node")


def demo_data_dir() -> Path:
    return cache_root() / "demo-seed0"


def _open_data(config: TrainConfig, dist: distributed.Dist, resumed: bool = False) -> DataSource:
    """The run's data, its images under 256 treated as the run says: --small's, but the setting a resumed
    run was started with, or the one of the weights a fine-tuning run starts from, which --small cannot
    change (it is refused), so a store prepared with the other is told so."""
    data = Path(config.data).expanduser() if config.data else demo_data_dir()
    if not config.data:
        _demo_set(data, dist)
    fixed = (f"as {config.out} was started: a resumed run keeps it" if resumed else
             f"as --weights {config.weights} was trained: fine-tuning keeps it" if config.weights else "")
    return open_data(data, small=config.small, fixed=fixed)


def _demo_set(data: Path, dist: distributed.Dist) -> None:
    """The demo set in ``data``, written by each machine's local rank 0 while its other processes wait. Its
    failure (a full disk, a cache folder that takes no files) is said by every process, the same line: the
    others waited in a barrier for it and met its end as "another process of the job failed" (2 processes,
    gloo), a line that names no cause, or, where no connection of theirs closed, the group's timeout."""
    failed = ""
    if dist.local_rank == 0:
        from alexnet.data.demo import write_demo_set
        try:
            write_demo_set(data, seed=0, progress=dist.main)
        except UserError as e:
            failed = str(e)
        except OSError as e:
            failed = (f"cannot write the demo set to {data} ({e.strerror or e}); give --data, or set ALEXNET_CACHE "
                      f"to a folder with room for it (70 MB)")
        except Exception as e:   # a bug, whose traceback this process shows: the others are told to look there
            distributed.gather_objects(dist, f"writing the demo set to {data} failed in process {dist.rank} "
                                             f"({type(e).__name__}); its traceback says why")
            raise
    said = [line for line in distributed.gather_objects(dist, failed) if line]
    if said:
        raise UserError(failed or said[0])


def _preprocessing(config: TrainConfig, train_set: ImageSet, dist: distributed.Dist,
                   skips: SkippedFiles | None = None, norm: Normalize | None = None) -> Preprocessing:
    """The run's crop, normalisation (``norm``: the weights' a fine-tuning run starts from, else the data's)
    and PCA noise (always the data's)."""
    stats: DataStats | None = None
    if _needs_stats(config, norm):
        stats = _statistics(config, train_set, dist, skips)
    norm = norm or Normalize.create(config.normalization, stats)
    pca = None if config.pca_noise == "none" else PCANoise(stats.eigvals, stats.eigvecs, convention=config.pca_noise)
    return Preprocessing(config.crop, norm, pca)


def _needs_stats(config: TrainConfig, norm: Normalize | None) -> bool:
    """Whether the run takes the training set's statistics: for its normalisation (unless ImageNet's fixed one,
    or ``norm``, the weights' own), and for PCA noise."""
    return (norm is None and config.normalization != "imagenet") or config.pca_noise != "none"


def _refuse_unread_stats_images(config: TrainConfig, train_set: ImageSet, start: LoadedModel | None) -> None:
    """--stats-images given where it cannot act: no statistics pass runs, or the data is a prepared store,
    whose statistics prepare computed over all its images (a pass over fewer would be none of them)."""
    flag = f"--stats-images {config.stats_images}"
    if not _needs_stats(config, start.norm if start else None):
        why = ("the weights bring their normalisation" if start else
               f"--normalization {config.normalization} is fixed")
        raise UserError(f"{flag} sets the images of the statistics pass, and this run makes none ({why} and "
                        f"--pca-noise is none); leave --stats-images out")
    if 0 < config.stats_images < len(train_set) and has_own_stats(train_set):
        raise UserError(f"{flag} sets the images of the statistics pass, and {config.data} is a prepared store: "
                        f"its statistics are prepare's, over all its {len(train_set):,} training images, and no "
                        f"pass runs; leave --stats-images out, or train on the image folders to use fewer")


def _statistics(config: TrainConfig, train_set: ImageSet, dist: distributed.Dist,
                skips: SkippedFiles | None = None) -> DataStats:
    """The training set's mean image and PCA on every process. Rank 0 looks in RUN (or takes what
    `prepare` computed) and sends what it found; otherwise every process computes its share and the
    sums are added up, so no process waits on another for long (ImageNet's pass is tens of minutes)."""
    cache = Path(config.out) / STATS_FILE
    found = find_stats(train_set, cache, config.stats_images or None) if dist.main else None
    if distributed.all_max(dist, torch.tensor([float(found is not None)]))[0]:
        return distributed.broadcast_object(dist, found)
    stats = compute_stats(train_set, workers=config.workers, max_images=config.stats_images or None,
                          progress=dist.main, rank=dist.rank, world=dist.world,
                          all_sum=lambda t: distributed.all_sum(dist, t), skipped=skips)
    if dist.main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stats.save(cache)
    return stats


def build_model(config: TrainConfig, num_classes: int, initialise: bool = True, start: LoadedModel | None = None,
                classes: list[str] | None = None) -> AlexNet:
    """The network ``config`` trains. ``initialise`` False, for a resume that loads every weight at once:
    left uninitialised (the layers' own init and the paper's drew 61M random numbers each: 1 s on a core).
    ``start``: the trained weights a fine-tuning run starts from, for the data's ``classes``."""
    with nullcontext() if initialise else torch.device("meta"):   # on meta, the init draws nothing
        # owt has no LRN: a config's lrn (an older run's may hold any) means nothing there.
        model = AlexNet(config.variant, num_classes=num_classes, dropout=config.dropout,
                        lrn=config.lrn if config.variant == "paper" else None, init=config.init)
    if not initialise:
        model = model.to_empty(device="cpu")
    else:
        if config.zero_init_fc8 and not (start is not None and finetune.keeps_fc8(start, classes)):
            nn.init.zeros_(model.classifier[-1].weight)
            nn.init.zeros_(model.classifier[-1].bias)
        if start is not None:
            finetune.load_into(model, start, classes)
    freeze(model, config.freeze)   # a resumed run's too: requires_grad is not in its checkpoint
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout layer's probability. Late dropout (Liu et al. 2023, "Dropout reduces underfitting")
    lets fc6 and fc7 learn without it first, then regularises a run that has begun to overfit; from the
    start, dropout 0.5 halves what the demo's few hundred steps learn."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


class _StopsAtOnce:
    """Before the first step (the statistics pass may take many minutes) a SIGTERM or SIGUSR1 from a
    scheduler ends the command as Ctrl-C does: at once, with one line, the folder's lock released."""

    def __init__(self, dist: distributed.Dist) -> None:
        self.dist, self.pid, self._previous = dist, os.getpid(), {}

    def __enter__(self):
        self._previous = _take_signals([sig for sig in STOP_SIGNALS if sig != signal.SIGINT], self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if os.getpid() != self.pid:   # a loader process forked meanwhile: it ends as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.dist.main:
            tqdm.write(f"alexnet train: stopped by {signal_name(signum)} before the first step; nothing "
                       f"was trained, so nothing is saved", file=sys.stderr)
        raise Stopped(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _StopFlag:
    """SIGINT/SIGTERM/SIGUSR1 set a flag checked after each step, before each validation batch and between
    epochs; a second Ctrl-C stops at once, without saving (a write under way is given up: ``last``, if
    there, stays as it was), and says so. A Ctrl-C this process ignores (a script's background job
    `alexnet train ... &`, a scheduler's) stays ignored, as Python keeps it: one pressed for the job in the
    foreground is not this run's. SIGTERM and SIGUSR1, a scheduler's, are taken whatever they were."""

    def __init__(self, last: Path | None = None) -> None:
        self.signal: int | None = None
        self.last = last
        self._previous = {}

    def __enter__(self):
        self._previous = _take_signals([sig for sig in STOP_SIGNALS
                                        if sig != signal.SIGINT or signal.getsignal(sig) != signal.SIG_IGN],
                                       self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            kept = "" if self.last is None else \
                f": {self.last} holds the run as last saved" if self.last.exists() else ": nothing was saved"
            raise KeyboardInterrupt(f"a second Ctrl-C stops at once, without saving{kept}")
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _take_signals(signals: list[int], handler) -> dict:
    """``handler`` for each of ``signals``; what they had, to be put back. Only in the main thread, where Python
    runs handlers and alone may set them: train() called in another thread (a notebook's or an application's
    worker thread) failed there with "signal only works in main thread"; such a run stops as its process
    does. A handler not set from Python (getsignal's None: an embedding application's) is left in place, as
    it could not be put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in signals if signal.getsignal(sig) is not None}


def _own_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded state tensor memory of its own, in its parameter's layout.

    Loaded, the momentum buffers are views of the mapped last.pt (torch's load_state_dict keeps a tensor
    already of the right dtype and device): the replaced file would stay on disk, a checkpoint's worth,
    as long as the run. And the fused SGD kernel walks parameter, gradient and momentum as flat memory, so
    a momentum buffer in NCHW order for a channels_last weight (a tower's slice of a checkpoint, say) would
    be added to the wrong elements, silently.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    own = torch.empty_like(p) if value.shape == p.shape else torch.empty_like(value)
                    optimizer.state[p][key] = own.copy_(value)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Tally:
    """The epoch's training so far, as its metrics row sums it. A resume carries it over in last.pt (rank
    0 takes the processes' summed loss, images and skipped files), so that row is the one an unstopped run
    writes."""
    loss: float = 0.0          # this process's summed loss
    images: float = 0.0
    skipped: float = 0.0       # this process's unreadable training images
    seconds: float = 0.0       # seconds the epoch trained before this process took it up
    step: float = 0.0          # of those and since: seconds in steps, and waiting for batches
    data: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def state(self, shard: distributed.Dist) -> dict[str, float]:
        """For last.pt; every process takes part."""
        loss, images, skipped = distributed.all_sum(
            shard, torch.tensor([self.loss, self.images, self.skipped], dtype=torch.float64)).tolist()
        return {"loss": loss, "images": images, "skipped": skipped, "seconds": self.elapsed(),
                "step_seconds": self.step, "data_seconds": self.data}

    @classmethod
    def carried(cls, so_far: dict[str, float], main: bool) -> _Tally:
        if not so_far:
            return cls()
        sums = (so_far["loss"], so_far["images"], so_far.get("skipped", 0.0)) if main else (0.0, 0.0, 0.0)
        return cls(*sums, so_far["seconds"], so_far["step_seconds"], so_far["data_seconds"])


@dataclass
class _Run:
    """Everything the loop needs, set up by _set_up: the data, the network and its step, and the position."""
    config: TrainConfig
    dist: distributed.Dist
    shard: distributed.Dist          # the processes the batch is split over (replicas under --towers)
    folder: Path
    source: DataSource
    prep: Preprocessing
    model: nn.Module                 # the network (one tower of it under --towers)
    net: nn.Module                   # what the step calls: the model, compiled and/or wrapped for DDP
    step: TrainStep
    schedule: LRSchedule
    loader: Any
    val: Any
    train_skips: SkippedFiles
    val_skips: SkippedFiles
    steps: int                       # per epoch
    batch_per_rank: int
    dtype: torch.dtype | None
    epoch: int = 0
    step_in_epoch: int = 0
    best: dict = None
    writer: Any = None
    saved_at: float = 0.0            # time.monotonic() of the last full checkpoint, or of the start
    # The weights in last.pt have not yet given a finite loss (the save came after the last step), and
    # PREVIOUS, if there, holds the checkpoint before them.
    unverified: bool = False
    tally: _Tally = dataclasses.field(default_factory=_Tally)
    data: dict = dataclasses.field(default_factory=dict)   # the training images (checkpoint.Resumable.data)
    lock: FolderLock | None = None   # rank 0's hold on the folder
    pair: distributed.Dist | None = None   # under --towers, this process's tower pair (TowerPlan.pair)

    def save_due(self) -> float:
        """1.0 on rank 0 when --save-every-minutes have passed since the last save (the others follow it)."""
        minutes = self.config.save_every_minutes
        return float(bool(minutes) and self.dist.main and time.monotonic() - self.saved_at >= 60 * minutes)

    def say(self, message: str) -> None:
        if self.dist.main:
            tqdm.write(message, file=sys.stderr)

    def checkpoint(self, path: Path, full: bool = True, verified: bool = False) -> None:
        """last.pt (full: resumable) or best.pt (weights and meaning); every process takes part.

        Non-finite weights are never written: the run stops as diverged instead. Before last.pt is
        replaced, the checkpoint it held stays as PREVIOUS until a step shows the new weights give a
        finite loss, so that a run which diverges right after a save keeps the state before; weights
        already ``verified`` (a finite validation loss at an epoch's end) need no such keeping."""
        rng = distributed.gather_objects(self.dist, _rng_state(self.dist.device)) if full else None
        so_far = self.tally.state(self.shard) if full and self.step_in_epoch else None
        if full:
            self.saved_at = time.monotonic()
        # Under --towers these gather both towers' halves onto this (rank 0's) process; every process takes
        # part, and each checks what it holds (all of it, or its tower's rows) before all agree.
        gathered = self.model.gathered_on(0) if isinstance(self.model, parallel.TowerAlexNet) else nullcontext()
        with gathered:
            weights = self.model.state_dict()
            optimizer = self.step.optimizer.state_dict() if full else None
        self.check_folder()
        finite = all(checkpoint.all_finite(t) for t in weights.values() if t.is_floating_point())
        if not distributed.everywhere(self.dist, finite):
            self.diverged(f"the weights became non-finite at epoch {self.epoch + 1}, step {self.step_in_epoch}")
        if full:
            self.unverified = not verified
        if not self.dist.main:
            return
        previous = self.folder / PREVIOUS
        if full and verified:
            previous.unlink(missing_ok=True)
            (self.folder / DIVERGED).unlink(missing_ok=True)
        elif full and path.exists() and not previous.exists():
            _keep_as_previous(path, previous)
        state = checkpoint.training_state(
            model=weights, config=self.config, classes=self.source.classes, names=self.source.names,
            prep=self.prep, epoch=self.epoch, step_in_epoch=self.step_in_epoch if full else 0, best=self.best,
            **({"optimizer": optimizer, "schedule": self.schedule.state_dict(),
                "scaler": self.step.scaler.state_dict(), "rng": rng, "so_far": so_far, "data": self.data}
               if full else {}))
        checkpoint.save(path, state)

    def check_folder(self) -> None:
        """Before a write: a folder moved away during the run (mv RUN elsewhere) would be made anew by it,
        the run split over two folders. Every process takes part, and all stop together."""
        if not distributed.everywhere(self.dist, self.lock is None or self.lock.in_place()):
            raise UserError(f"{self.folder} was moved or removed while this run held it; nothing more is written "
                            f"(moved, it holds the run as last saved: resume it where it is now)")

    def verified(self) -> None:
        """A step's loss was finite on every process: the weights in last.pt are good."""
        if self.unverified:
            self.unverified = False
            if self.dist.main:
                (self.folder / PREVIOUS).unlink(missing_ok=True)
                (self.folder / DIVERGED).unlink(missing_ok=True)

    def diverged(self, what: str) -> None:
        """Stop: keep the last checkpoint whose weights gave a finite loss, record why for --resume, and
        say what there is to resume from."""
        last, previous = self.folder / "last.pt", self.folder / PREVIOUS
        if self.dist.main:
            if self.unverified:   # last.pt holds the weights that just diverged
                if previous.exists():
                    os.replace(previous, last)
                else:
                    last.unlink(missing_ok=True)
            atomic_write(self.folder / DIVERGED, lambda tmp: Path(tmp).write_text(json.dumps(
                {"epoch": self.epoch + 1, "step": self.step_in_epoch, "what": what}) + "\n"))
        distributed.barrier(self.dist)
        remedy = "a lower --lr, a longer --warmup-epochs or another --weight-decay"
        if last.exists():
            saved = checkpoint.read_resumable(last)
            kept = (f"{last} (epoch {saved.epoch + 1}, step {saved.step_in_epoch}) is the last good state; "
                    f"resume it with {remedy}: alexnet train --out {shlex.quote(str(self.folder))} --resume "
                    f"--lr ...")
        else:
            kept = f"no checkpoint was saved before it; start again with {remedy}"
        raise NonFiniteLoss(f"{what}; stopped, {kept}")


def _keep_as_previous(last: Path, previous: Path) -> None:
    # A second name for the same file (no copy); where links are not allowed, a copy.
    try:
        os.link(last, previous)
    except OSError:
        shutil.copyfile(last, previous)
        shutil.copymode(last, previous)   # a private last.pt's copy private too (a rollback puts it back)


def train(config: TrainConfig, resume: bool | str = False, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume: True, or "auto") training as ``config`` says; returns the final epoch's metrics and
    the best top-1.

    ``config``: best made by config.resolve(preset, settings); a TrainConfig built directly holds its
    fields' defaults (the paper's), whatever its ``preset`` says. A resume takes ``config``'s settings
    where a resume may change them (a larger ``epochs``) and refuses the others' changes, as the command
    does; ``given`` (the command's flags) narrows what counts as asked for."""
    config.validate()
    # `~/runs/x` is the home folder's, as on the command line (its --out's type expands it): checked there and
    # written literally, it made a folder named "~" in the current one.
    config = dataclasses.replace(config, out=os.path.expanduser(config.out))
    _check_out(config)
    # What was asked for, judged once the data and weights are open (_refuse_unread_settings).
    asked = given if given is not None else _asked_in(config)
    device = start_device(config, resume, given)
    try:
        dist = distributed.setup(device)
    except UserError as e:
        if device == config.device or not str(e).startswith("--device"):
            raise
        # Not asked for: the device the run was trained on, which this machine (or torchrun) cannot give.
        raise UserError(f"{Path(config.out) / 'last.pt'} records device {device}, where the run was trained, "
                        f"and it cannot be used here ({e}); give --device to resume it on another (e.g. --device "
                        f"{'cuda' if device.startswith('cuda:') and torch.cuda.is_available() else 'cpu'})") from None
    lock = FolderLock(config.out, "train")
    # The filters a run sets (_check_workers) end with it: the caller's stay as they were.
    try:
        with warnings.catch_warnings():
            with _StopsAtOnce(dist):
                _hold(lock, dist)
                config, ckpt, start = resolve_run(config, resume, given, dist)
                if config.tensorboard:   # a resumed run's own too: found now, not after the statistics pass
                    _tensorboard_class()
                _check_workers(config, dist)
                if ckpt is not None and ckpt.epoch >= config.epochs:
                    return _complete(config, ckpt, dist)
                run = _set_up(config, ckpt, dist, start, asked)
                run.lock = lock
                start = None   # copied into the network: not held for the whole run
            # Its tensors are mapped from last.pt: once copied into the network and momentum, the pages they
            # read (up to the checkpoint's size, 1 GB for a float64 paper run) leave this process.
            del ckpt
            try:
                return _train(run)
            finally:
                del run   # its DDP holds the process group: gone before the teardown (distributed.teardown says why)
    finally:
        lock.release()
        distributed.teardown(dist)


def start_device(config: TrainConfig, resume: bool | str, given: dict[str, Any] | None) -> str:
    """The device setting this process starts on, decided before its process group exists (distributed.setup
    comes once a process, and resolve_run needs the group): --device where it was asked for (a resume may
    change it), else a resumed run's own, as its last.pt records it, not the flag's default."""
    asked = given if given is not None else _asked_in(config)
    last = Path(config.out) / "last.pt"
    restarted = _restarted()   # may resume by itself (resolve_run)
    if "device" in asked or not (resume or restarted) or not last.exists():
        return config.device
    recorded = (checkpoint.recorded_config(last) or {}).get("device")
    # Unreadable or damaged: the flag's, and resolve_run refuses the checkpoint in one line.
    return recorded if isinstance(recorded, str) and _is_device(recorded) else config.device


def _is_device(text: str) -> bool:
    try:
        device_setting(text)
    except UserError:
        return False
    return True


def _check_out(config: TrainConfig) -> None:
    """The run folder: a folder, and not one inside the data (its lock would be a class folder there)."""
    out = Path(config.out).expanduser()
    if not config.out.strip():
        raise UserError("--out is empty; give the run folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a link to {os.readlink(out)}, which leads to no folder (a link to nothing, "
                        f"or a loop of links); give a folder for the run")
    if config.data:
        # realpath, not resolve: a loop of links in --data is said where the data is opened, not here.
        target = Path(os.path.realpath(out))
        for split in ("train", "val"):
            root = Path(os.path.realpath(Path(config.data).expanduser() / split))
            if target == root or root in target.parents:
                raise UserError(f"--out {out} lies inside {root}, which training reads; choose a folder outside it")


def _check_workers(config: TrainConfig, dist: distributed.Dist) -> None:
    cap = most_workers()
    if config.workers is not None and config.workers > cap:
        raise UserError(f"--workers {config.workers} is more loader processes than this machine can use; "
                        f"give at most {cap} (4 per CPU core)")
    cores = usable_cores()
    if config.workers is not None and config.workers > cores:
        # Allowed (a loader waiting on a network file system may want more), but said once here: torch
        # would say it in a paragraph for every loader each time one starts, four times an epoch.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        if dist.main:
            tqdm.write(f"alexnet train: warning: --workers {config.workers} per process is more than the "
                       f"{cores} cores this process may use; loading may be slower, not faster", file=sys.stderr)


def _complete(config: TrainConfig, ckpt: checkpoint.Resumable, dist: distributed.Dist) -> dict[str, Any]:
    """A resumed run that has done all its epochs: nothing to train, and nothing in RUN changes (a job
    requeued after it finished ends at once, successfully)."""
    best = ckpt.best
    if dist.main:
        tqdm.write(f"alexnet train: {config.out} is complete: {ckpt.epoch} of {config.epochs} epochs done, best val "
                   f"top-1 {100 * best['top1']:.1f}% at epoch {best['epoch']}; to train it further, resume with a "
                   f"larger --epochs (e.g. --epochs {2 * ckpt.epoch})", file=sys.stderr)
    return {"best_top1": best["top1"], "best_epoch": best["epoch"], "run": str(config.out), "complete": True}


def _hold(lock: FolderLock, dist: distributed.Dist) -> None:
    """Rank 0 holds the run folder for the whole run; a second `alexnet train` on it is refused, before it
    reads or writes anything there (decided together, so that no process waits for a refused one)."""
    problem = ""
    if dist.main:
        try:
            if not lock.acquire():
                problem = (f"{lock.folder} is in use by {lock.refusal()}; wait for it to finish, or choose "
                           f"another --out")
        except OSError as e:
            problem = f"cannot use {lock.folder} as the run folder ({e.strerror or e})"
    if distributed.all_max(dist, torch.tensor([float(bool(problem))]))[0]:
        raise UserError(problem or f"{lock.folder} was refused by rank 0 (its message says why)")
    # Every process must see the folder rank 0 holds: it resumes from it. A folder of each node's own (or
    # a relative --out from another working directory) trained for hours, then failed at the first restart.
    token = distributed.broadcast_object(dist, lock.token)
    sees = dist.main or _sees(lock.folder, token)
    if not distributed.everywhere(dist, sees):
        raise UserError(f"--out {lock.folder} is not the same folder for every process: "
                        f"{'this one' if not sees else 'some'} cannot see the run folder rank 0 holds (its "
                        f"{FolderLock.NAME}); give a path every node shares (a network file system), the same "
                        f"from every node's working directory")


def _sees(folder: Path, token: str, tries: int = 6) -> bool:
    for _ in range(tries):   # a network file system may show a new file to other nodes a moment later
        if FolderLock(folder).seen_token() == token:
            return True
        time.sleep(0.5)
    return False


def _set_up(config: TrainConfig, ckpt: checkpoint.Resumable | None, dist: distributed.Dist,
            start: LoadedModel | None = None, asked: dict[str, Any] | None = None) -> _Run:
    """``asked``: the settings asked for by name (the flags given, or those differing from the preset)."""
    folder = Path(config.out)
    # --towers 2: a process holds one tower (alexnet.parallel); the batch is split over replicas (pairs).
    towers = parallel.plan(dist) if config.towers > 1 else None
    shard = towers.data if towers else dist
    # A global batch the world does not divide (an elastic job that lost a node: 128 over 24) is split in
    # shares differing by one, each rank's loss weighted so that the update is the global batch's.
    batches = rank_batches(config.batch_size, shard.world)
    uneven = len(set(batches)) > 1
    if uneven and (towers or config.accumulate > 1 or batches[-1] == 0):
        why = ("the towers need equal halves" if towers else
               f"--accumulate {config.accumulate} needs equal shares" if config.accumulate > 1 else
               "some would have no image")
        raise UserError(f"--batch-size {config.batch_size} does not split evenly over {shard.world} processes ({why})")
    batch_per_rank = batches[shard.rank]
    if batch_per_rank % config.accumulate:
        raise UserError(f"--accumulate {config.accumulate} does not split each process's {batch_per_rank} images "
                        f"(--batch-size {config.batch_size} over {shard.world}) into equal parts")
    dtype = autocast_dtype(config.precision, dist.device)
    if config.precision == "auto" and distributed.all_max(dist, torch.tensor([float(dtype == torch.float16)])).item():
        # One dtype for the job: a GPU without native bf16 anywhere in it (a V100 among A100s) makes it fp16 on
        # all, else some ranks' gradients would come scaled by the loss scaler and others not.
        dtype = torch.float16
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # every batch has the same shape: pick the fastest kernels once
    # The data is checked before anything is printed or written: a wrong --data leaves RUN as it was. Each
    # process opens its own (node-local copies, maybe), and all are refused together.
    source, steps, problem = None, 0, ""
    try:
        source = _open_data(config, dist, resumed=ckpt is not None)
        steps = _check_data(config, source, ckpt, steps_per_epoch(len(source.splits["train"]), batch_per_rank,
                                                                  shard.world, batches))
        if ckpt is None:   # a resume's statistics and network come from its checkpoint
            _refuse_unread_settings(config, source, start, asked or {})
    except UserError as e:
        problem = str(e)
    seen = _check_same_data(dist, source, problem)
    train_set, val_set = source.splits["train"], source.splits["val"]
    known = ckpt or start
    if known is not None:
        source = dataclasses.replace(source, names=finetune.readable_names(source.classes, source.names,
                                                                           known.classes, known.names))
    agents = [a for a in distributed.gather_objects(dist, _agent()) if a is not None]
    if dist.main:
        _open_folder(folder, config, agents, resumed=ckpt is not None, how=f"{dist.world} x {dist.device.type}, "
                                                                  f"{precision_name(dtype, config.precision)}")
        if start is not None:
            tqdm.write(finetune.summary(config.weights, start, source.classes, config.freeze), file=sys.stderr)
        elif config.preset == "paper" and config.init == "paper" and len(train_set) < SMALL_DATA:
            tqdm.write(f"note: the paper's recipe is ImageNet's (1.28M images); on {len(train_set):,} it tends to "
                       f"stay at chance or diverge: --preset demo is made for small sets", file=sys.stderr)
    # One record of unreadable training files for the statistics pass and the epochs: each warned once.
    train_skips = SkippedFiles(train_set)
    prep = ckpt.prep if ckpt is not None else _preprocessing(config, train_set, dist, train_skips,
                                                             start.norm if start else None)
    train_skips.end_epoch()   # the statistics pass is no epoch

    torch.manual_seed(config.seed + dist.rank)  # dropout: a different stream on every rank
    fresh = ckpt is None   # else _restore loads every weight (load_state_dict is strict)
    if towers:  # every process cuts its tower from the network one process would start from
        model = parallel.build(lambda: build_model(config, len(source.classes), fresh, start, source.classes),
                               config.seed, towers)
    else:
        model = build_model(config, len(source.classes), fresh, start, source.classes)
    # fp64: initialised in float32 as always, then widened, so that fp32 and fp64 runs start from one network.
    model = model.to(dist.device, weights_dtype(config.precision))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_for(model, config, dist.device, scaled=dtype == torch.float16)
    if towers:
        model.shard_optimizer(optimizer)  # its state_dict too is the single-device network's
    net: nn.Module = torch.compile(model) if config.compile else model
    if towers:
        net = towers.data_parallel(net, dist.device)
    elif dist.active:
        net = DistributedDataParallel(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    divisor = config.batch_size / shard.world if uneven else batch_per_rank   # see TrainStep
    paper_momentum = config.momentum if config.optimizer == "sgd" and config.update_rule == "paper" else None
    step = TrainStep(net, optimizer, prep, dist.device, dtype, divisor, config.label_smoothing, config.accumulate,
                     paper_momentum, pair=towers.pair if towers else None)
    schedule = LRSchedule(config.schedule, config.lr, steps, config.epochs, config.warmup_epochs,
                          config.lr_gamma, config.step_epochs, config.patience, config.max_lr_drops)

    pin = dist.device.type == "cuda"
    # for_device: the loop drops unreadable samples, then moves batches to the device (a jpeg store's
    # batches are then decoded there, by nvJPEG on a GPU).
    feed = train_set.for_device(dist.device)
    workers = config.workers if config.workers is not None else default_workers(feed, dist.device)
    run = _Run(config, dist, shard, folder, source, prep, model, net, step, schedule,
               train_loader(feed, batch_per_rank, shard.rank, shard.world, config.seed, workers, pin, batches),
               eval_loader(val_set.for_device(dist.device), batch_per_rank, shard.rank, shard.world, workers, pin),
               train_skips, SkippedFiles(val_set), steps, batch_per_rank, dtype,
               best={"top1": -1.0, "epoch": -1}, saved_at=time.monotonic(), pair=towers.pair if towers else None)
    if dist.main:   # only rank 0 writes checkpoints, and says what changed
        # Computed for the comparison already where there are other processes (hashing ImageNet's names takes
        # seconds).
        run.data = {"images": len(train_set), "fingerprint": seen[3] if seen else fingerprint(train_set)}
    if ckpt is not None:
        _restore(run, ckpt)
    if config.tensorboard and dist.main:
        run.writer = _tensorboard(folder)
    return run


def _refuse_unread_settings(config: TrainConfig, source: DataSource, start: LoadedModel | None,
                            asked: dict[str, Any]) -> None:
    """Settings asked for (``asked``) that a fresh run decides to leave unread only once its data and weights
    are open (config.refuse_settings_that_do_nothing judges the rest): where statistics come from, and
    whether fc8 is new."""
    if "stats_images" in asked:
        _refuse_unread_stats_images(config, source.splits["train"], start)
    if start is not None:
        finetune.check_fc8_start(config, start, source.classes, asked)


def _check_data(config: TrainConfig, source: DataSource, ckpt: checkpoint.Resumable | None, steps: int) -> int:
    """``steps``, the training steps of an epoch, if ``source`` can be trained on as ``config`` says."""
    train_set, val_set = source.splits["train"], source.splits["val"]
    if len(source.classes) < 2:   # softmax over one class: loss 0 and no gradient, "100%" for anything
        raise UserError(f"{source.root} has one class ({source.classes[0]}): a classifier needs at least two "
                        f"class folders")
    if ckpt is not None and ckpt.classes != source.classes:
        raise UserError(f"the data's classes differ from those the run was started with ({config.data})")
    if steps == 0:
        raise UserError(f"{len(train_set)} training image files make no full batch of {config.batch_size}; add "
                        f"images or use a smaller --batch-size")
    # Broken files found now, not after an epoch: a split of them, or a class of them in train.
    train_set.check_readable(every_class=True)
    val_set.check_readable()
    return steps


def _check_same_data(dist: distributed.Dist, source: DataSource | None, problem: str) -> tuple | None:
    """Every process must train on the images rank 0 does. Node-local copies of a data set can differ, and
    then the ranks trained an epoch apart and failed in a collective (gloo's abort, DDP's traceback), with
    the statistics of a mix of both written. Decided together, as is a process's refusal of its data
    (``problem``; ``source`` None where it could not open it): one refused alone left the others waiting.
    Returns what this process sees (_data_seen), None with one process, where nothing is compared."""
    seen = None if source is None or not dist.active else _data_seen(source)
    everyone = distributed.gather_objects(dist, (problem, seen))
    views = [view for _, view in everyone]
    other = next((rank for rank, view in enumerate(views) if None not in (view, views[0]) and view != views[0]),
                 None)
    if other is not None:   # rather than what the data's differences make one process say of its own
        raise UserError(f"the processes see different data (rank 0: {_seen(views[0])}; rank {other}: "
                        f"{_seen(views[other])}): --data must hold the same images on every node")
    if any(p for p, _ in everyone):
        rank, first = next((rank, p) for rank, (p, _) in enumerate(everyone) if p)
        raise UserError(problem or f"{first} (in process {rank} of {len(everyone)})")
    return seen


def _data_seen(source: DataSource) -> tuple:
    """What a process sees of its data: its classes, and its splits' sizes and file lists (fingerprint: the
    names of its files, not their pixels; rank 0's training one goes into last.pt)."""
    train_set, val_set = source.splits["train"], source.splits["val"]
    return tuple(source.classes), len(train_set), len(val_set), fingerprint(train_set), fingerprint(val_set)


def _seen(view: tuple) -> str:
    classes, train, val, train_print, val_print = view
    return (f"{train:,} training and {val:,} validation images in {len(classes)} classes, fingerprints "
            f"{train_print} and {val_print}")


# At most this many loader processes by default (as bench gpu): beyond, each adds memory and start-up time.
def _open_folder(folder: Path, config: TrainConfig, agents: list[str], resumed: bool, how: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # A process killed while writing a checkpoint leaves its temporary file (hundreds of MB) behind.
    for leftover in list(folder.glob(".last.pt.*.tmp")) + list(folder.glob(".best.pt.*.tmp")):
        leftover.unlink(missing_ok=True)
    if not resumed:   # a fresh run: nothing of an earlier attempt is kept
        for name in (PREVIOUS, DIVERGED, "metrics.jsonl"):
            (folder / name).unlink(missing_ok=True)
    atomic_write(folder / "config.yaml", lambda tmp: Path(tmp).write_text(_config_text(config)))
    if agents:
        atomic_write(folder / JOB, lambda tmp: Path(tmp).write_text(json.dumps(sorted(set(agents)))))
    else:
        (folder / JOB).unlink(missing_ok=True)
    tqdm.write(f"alexnet train: {'resuming ' if resumed else ''}{folder} on {how}\n{dump_yaml(config).rstrip()}",
               file=sys.stderr)


def _drop_rows_after(metrics: Path, epoch: int) -> None:
    """Rows of epochs the checkpoint does not hold (their process died before its save) go, as does a row
    cut short by a kill: those epochs come again."""
    if metrics.is_file():
        rows = metrics.read_text().splitlines(keepends=True)
        kept = [row for row in rows if _epoch_of(row) <= epoch]
        if kept != rows:   # replaced whole: a kill meanwhile leaves every row or the kept ones
            atomic_write(metrics, lambda tmp: Path(tmp).write_text("".join(kept)))


def _epoch_of(row: str) -> float:
    try:
        return json.loads(row)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _padded_steps(ckpt: checkpoint.Resumable, images: int) -> int:
    """The steps an epoch of ``images`` had on the processes that wrote ``ckpt`` (a random state for each; a
    pair of them is one replica under --towers) where it comes from an earlier version, whose even split
    counted DistributedSampler's padding: one step more than one process where n mod B > B - P."""
    world = max(len(ckpt.rng) // (parallel.TOWERS if ckpt.config.towers > 1 else 1), 1)
    batches = rank_batches(ckpt.config.batch_size, world)
    return images // sum(batches) if len(set(batches)) > 1 else math.ceil(images / world) // batches[0]


def _restore(run: _Run, ckpt: checkpoint.Resumable) -> None:
    run.model.load_state_dict(ckpt.model)
    # load_state_dict takes the groups' settings from the checkpoint too: a diverged run resumed with another
    # --weight-decay would keep the old one, a run saved fused, resumed under fp16's loss scaler (an older GPU),
    # would be fused again (see step.sgd), and a last.pt of another version or tool whose groups say nesterov,
    # dampening or maximize would train with them, config.yaml saying otherwise. The groups as this run built
    # them decide every setting but the learning rate: the schedule sets it before each step, and the paper's
    # update rule scales that step's momentum by the last one (step.set_lr), which the checkpoint holds.
    ours = [{k: v for k, v in group.items() if k != "lr"} for group in run.step.optimizer.param_groups]
    run.step.optimizer.load_state_dict(ckpt.optimizer)
    for group, kept in zip(run.step.optimizer.param_groups, ours):
        lr = group["lr"]
        group.clear()   # a setting this version does not know (another tool's) goes too
        group.update(kept, lr=lr)
    _own_state(run.step.optimizer)
    run.schedule.load_state_dict(ckpt.schedule)
    if ckpt.scaler:   # empty: saved without loss scaling (fp32, bf16), which auto may now add (an older GPU)
        run.step.scaler.load_state_dict(ckpt.scaler)
    run.epoch, run.step_in_epoch, run.best = ckpt.epoch, ckpt.step_in_epoch, ckpt.best
    images = len(run.source.splits["train"])
    if run.step_in_epoch > run.steps and run.step_in_epoch == _padded_steps(ckpt, images):
        # Stopped in the validation of an epoch that ended with a padded step (2 processes on 11 images in
        # batches of 4 took 3 steps, where epochs now have 2): its training is done; the resume validates it.
        run.step_in_epoch = run.steps
    if run.step_in_epoch > run.steps:
        raise UserError(f"{run.folder / 'last.pt'} stopped at step {run.step_in_epoch} of an epoch, and "
                        f"{run.config.data} makes epochs of {run.steps} steps: resume it with the data it was "
                        f"trained on")
    run.tally = _Tally.carried(ckpt.so_far, run.dist.main)
    if run.dist.main:
        _drop_rows_after(run.folder / "metrics.jsonl", ckpt.epoch)
    if len(ckpt.rng) == run.dist.world:
        _set_rng_state(ckpt.rng[run.dist.rank], run.dist.device)
    else:
        run.say(f"note: resumed on {_processes(run.dist.world)}, saved on {len(ckpt.rng)}: "
                f"dropout draws a fresh random stream")
    # A process stopped between a save and the step after it: last.pt is not yet known to be good.
    run.unverified = (run.folder / PREVIOUS).exists()
    if ckpt.data and run.data and ckpt.data["fingerprint"] != run.data["fingerprint"]:
        then, now = ckpt.data["images"], run.data["images"]
        run.say(f"note: {run.config.data or 'the data'} holds other training images than {run.folder / 'last.pt'} was "
                f"trained on ({then:,} then, {now:,} now{', other files' if then == now else ''}): the run goes on "
                f"with them, so it will not end with the weights of a run that never stopped")
    run.say(f"resuming at epoch {run.epoch + 1}, step {run.step_in_epoch} of {run.steps}")


def _train(run: _Run) -> dict[str, Any]:
    config, dist = run.config, run.dist
    result: dict[str, Any] = {}
    with _StopFlag(run.folder / "last.pt" if run.dist.main else None) as stop:
        while run.epoch < config.epochs:
            # A signal during the last epoch's end (best.pt, last.pt) stops here, not after one more step:
            # last.pt already holds this point. Decided together, as a step's stop is.
            if run.epoch and distributed.all_max(dist, torch.tensor([float(stop.signal is not None)])).item():
                _stop(run, stop.signal or signal.SIGTERM, saved=True)
            run.loader.sampler.set_position(run.epoch, run.step_in_epoch * run.batch_per_rank)
            run.net.train()
            set_dropout(run.model, config.dropout if run.epoch + 1 >= config.dropout_start else 0.0)
            if not run.step_in_epoch:
                run.tally = _Tally()
            tally, first = run.tally, run.step_in_epoch
            tally.started = t0 = time.perf_counter()
            seen = 0   # images since this process took the epoch up: its progress line's rate
            # The rate of the epoch's last step taken (a run stopped after it resumes with none to take).
            lr = run.schedule.lr_at(run.epoch * run.steps + max(run.step_in_epoch - 1, 0))
            bar = tqdm(total=run.steps, initial=run.step_in_epoch, desc=f"epoch {run.epoch + 1}/{config.epochs}",
                       unit="step", disable=not dist.main or None, leave=False, dynamic_ncols=True)
            # Where the epoch's time goes (metrics.jsonl): waiting for batches, and the steps themselves.
            waited_since = time.perf_counter()
            for images, labels, indices, errors in run.loader:
                started = time.perf_counter()
                tally.data += started - waited_since
                lr = run.schedule.lr_at(run.epoch * run.steps + run.step_in_epoch)
                draws = Draws.per_sample(indices, run.epoch, config.seed, images.shape[1], images.shape[2],
                                         run.prep.size, config.flip).select(labels >= 0)
                images, labels = run.train_skips.keep(images, labels, indices, errors)
                tally.skipped += run.train_skips.end_epoch()
                loss = run.step.forward_backward(images, labels, draws, lr)
                # Decided together: a signal or the clock on one rank, a non-finite loss on any.
                stopping, diverged, save_due = distributed.all_max(dist, torch.tensor(
                    [float(stop.signal is not None), float(not torch.isfinite(loss).item()), run.save_due()])).tolist()
                if diverged:
                    bar.close()
                    run.diverged(f"the loss became {loss.item()} at epoch {run.epoch + 1}, step {run.step_in_epoch}")
                run.verified()
                run.step.update()
                tally.step += time.perf_counter() - started
                run.step_in_epoch += 1
                summed = loss.item() * run.step.batch_per_rank   # one read of the loss (a sync on a GPU)
                seen += len(labels)
                tally.images += len(labels)
                tally.loss += summed
                bar.update(1)
                if run.step_in_epoch % config.log_every == 0:
                    _progress(run, bar, lr, seen, time.perf_counter() - t0, first)
                if stopping:
                    bar.close()
                    _stop(run, stop.signal or signal.SIGTERM)  # no signal here: another rank was signalled
                every = config.save_every and (run.epoch * run.steps + run.step_in_epoch) % config.save_every == 0
                if (every or save_due) and run.step_in_epoch < run.steps:
                    run.checkpoint(run.folder / "last.pt")
                if run.step_in_epoch >= run.steps:
                    break
                waited_since = time.perf_counter()
            bar.close()
            result = _end_epoch(run, lr, run.steps > first, stop)
    if run.writer is not None:
        run.writer.close()
    result = dict(result, best_top1=run.best["top1"], best_epoch=run.best["epoch"], run=str(run.folder))
    run.say(f"done: best val top-1 {100 * run.best['top1']:.1f}% at epoch {run.best['epoch']}; "
            f"{run.folder / 'best.pt'}, {run.folder / 'last.pt'}, {run.folder / 'metrics.jsonl'}")
    return result


def _progress(run: _Run, bar: tqdm, lr: float, seen: int, seconds: float, first: int) -> None:
    """The progress bar's figures; without a terminal (a cluster job's log), the same as a plain line.
    Every process calls it: the loss and images are the job's (summed over the processes), not rank 0's.
    The loss is the epoch's so far, as its metrics row will have it, a resumed epoch's too (the tally
    carries the steps before the stop); the rate is this attempt's (``seen`` in ``seconds``)."""
    tally = run.tally
    loss_sum, images, seen = distributed.all_sum(
        run.shard, torch.tensor([tally.loss, tally.images, seen], dtype=torch.float64)).tolist()
    loss, img_s = loss_sum / max(images, 1), seen / seconds
    if not bar.disable:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", img_s=f"{img_s:.0f}")
        return
    left = (run.steps - run.step_in_epoch) * seconds / max(run.step_in_epoch - first, 1)
    run.say(f"epoch {run.epoch + 1}/{run.config.epochs} step {run.step_in_epoch}/{run.steps}: loss {loss:.3f}, "
            f"lr {lr:.3g}, {img_s:.0f} img/s, epoch ends in {int(left) // 60}:{int(left) % 60:02d}")


def _stop(run: _Run, signum: int, saved: bool = False) -> None:
    """Save last.pt (unless ``saved``: it holds this point already), say how to resume, and stop."""
    if not saved:
        run.checkpoint(run.folder / "last.pt")
    if run.dist.world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:   # not under torchrun
        # quoted: the line is pasted into a shell, and a folder may have a space or a quote in its name
        how = f"Resume with: alexnet train --out {shlex.quote(str(run.folder))} --resume"
    else:   # a towers run needs tower pairs, or none (parallel.plan)
        how = "Resume with the same torchrun command and --resume (" + (
            "an even number of processes, or any number with --towers 1)" if run.config.towers > 1 else
            "any number of processes)")
    where = (f"after epoch {run.epoch}" if saved else
             f"at epoch {run.epoch + 1}, step {run.step_in_epoch} of {run.steps}")
    run.say(f"alexnet train: stopped by {signal_name(signum)} {where}; {run.folder / 'last.pt'} is saved. "
            f"{how}")
    raise Stopped(signum)


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def _end_epoch(run: _Run, lr: float, trained: bool, stop: _StopFlag) -> dict[str, Any]:
    """Validation, best.pt, the schedule, last.pt and the metrics row of the epoch just trained (``trained``:
    this process took steps in it; not so when resumed from a stop after its last step), whose training
    run.tally holds. A signal during validation (minutes of ImageNet's val set: more than a scheduler's
    notice) gives it up and stops with last.pt at the epoch's last step; a resume validates then."""
    tally = run.tally
    train_seconds = tally.elapsed()
    # Summed over the processes: each reads (and skips) only its share of the images.
    totals = distributed.all_sum(run.shard, torch.tensor([tally.loss, tally.images, tally.skipped],
                                                         dtype=torch.float64))
    evaluated = time.perf_counter()
    metrics = evaluate(run.model, run.val, run.val_skips, run.prep.size, run.prep.norm, run.shard, crops=1,
                       dtype=run.dtype, stop=lambda: _stop_validation(run, stop))
    # Every process must stop if any does (each shard decided alone; with towers there are several).
    if distributed.all_max(run.dist, torch.tensor([float(metrics.get("stopped", False))])).item():
        _stop(run, stop.signal or signal.SIGTERM)
    if totals[1] == 0 and trained:
        raise UserError(f"no readable image in {run.source.splits['train'].split.root}: every file was skipped")
    if metrics["images"] == 0:
        raise UserError(f"no readable image in {run.source.splits['val'].split.root}: every file was skipped")
    evaluated = time.perf_counter() - evaluated
    if not math.isfinite(metrics["loss"]):
        run.diverged(f"the validation loss became {metrics['loss']} after epoch {run.epoch + 1}")
    run.epoch += 1
    run.step_in_epoch = 0
    if metrics["top1"] > run.best["top1"]:
        run.best = {"top1": metrics["top1"], "epoch": run.epoch}
        run.checkpoint(run.folder / "best.pt", full=False)
    dropped = run.schedule.end_epoch(metrics["top1"])
    row = {"epoch": run.epoch, "lr": lr, "train_loss": totals[0].item() / max(totals[1].item(), 1),
           "val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"],
           "images_per_sec": totals[1].item() / train_seconds, "seconds": tally.elapsed(),
           "skipped": int(totals[2].item()) + metrics["skipped"],
           "step_seconds": tally.step, "data_seconds": tally.data, "eval_seconds": evaluated}
    run.check_folder()
    if run.dist.main:   # the row before last.pt: a resume drops rows past its checkpoint, none is lost
        with open(run.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    run.checkpoint(run.folder / "last.pt", verified=True)
    if run.dist.main:
        if run.writer is not None:
            for key in ("lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec"):
                run.writer.add_scalar(key, row[key], run.epoch)
        skipped = f", {row['skipped']} unreadable image{'s' * (row['skipped'] != 1)} skipped" if row["skipped"] else ""
        run.say(f"epoch {run.epoch}/{run.config.epochs}: lr {lr:.3g}, train loss {row['train_loss']:.3f}, "
                f"val loss {row['val_loss']:.3f}, val top-1 {100 * row['val_top1']:.1f}%, "
                f"top-5 {100 * row['val_top5']:.1f}%, {row['images_per_sec']:.0f} img/s, "
                f"{row['seconds']:.0f} s ({row['step_seconds'] / row['seconds']:.0%} of it in steps){skipped}"
                + (" (learning rate divided)" if dropped else ""))
    return row


def _stop_validation(run: _Run, stop: _StopFlag) -> bool:
    """Whether validation gives up before its next batch. Under --towers each forward pass is a collective over
    the tower pair, so the pair decides together: a tower leaving alone waited in the sums after the pass while
    its partner waited in the forward pass's exchange, both for ever. The pair only: a pair's towers read the
    same shard, batch for batch, while replicas may have a batch more or less (evaluate's sums settle those)."""
    asked = stop.signal is not None
    if run.pair is None:
        return asked
    return bool(distributed.all_max(run.pair, torch.tensor([float(asked)])).item())


def _tensorboard_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def _tensorboard(run: Path):
    return _tensorboard_class()(str(run / "tensorboard"))
