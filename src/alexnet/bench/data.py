"""`alexnet bench data`: images per second per core delivered to the model, three ways, on the same files.

- baseline: pytorch/examples' ImageNet pipeline, torchvision ImageFolder + PIL + RandomResizedCrop(224),
  flip, ToTensor, Normalize, in DataLoader workers;
- ours, JPEG path: the folder pipeline of `alexnet train` (decode to the fixed 256x256 in workers, then
  the paper's crop, flip, PCA noise and normalisation on whole uint8 batches);
- ours, prepared: the same batches from `alexnet prepare`'s shards, in the main process alone;
- ours, jpeg store: the same from `alexnet prepare --store jpeg`'s shards (each fixed image a JPEG, decoded
  again for every batch), also in the main process alone: decode + augment on one core;
- and the augmentation draws alone (Draws.per_sample, batches of 128), per second and process: the main
  process makes them for every batch, so they cap what one process can feed a GPU.

The pipelines take turns, an epoch each, for an untimed round and then --steps timed ones; each one's
median is reported (timing.py says why the median).

The files are generated: ImageNet-sized JPEGs (500x375 and 375x500, quality 90, with smooth structure
and noise, so they compress like photographs rather than flat colour). Per core means divided by the
cores that decode: the workers, up to the cores this process may use (more workers than cores share them),
or 1 for the prepared paths, which also run with 1 thread.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.choices import QUALITY
from alexnet.cores import usable_cores
from alexnet.data.loader import train_loader
from alexnet.data.prepare import prepare
from alexnet.data.sources import open_split
from alexnet.data.stats import DataStats
from alexnet.data.transforms import Draws, Normalize, PCANoise, train_views
from alexnet.errors import UserError
from alexnet.machine import describe
from alexnet.model import INPUT_SIZE


CLASSES = 4


def write_photos(root: Path, images: int, classes: int = CLASSES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500] / 100.0
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.5, 3, size=3)
        base = np.stack([np.sin(f[c] * xx + f[(c + 1) % 3] * yy + rng.uniform(0, 6)) for c in range(3)], -1)
        pixels = np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels if i % 4 else pixels.transpose(1, 0, 2))
        img.save(folder / f"{i:05d}.jpg", quality=90)
    for c in range(classes):   # prepare needs a val split; one image per class is plenty here
        (root / "val" / f"class{c}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "train" / f"class{c}" / f"{c:05d}.jpg", root / "val" / f"class{c}" / "0.jpg")
    return root


def check_images(images: int, batch: int, batch_flag: str = "--batch-size") -> None:
    """Training drops a last partial batch: with fewer images than a batch there would be nothing to time."""
    if images < batch:
        raise UserError(f"--images {images} is fewer than one batch of {batch} (training drops a partial batch): "
                        f"give --images {max(batch, CLASSES)} or more, or a smaller {batch_flag}")
    if images < CLASSES:
        raise UserError(f"--images must be at least {CLASSES}, one per class")


def bench_data(images: int = 512, batch_size: int = 64, workers: int = 2, steps: int = 3,
               root: str | Path | None = None) -> dict:
    check_images(images, batch_size)
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-", dir=root) as tmp:
        data = write_photos(Path(tmp) / "data", images)
        prep, prep_jpeg = Path(tmp) / "prep", Path(tmp) / "prep-jpeg"
        prepare(data, prep, workers=workers, progress=False)
        prepare(data, prep_jpeg, workers=workers, progress=False, store="jpeg")
        prepared, jpegs = open_split(prep, "train"), open_split(prep_jpeg, "train")
        stats = DataStats.load(prepared.stats_file)
        baseline = _baseline_batches(data, batch_size, workers)
        try:
            # The prepared paths run with 1 thread: one core, as their per-core figure says.
            rates = _median_rates({"baseline": (baseline, None),
                                   "jpeg": (_our_batches(open_split(data, "train"), stats, batch_size, workers), None),
                                   "ours": (_our_batches(prepared, stats, batch_size, 0), 1),
                                   "store": (_our_batches(jpegs, stats, batch_size, 0), 1)}, steps)
        finally:
            baseline.close()
        base, jpeg, ours, store = rates["baseline"], rates["jpeg"], rates["ours"], rates["store"]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            draws = _draws_per_second()
        finally:
            torch.set_num_threads(threads)
        sizes = {kind: sum(f.stat().st_size for f in (path / "train").glob(pattern)) / len(prepared)
                 for kind, path, pattern in (("raw", prep, "*.u8"), ("jpeg", prep_jpeg, "*.jpg.bin"))}
    # Workers beyond the cores there are share them: dividing by the workers would flatter ours.
    cores = min(workers, usable_cores())
    per_core = {"ours": ours, "jpeg_path": jpeg / cores, "baseline": base / cores, "jpeg_store": store}
    return {"benchmark": "data", "ours": ours, "baseline": base, "ratio": ours / base,
            "per_core": per_core, "per_core_ratio": per_core["ours"] / per_core["baseline"],
            "jpeg_path": jpeg, "images": images, "batch_size": batch_size, "workers": workers,
            "worker_cores": cores, "steps": steps,
            "jpeg_store": store, "jpeg_store_ratio": store / per_core["baseline"], "draws_per_s": draws,
            "bytes_per_image": sizes, "jpeg_quality": QUALITY,
            "machine": describe(torch.device("cpu"), "fp32"),
            "ours_settings": "alexnet prepare shards, main process, 1 thread: crop 227, flip, PCA noise, mean image; "
                             f"its augmentation draws alone {draws:,.0f} samples/s per process",
            "jpeg_store_settings": f"alexnet prepare --store jpeg (quality {QUALITY}) shards, the same, plus a "
                                   f"libjpeg-turbo decode of each 256x256 JPEG",
            "baseline_settings": f"torchvision ImageFolder + PIL + transforms, {workers} DataLoader workers"
                                 + (f" sharing {cores} core{'s' if cores > 1 else ''}" if cores < workers else "")}


def _median_rates(pipelines: dict, steps: int) -> dict[str, float]:
    """Each pipeline's median img/s over ``steps`` epochs, the pipelines taking turns epoch by epoch so that
    all see the same drift in machine load, after an untimed round: the first epoch also pays for worker
    start-up and a cold cache. ``pipelines``: name -> (epoch maker, torch threads for it or None)."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for epoch in range(steps + 1):
        for name, (make_epoch, threads) in pipelines.items():
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                start, n = time.perf_counter(), 0
                for batch in make_epoch(epoch):
                    n += len(batch)
                seconds = time.perf_counter() - start
            finally:
                torch.set_num_threads(before)
            if epoch:
                rates[name].append(n / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def _draws_per_second(batch: int = 128, seconds: float = 0.3) -> float:
    """Samples a second through Draws.per_sample, fresh indices each batch as in training."""
    Draws.per_sample(torch.arange(batch), 0, 0, 256, 256, INPUT_SIZE["paper"])    # warm-up
    start, n = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        Draws.per_sample(torch.arange(n, n + batch), 0, 0, 256, 256, INPUT_SIZE["paper"])
        n += batch
    return n / elapsed


def _baseline_batches(data: Path, batch_size: int, workers: int):
    from torchvision import datasets, transforms

    t = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                            transforms.ToTensor(),
                            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    dataset = datasets.ImageFolder(str(data / "train"), t)
    # Persistent workers: the baseline is timed in its steady state, not while its workers start.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)

    def epoch(_):
        for x, _y in loader:
            yield x

    def close() -> None:
        """Its persistent workers stopped now. Left to the garbage collector, the iterator can be collected
        in a worker forked later by another loader, whose __del__ then fails there ("can only test a child
        process") and prints a traceback after the report; once shut down, its __del__ does nothing."""
        if loader._iterator is not None:
            loader._iterator._shutdown_workers()
            loader._iterator = None
    epoch.close = close
    return epoch


def _our_batches(dataset, stats: DataStats, batch_size: int, workers: int):
    norm = Normalize.create("mean-image", stats)
    pca = PCANoise(stats.eigvals, stats.eigvecs)
    loader = train_loader(dataset, batch_size, rank=0, world=1, seed=0, workers=workers, pin_memory=False)

    def epoch(e):
        loader.sampler.set_position(e, 0)
        for images, labels, indices, _ in loader:
            draws = Draws.per_sample(indices, e, 0, images.shape[1], images.shape[2], INPUT_SIZE["paper"])
            yield train_views(images, INPUT_SIZE["paper"], norm, pca, draws=draws)
    return epoch
