"""`alexnet prepare`: decode a dataset once into a prepared store (the format: data/prepared.py).

The paper's fixed preprocessing (shorter side 256, centre 256x256, through the same decoder as the
folder pipeline) runs once per image, in parallel worker processes, one shard of 1,024 images at a time.
A shard's .json is written (atomically) after its pixels, so a shard with a .json is complete: an
interrupted `prepare` continues with the first shard that has none, and a shard made from other files
than the source holds now is refused. The marker is written last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from alexnet.data.decode import FIXED_SIZE
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import SPLITS, DataSource, ImageSet, Split
from alexnet.data.prepared import FORMAT, MARKER, STATS, PreparedImages, is_prepared
from alexnet.data.sources import kind_of, open_data
from alexnet.data.stats import load_or_compute_stats
from alexnet.errors import UserError
from alexnet.files import atomic_write

SHARD = 1024


def prepare(data: str | Path, out: str | Path, workers: int | None = None, shard_size: int = SHARD,
            progress: bool = True) -> dict:
    """Decode DATA's train and val once into OUT; resumable. Returns the marker's contents."""
    data, out = Path(data).expanduser(), Path(out).expanduser()
    if kind_of(data).name == "prepared":   # finished or not
        raise UserError(f"{data} is already a prepared dataset; give the image folders it was made from")
    source = open_data(data)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    meta = _existing_meta(out, source, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name in SPLITS:
        splits[name] = _prepare_split(source.splits[name], out / name, workers, shard_size, progress)
    if progress:
        print(f"computing the mean image and RGB PCA of {out / 'train'}", flush=True)
    load_or_compute_stats(PreparedImages(out, "train", _meta=dict(meta, splits=splits)),
                          out / STATS, workers=0, progress=progress)
    meta["splits"] = splits
    atomic_write(out / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    return meta


def _existing_meta(out: Path, source: DataSource, shard_size: int) -> dict:
    meta = {"format": FORMAT, "size": FIXED_SIZE, "shard_size": shard_size, "source": str(source.root.resolve()),
            "classes": source.classes, "names": source.names}
    if out.exists() and any(out.iterdir()):
        if not is_prepared(out):
            raise UserError(f"{out} exists and is not a prepared dataset; choose a new --out")
        if (out / MARKER).is_file():
            old = json.loads((out / MARKER).read_text())
            if old.get("source") != meta["source"] or old.get("classes") != meta["classes"]:
                raise UserError(f"{out} was prepared from {old.get('source')}; choose a new --out")
    return meta


def _prepare_split(images: ImageSet, folder: Path, workers: int, shard_size: int, progress: bool) -> dict:
    split = images.split
    folder.mkdir(parents=True, exist_ok=True)
    shards = (len(split) + shard_size - 1) // shard_size
    done = [s for s in range(shards) if (folder / f"{s:05d}.json").is_file()]
    for shard in done:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        if json.loads((folder / f"{shard:05d}.json").read_text()).get("sources") != _sources(split, lo, hi):
            raise UserError(f"{folder / f'{shard:05d}.json'} was made from other files than {split.root} holds "
                            f"now; prepare into a new --out (or delete {folder.parent})")
    todo = sorted(set(range(shards)) - set(done))
    skipped = SkippedFiles(images)
    bar = tqdm(total=len(split), initial=sum(min(shard_size, len(split) - s * shard_size) for s in done),
               desc=f"prepare {split.root.name}", unit="img", disable=None if progress else True)
    for shard in todo:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        loader = DataLoader(Subset(images, range(lo, hi)), batch_size=64, num_workers=workers,
                            collate_fn=ImageSet.collate)
        _write_shard(folder, shard, loader, split, skipped, hi - lo, bar, _sources(split, lo, hi))
    bar.close()
    counts, bad = 0, 0
    for s in range(shards):
        info = json.loads((folder / f"{s:05d}.json").read_text())
        counts += len(info["labels"])
        bad += len(info["skipped"])
    if counts == 0:
        raise UserError(f"no readable image in {split.root} ({len(split)} files tried)")
    return {"images": counts, "shards": shards, "skipped": bad}


def _sources(split: Split, lo: int, hi: int) -> list:
    """Which files samples lo..hi came from, as they were: path, size and modification time."""
    out = []
    for path, _ in split.samples[lo:hi]:
        st = path.stat()
        out.append([str(path.relative_to(split.root)), st.st_size, st.st_mtime_ns])
    return out


def _write_shard(folder: Path, shard: int, loader, split: Split, skipped: SkippedFiles, n: int, bar,
                 sources: list) -> None:
    pixels = folder / f"{shard:05d}.u8"
    tmp = folder / f".{shard:05d}.u8.tmp"
    # Raw bytes rather than .npy: nothing to parse, and the .json says what they are.
    buf = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, FIXED_SIZE, FIXED_SIZE, 3))
    labels, files, bad = [], [], []
    for images, lab, idx, errors in loader:
        good = lab >= 0
        for i in torch.nonzero(~good).flatten().tolist():
            bad.append([str(split.samples[int(idx[i])][0].relative_to(split.root)), errors[i]])
        skipped.keep(images, lab, idx, errors)   # warns once per file
        k = int(good.sum())
        buf[len(labels):len(labels) + k] = images[good].numpy()
        labels += lab[good].tolist()
        files += [str(split.samples[int(i)][0].relative_to(split.root)) for i in idx[good].tolist()]
        bar.update(len(lab))
    buf.flush()
    del buf
    os.truncate(tmp, len(labels) * FIXED_SIZE * FIXED_SIZE * 3)
    os.replace(tmp, pixels)
    info = {"labels": labels, "files": files, "skipped": bad, "sources": sources}
    atomic_write(folder / f"{shard:05d}.json", lambda t: Path(t).write_text(json.dumps(info) + "\n"))
