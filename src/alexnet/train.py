"""The recipe and the loop: one code path from a 2-core laptop to many GPUs.

    alexnet train --preset demo --out runs/demo                         # the bundled demo set, one process
    alexnet train --data /imagenet --preset paper --out runs/paper      # the paper's recipe
    torchrun --nproc_per_node=8 -m alexnet train --data /imagenet ...   # data-parallel on one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m alexnet train --data /imagenet ...                           # the same, over two machines
    alexnet train --out runs/paper --resume                             # continue where it stopped

Every epoch: RUN/last.pt (and every --save-every steps), RUN/best.pt (best val top-1, weights only),
a line in RUN/metrics.jsonl. SIGTERM or Ctrl-C finishes the step, writes last.pt and exits; --resume
continues from the very next batch with the same random numbers, so the weights end up as if the run
had never stopped. Rank 0 alone prints and writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from alexnet import distributed, parallel
from alexnet.config import TrainConfig, dump_yaml, from_dict
from alexnet.data.folders import FixedSizeImages, SkippedFiles, discover
from alexnet.data.loader import eval_loader, steps_per_epoch, train_loader
from alexnet.data.prepared import PreparedImages, is_prepared, open_prepared
from alexnet.data.stats import DataStats, load_or_compute_stats
from alexnet.data.transforms import Draws, Normalize, PCANoise, train_views
from alexnet.errors import UserError
from alexnet.evaluate import evaluate
from alexnet.model import AlexNet
from alexnet.precision import autocast, autocast_dtype
from alexnet.precision import name as precision_name
from alexnet.schedule import LRSchedule
from alexnet.weights import load_checkpoint, save_checkpoint

# What may change when a run is resumed; anything else would make it a different run.
RESUMABLE_CHANGES = {"epochs", "workers", "save_every", "log_every", "tensorboard", "compile", "data", "device",
                     "towers"}
CHECKPOINT_FORMAT = 1


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class Stopped(Exception):
    """SIGINT or SIGTERM: the step was finished and last.pt written; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@dataclass
class Preprocessing:
    """What turns uint8 images into network input; recorded in checkpoints so inference matches training."""
    size: int
    norm: Normalize
    pca: PCANoise | None

    def to_state(self, kind: str) -> dict[str, Any]:
        return {"crop": self.size, "normalization": kind, "mean": self.norm.mean,
                "std": self.norm.std, "pca_eigvals": None if self.pca is None else self.pca.eigvals,
                "pca_eigvecs": None if self.pca is None else self.pca.eigvecs,
                "pca_convention": None if self.pca is None else self.pca.convention}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Preprocessing:
        pca = None
        if state.get("pca_eigvals") is not None:
            pca = PCANoise(state["pca_eigvals"], state["pca_eigvecs"], convention=state["pca_convention"])
        return cls(state["crop"], Normalize(state["mean"], state["std"]), pca)


def resolve_run(config: TrainConfig, resume: bool, given: dict[str, Any]) -> tuple[TrainConfig, dict | None]:
    """The configuration to run with, and the checkpoint to resume from (None for a fresh run).

    A fresh run never overwrites an earlier one; a resumed run takes its settings from its checkpoint,
    changed only where RESUMABLE_CHANGES allows.
    """
    run = Path(config.out)
    last = run / "last.pt"
    if not resume:
        if last.exists():
            raise UserError(f"{run} already holds a run (last.pt); add --resume to continue it, "
                            f"or choose another --out")
        return config, None
    if not last.exists():
        raise UserError(f"nothing to resume: {last} does not exist")
    ckpt = load_checkpoint(last)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise UserError(f"{last} is not a resumable training checkpoint of this version")
    saved = from_dict(ckpt["config"], f"{last}")
    changes = {k: v for k, v in given.items() if k not in ("out", "preset") and getattr(saved, k) != v}
    refused = sorted(set(changes) - RESUMABLE_CHANGES)
    if refused:
        raise UserError(f"cannot change {', '.join('--' + k.replace('_', '-') for k in refused)} when resuming "
                        f"(the run was started with {', '.join(f'{k}={getattr(saved, k)!r}' for k in refused)})")
    values = saved.to_dict() | changes | {"out": str(run)}
    return from_dict(values, "resumed run"), ckpt


def demo_data_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "alexnet" / "demo-seed0"


def _open_data(config: TrainConfig, dist: distributed.Dist):
    data = Path(config.data).expanduser() if config.data else demo_data_dir()
    if not config.data:
        if dist.local_rank == 0:
            from alexnet.data.demo import write_demo_set
            write_demo_set(data, seed=0, progress=dist.main)
        distributed.barrier(dist)
    if is_prepared(data):
        folders, sets = open_prepared(data)
        return folders, sets["train"], sets["val"]
    folders = discover(data)
    return folders, FixedSizeImages(folders.splits["train"]), FixedSizeImages(folders.splits["val"])


def _preprocessing(config: TrainConfig, train_set: FixedSizeImages, dist: distributed.Dist) -> Preprocessing:
    needs_stats = config.normalization != "imagenet" or config.pca_noise != "none"
    stats: DataStats | None = None
    if needs_stats:
        cache = Path(config.out) / "data_stats.safetensors"
        if isinstance(train_set, PreparedImages) and dist.main and not cache.exists():
            # `prepare` computed them already; the fingerprint check in load_or_compute_stats still applies.
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(train_set.root / "data_stats.safetensors", cache)
        kwargs = dict(workers=config.workers, max_images=config.stats_images or None, progress=dist.main)
        if dist.main:
            stats = load_or_compute_stats(train_set, cache, **kwargs)
        distributed.barrier(dist)
        if not dist.main:
            stats = load_or_compute_stats(train_set, cache, **kwargs)
    norm = Normalize.create(config.normalization, stats)
    pca = None if config.pca_noise == "none" else PCANoise(stats.eigvals, stats.eigvecs, convention=config.pca_noise)
    return Preprocessing(config.crop, norm, pca)


def build_model(config: TrainConfig, num_classes: int) -> AlexNet:
    model = AlexNet(config.variant, num_classes=num_classes, dropout=config.dropout, lrn=config.lrn, init=config.init)
    if config.zero_init_fc8:
        nn.init.zeros_(model.classifier[-1].weight)
        nn.init.zeros_(model.classifier[-1].bias)
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout layer's probability. Late dropout (Liu et al. 2023, "Dropout reduces underfitting")
    lets fc6 and fc7 learn without it first, then regularises a run that has begun to overfit; from the
    start, dropout 0.5 halves what the demo's few hundred steps learn."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded state tensor its parameter's memory layout.

    The fused SGD kernel walks parameter, gradient and momentum as flat memory, so a momentum buffer that
    arrives in NCHW order for a channels_last weight (a tower's slice of a checkpoint, say) would be added
    to the wrong elements, silently.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p).copy_(value)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(config: TrainConfig, resume: bool = False, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) training as ``config`` says; returns the final epoch's metrics and the best top-1."""
    dist = distributed.setup(config.device)
    try:
        return _train(config, resume, given or {}, dist)
    finally:
        distributed.teardown(dist)


def _train(config: TrainConfig, resume: bool, given: dict[str, Any], dist: distributed.Dist) -> dict[str, Any]:
    config, ckpt = resolve_run(config, resume, given)
    run = Path(config.out)
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if dist.main else (lambda msg: None)
    # --towers 2: a process holds one tower (alexnet.parallel); the batch is split over replicas (pairs).
    towers = parallel.plan(dist) if config.towers > 1 else None
    shard = towers.data if towers else dist
    if config.batch_size % shard.world:
        raise UserError(f"--batch-size {config.batch_size} does not split evenly over {shard.world} processes")
    batch_per_rank = config.batch_size // shard.world
    dtype = autocast_dtype(config.precision, dist.device)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # every batch has the same shape: pick the fastest kernels once
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        # A process killed while writing a checkpoint leaves its temporary file (hundreds of MB) behind.
        for leftover in list(run.glob(".last.pt.*.tmp")) + list(run.glob(".best.pt.*.tmp")):
            leftover.unlink(missing_ok=True)
        (run / "config.yaml").write_text(dump_yaml(config))
        say(f"alexnet train: {'resuming ' if ckpt else ''}{run} on {dist.world} x {dist.device.type}, "
            f"{precision_name(dtype)}\n{dump_yaml(config).rstrip()}")

    folders, train_set, val_set = _open_data(config, dist)
    if ckpt is not None:
        prep = Preprocessing.from_state(ckpt["preprocessing"])
        if ckpt["classes"] != folders.classes:
            raise UserError(f"the data's classes differ from those the run was started with ({config.data})")
    else:
        prep = _preprocessing(config, train_set, dist)
    steps = steps_per_epoch(len(train_set), batch_per_rank, shard.world)
    if steps == 0:
        raise UserError(f"{len(train_set)} training images make no full batch of {config.batch_size}; "
                        f"use a smaller --batch-size")

    torch.manual_seed(config.seed + dist.rank)  # dropout: a different stream on every rank
    if towers:  # every process cuts its tower from the network one process would start from
        model = parallel.build(lambda: build_model(config, len(folders.classes)), config.seed, towers).to(dist.device)
    else:
        model = build_model(config, len(folders.classes)).to(dist.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Fused: one pass over weights, gradients and momentum instead of several (the update of 61M weights
    # took 62 ms of a 0.8 s step on a 2-core CPU, fused 27 ms). Same rule as the default implementation.
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=dist.device.type in ("cpu", "cuda"))
    if towers:
        model.shard_optimizer(optimizer)  # its state_dict too is the single-device network's
    schedule = LRSchedule(config.schedule, config.lr, steps, config.epochs, config.warmup_epochs,
                          config.lr_gamma, config.step_epochs, config.patience, config.max_lr_drops)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dtype == torch.float16)
    epoch, step_in_epoch, best = 0, 0, {"top1": -1.0, "epoch": -1}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _match_layouts(optimizer)
        schedule.load_state_dict(ckpt["schedule"])
        scaler.load_state_dict(ckpt["scaler"])
        epoch, step_in_epoch, best = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["best"]
        rng = ckpt["rng"]
        if len(rng) == dist.world:
            _set_rng_state(rng[dist.rank], dist.device)
        else:
            say(f"note: resumed on {dist.world} processes, saved on {len(rng)}: dropout draws a fresh random stream")
        say(f"resuming at epoch {epoch + 1}, step {step_in_epoch} of {steps}")
    del ckpt

    net: nn.Module = model
    if config.compile:
        net = torch.compile(net)
    if towers:
        net = towers.data_parallel(net, dist.device)
    elif dist.active:
        net = DistributedDataParallel(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

    pin = dist.device.type == "cuda"
    workers = config.workers
    if isinstance(train_set, PreparedImages) and dist.device.type == "cpu" and "workers" not in given:
        workers = 0   # nothing to decode: a worker would only add a copy through shared memory
    loader = train_loader(train_set, batch_per_rank, shard.rank, shard.world, config.seed, workers, pin)
    val = eval_loader(val_set, batch_per_rank, shard.rank, shard.world, workers, pin)
    train_skips, val_skips = SkippedFiles(train_set), SkippedFiles(val_set)
    writer = _tensorboard(run) if config.tensorboard and dist.main else None

    def checkpoint(path: Path, epoch: int, step_in_epoch: int, full: bool = True) -> None:
        rng = distributed.gather_objects(dist, _rng_state(dist.device)) if full else None
        # Under --towers these gather both towers' halves: every process takes part.
        weights, opt_state = model.state_dict(), optimizer.state_dict() if full else None
        if not dist.main:
            return
        state = {"format": CHECKPOINT_FORMAT, "model": weights, "config": config.to_dict(),
                 "variant": config.variant, "classes": folders.classes, "names": folders.names,
                 "preprocessing": prep.to_state(config.normalization), "epoch": epoch,
                 "step_in_epoch": step_in_epoch, "best": best}
        if full:
            state |= {"optimizer": opt_state, "schedule": schedule.state_dict(),
                      "scaler": scaler.state_dict(), "rng": rng}
        save_checkpoint(path, state)

    result: dict[str, Any] = {}
    with _StopFlag() as stop:
        while epoch < config.epochs:
            loader.sampler.set_position(epoch, step_in_epoch * batch_per_rank)
            net.train()
            set_dropout(model, config.dropout if epoch + 1 >= config.dropout_start else 0.0)
            t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
            bar = tqdm(total=steps, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                       disable=not dist.main or None, leave=False, dynamic_ncols=True)
            for images, labels, indices, errors in loader:
                global_step = epoch * steps + step_in_epoch
                lr = schedule.lr_at(global_step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                draws = Draws.per_sample(indices, epoch, config.seed, images.shape[1], images.shape[2],
                                         prep.size, config.flip)
                keep = labels >= 0
                images, labels = train_skips.keep(images, labels, indices, errors)
                draws = Draws(*(getattr(draws, f)[keep] for f in ("tops", "lefts", "flips", "normal")))
                images = images.to(dist.device, non_blocking=True)
                labels = labels.to(dist.device, non_blocking=True)
                x = train_views(images, prep.size, prep.norm, prep.pca, draws=draws)
                with autocast(dist.device, dtype):
                    logits = net(x)
                    # Sum over this rank's valid samples / the batch size: an all-bad batch still takes part
                    # in DDP's gradient exchange, and contributes nothing.
                    loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum",
                                                       label_smoothing=config.label_smoothing) / batch_per_rank
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                flags = distributed.all_max(dist, torch.tensor(
                    [float(stop.signal is not None), float(not torch.isfinite(loss).item())]))
                if flags[1]:
                    bar.close()
                    raise NonFiniteLoss(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step_in_epoch}; "
                                        f"stopped without saving, so {run / 'last.pt'} is the last good state "
                                        f"(try a lower --lr or a longer --warmup-epochs)")
                scaler.step(optimizer)
                scaler.update()
                step_in_epoch += 1
                seen += len(labels)
                loss_sum += loss.item() * batch_per_rank
                loss_n += len(labels)
                bar.update(1)
                if step_in_epoch % config.log_every == 0:
                    bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.3f}", lr=f"{lr:.2g}",
                                    img_s=f"{seen * shard.world / (time.perf_counter() - t0):.0f}")
                if flags[0]:
                    bar.close()
                    checkpoint(run / "last.pt", epoch, step_in_epoch)
                    signum = stop.signal or signal.SIGTERM  # another rank was signalled
                    say(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step_in_epoch} "
                        f"of {steps}; {run / 'last.pt'} is saved. Resume with: alexnet train --out {run} --resume")
                    raise Stopped(signum)
                if config.save_every and (global_step + 1) % config.save_every == 0 and step_in_epoch < steps:
                    checkpoint(run / "last.pt", epoch, step_in_epoch)
                if step_in_epoch >= steps:
                    break
            bar.close()
            train_seconds = time.perf_counter() - t0
            totals = distributed.all_sum(shard, torch.tensor([loss_sum, loss_n, seen], dtype=torch.float64))
            metrics = evaluate(model, val, val_skips, prep.size, prep.norm, shard, crops=1, dtype=dtype)
            if totals[1] == 0:
                raise UserError(f"no readable image in {train_set.split.root}: every file was skipped")
            if metrics["images"] == 0:
                raise UserError(f"no readable image in {val_set.split.root}: every file was skipped")
            epoch += 1
            step_in_epoch = 0
            if metrics["top1"] > best["top1"]:
                best = {"top1": metrics["top1"], "epoch": epoch}
                checkpoint(run / "best.pt", epoch, 0, full=False)
            dropped = schedule.end_epoch(metrics["top1"])
            row = {"epoch": epoch, "lr": lr, "train_loss": totals[0].item() / max(totals[1].item(), 1),
                   "val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"],
                   "images_per_sec": totals[2].item() / train_seconds, "seconds": time.perf_counter() - t0,
                   "skipped": train_skips.end_epoch() + metrics["skipped"]}
            checkpoint(run / "last.pt", epoch, 0)
            if dist.main:
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if writer is not None:
                    for key in ("lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec"):
                        writer.add_scalar(key, row[key], epoch)
                skipped = f", {row['skipped']} unreadable images skipped" if row["skipped"] else ""
                say(f"epoch {epoch}/{config.epochs}: lr {lr:.3g}, train loss {row['train_loss']:.3f}, "
                    f"val loss {row['val_loss']:.3f}, val top-1 {100 * row['val_top1']:.1f}%, "
                    f"top-5 {100 * row['val_top5']:.1f}%, {row['images_per_sec']:.0f} img/s, "
                    f"{row['seconds']:.0f} s{skipped}" + (" (learning rate divided)" if dropped else ""))
            result = row
    if writer is not None:
        writer.close()
    result = dict(result, best_top1=best["top1"], best_epoch=best["epoch"], run=str(run))
    say(f"done: best val top-1 {100 * best['top1']:.1f}% at epoch {best['epoch']}; "
        f"{run / 'best.pt'}, {run / 'last.pt'}, {run / 'metrics.jsonl'}")
    return result


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run / "tensorboard"))

