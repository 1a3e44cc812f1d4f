"""`alexnet prepare` on ImageNet's archives read in place: index time, images/s per core, peak memory.

    python benchmarks/imagenet_tar.py                                  # 10,000 and 50,000 images
    python benchmarks/imagenet_tar.py --sizes 10000 30000 --workers 2 --folders
    python benchmarks/imagenet_tar.py --sizes 2000 --classes 100 --image-size 500x375 --store raw jpeg


For each size N, writes N generated JPEGs (80x64 unless --image-size, a few per class) into an ImageNet-shaped
ILSVRC2012_img_train.tar (a tar of <wnid>.tar), N/25 into ILSVRC2012_img_val.tar, and a devkit; then, in
a fresh process, so that its peak memory is this size's own: opens it (the tar index) and prepares it
(python API, --workers decoding processes). Peak RSS is getrusage's, of that process and of its largest
child (a DataLoader worker). With --folders, the same images as class folders are prepared too, the
baseline. Memory that stays flat and time that grows linearly with N are the point: the index keeps a
name and three integers an image, never the bytes. Files are just written, so they are in the page cache.
With ImageNet-sized images (--image-size 500x375, ImageNet's commonest size) and each --store, it also
projects the store's size and the core-hours of preparing ImageNet's 1,331,167 images (train + val).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet.cores import usable_cores


IMAGENET_IMAGES = 1_281_167 + 50_000
SIZE = (80, 64)


def jpeg(rng: np.random.Generator, k: int) -> bytes:
    """A SIZE (width x height) JPEG: a gradient in the class's colour and some noise (about 3 KB at 80x64)."""
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]] * (80 / SIZE[0])
    base = np.stack([(x * 3 + k * 7) % 256, (y * 4 + k * 13) % 256, (x + y + k * 29) % 256], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_300_000_000
    tar.addfile(info, io.BytesIO(data))


def write_archives(out: Path, images: int, classes: int, folders: Path | None, seed: int = 0) -> None:
    """The three archives in ``out`` (and, with ``folders``, the same files as class folders there)."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{10_000_000 + 7919 * k:08d}" for k in range(classes)]
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as train:
        for k, wnid in enumerate(wnids):   # one inner tar at a time: memory stays small
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for j in range(images // classes + (k < images % classes)):
                    data = jpeg(rng, k)
                    add(tar, f"{wnid}_{j}.JPEG", data)
                    if folders:
                        (folders / "train" / wnid).mkdir(parents=True, exist_ok=True)
                        (folders / "train" / wnid / f"{wnid}_{j}.JPEG").write_bytes(data)
            add(train, f"{wnid}.tar", inner.getvalue())
    truth = rng.integers(0, classes, max(1, images // 25))
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as val:
        for n, k in enumerate(truth, 1):
            data = jpeg(rng, int(k))
            add(val, f"ILSVRC2012_val_{n:08d}.JPEG", data)
            if folders:
                (folders / "val" / wnids[k]).mkdir(parents=True, exist_ok=True)
                (folders / "val" / wnids[k] / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(data)
    if folders:   # class folders need every class in val too
        for k in set(range(classes)) - set(truth.tolist()):
            (folders / "val" / wnids[k]).mkdir(parents=True, exist_ok=True)
            (folders / "val" / wnids[k] / "extra.JPEG").write_bytes(jpeg(rng, k))
    write_devkit(out, wnids, [int(k) for k in truth])


def write_devkit(out: Path, wnids: list[str], truth: list[int]) -> None:
    """meta.mat in the real one's layout (ILSVRC2012_ID in reverse WordNet-id order) and the ground truth."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    ids = {w: len(wnids) - i for i, w in enumerate(wnids)}
    synsets = np.zeros((len(wnids), 1), dtype=[(f, object) for f in fields])
    for i, w in enumerate(wnids):
        for f, v in zip(fields, (ids[w], w, f"class {i}", "", 0, np.zeros((1, 0)), 0, 0)):
            synsets[i, 0][f] = v
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    gt = "".join(f"{ids[wnids[k]]}\n" for k in truth).encode()
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakAnon(threading.Thread):
    """The highest anonymous RSS of this process and of its largest child, sampled every 20 ms.

    getrusage's peak also counts file pages mapped in (prepare writes each shard through a map of it, one at
    a time); this one counts what the process itself holds."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.own = self.child = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.own = max(self.own, _anon_mb("self"))
            self.child = max([self.child] + [_anon_mb(pid) for pid in _children()])

    def stop(self) -> PeakAnon:
        self.done.set()
        self.join()
        return self


def _anon_mb(pid) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:   # the child has just exited
        pass
    return 0.0


def _children() -> list[str]:
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            found += (task / "children").read_text().split()
        except OSError:
            pass
    return found


def measure(data: Path, out: Path, workers: int, store: str = "raw") -> dict:
    """Run in a fresh process: index, open and prepare ``data``; the figures as a dict."""
    from alexnet.data.prepare import prepare
    from alexnet.data.sources import open_data
    from alexnet.data.tars import index_tar

    peak = PeakAnon()
    peak.start()
    index_s = index_mb = float("nan")
    if (data / "ILSVRC2012_img_train.tar").is_file():
        before, t = rss_mb(), time.perf_counter()
        members = index_tar(data / "ILSVRC2012_img_train.tar", keep=lambda name: True, nested=True)
        index_s, index_mb = time.perf_counter() - t, rss_mb() - before
        del members
    t = time.perf_counter()
    source = open_data(data)
    open_s = time.perf_counter() - t
    images = sum(len(s) for s in source.splits.values())
    del source
    t = time.perf_counter()
    prepare(data, out, workers=workers, progress=False, store=store)
    prepare_s = time.perf_counter() - t
    peak.stop()
    return {"images": images, "index_train_s": index_s, "index_mb": index_mb, "open_s": open_s,
            "prepare_s": prepare_s, "store_bytes": sum(f.stat().st_size for pattern in ("*/*.u8", "*/*.jpg.bin")
                                                           for f in out.glob(pattern)),
            "peak_anon_mb": peak.own, "peak_child_anon_mb": peak.child,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="training images per run")
    parser.add_argument("--classes", type=int, default=1000, help="inner tars (WordNet ids); default 1000")
    parser.add_argument("--workers", type=int, default=min(8, usable_cores()), help="decoding processes")
    parser.add_argument("--folders", action="store_true", help="also prepare the same images as class folders")
    parser.add_argument("--image-size", default="80x64", metavar="WxH", help="generated images' size (80x64)")
    parser.add_argument("--store", nargs="+", choices=("raw", "jpeg"), default=["raw"], help="prepare's stores")
    parser.add_argument("--scratch", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--measure", nargs=2, type=Path, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SIZE
    SIZE = tuple(int(v) for v in args.image_size.lower().split("x"))
    if args.measure:
        print(json.dumps(measure(*args.measure, workers=args.workers, store=args.store[0])))
        return

    from alexnet.machine import cpu_name
    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs, {usable_cores()} usable; --workers {args.workers}",
          flush=True)
    cores = max(1, min(args.workers, usable_cores()))
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="imagenet_tar_"))
    print("index: the train tar's alone (MB: its growth of RSS); open: open_data (both tars and the devkit); "
          "img/s: train + val over prepare's time (decode, write, mean image and PCA); peak: getrusage's RSS "
          "(own / largest worker) and sampled anonymous RSS (own / largest worker), MB; B/img: the store's bytes "
          "an image; ImageNet: the store's projected GB and prepare's core-hours for 1,331,167 images", flush=True)
    print(f"{'layout':>9} {'store':>5} {'images':>7} {'write s':>8} {'index s':>8} {'index MB':>9} {'open s':>7} "
          f"{'prepare s':>10} {'img/s':>6} {'/core':>6} {'peak RSS':>10} {'peak anon':>10} {'B/img':>7} "
          f"{'ImageNet':>14}", flush=True)
    try:
        for n in args.sizes:
            root = scratch / f"n{n}"
            t = time.perf_counter()
            write_archives(root / "archives", n, min(args.classes, n), root / "folders" if args.folders else None)
            write_s = time.perf_counter() - t
            for name, store in [(n, s) for n in (("archives", "folders") if args.folders else ("archives",))
                                for s in args.store]:
                run = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--image-size",
                                      args.image_size, "--store", store, "--measure", str(root / name),
                                      str(root / f"prep-{name}")], capture_output=True, text=True, check=True)
                m = json.loads(run.stdout.strip().splitlines()[-1])
                rate = m["images"] / m["prepare_s"]
                per_image = m["store_bytes"] / m["images"]
                print(f"{name:>9} {store:>5} {m['images']:>7} {write_s:>8.1f} {m['index_train_s']:>8.2f} {m['index_mb']:>9.1f} "
                      f"{m['open_s']:>7.2f} {m['prepare_s']:>10.1f} {rate:>6.0f} {rate / cores:>6.0f} "
                      f"{m['peak_rss_mb']:>5.0f}/{m['peak_child_rss_mb']:<4.0f} "
                      f"{m['peak_anon_mb']:>5.0f}/{m['peak_child_anon_mb']:<4.0f} {per_image:>7.0f} "
                      f"{per_image * IMAGENET_IMAGES / 1e9:>5.0f} GB {IMAGENET_IMAGES / (rate / cores) / 3600:>4.1f} h",
                      flush=True)
                shutil.rmtree(root / f"prep-{name}")
            shutil.rmtree(root)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
