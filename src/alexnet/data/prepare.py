"""`alexnet prepare`: decode a dataset once into a prepared store (the format: data/prepared.py).

The paper's fixed preprocessing (shorter side 256, centre 256x256, through the same decoder as the
folder pipeline) runs once per image, in parallel worker processes, one shard of 1,024 images at a time.
The store keeps those pixels raw (--store raw, the default) or as JPEGs of them (--store jpeg, encoded in
the same workers; data/jpeg.py). A shard's .json is written (atomically) after its data, so a shard with
a .json is complete: an interrupted `prepare` continues with the first shard that has none, and a shard
made from other files than the source holds now, or of another store or quality, is refused. The marker
is written last.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from alexnet.cores import usable_cores
from alexnet.choices import QUALITY, SMALL
from alexnet.data.decode import FIXED_SIZE
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import SPLITS, DataSource, ImageSet, Split
from alexnet.data.jpeg import JpegBatch, checksum
from alexnet.data.loader import Loader
from alexnet.data.prepared import FORMATS, MARKER, PARTIAL, STATS, is_prepared, marker_checksum, prepared_split
from alexnet.data.sources import kind_of, open_data
from alexnet.data.stats import load_or_compute_stats
from alexnet.errors import UserError, printable
from alexnet.files import FolderLock, atomic_write
from alexnet.progress import progress_bar

SHARD = 1024
STORES = tuple(FORMATS)


def prepare(data: str | Path, out: str | Path, workers: int | None = None, shard_size: int = SHARD,
            progress: bool = True, store: str = "raw", quality: int | None = None, small: str = "upscale") -> dict:
    """Decode DATA's train and val once into OUT, as raw pixels or JPEGs of ``quality`` (default
    choices.QUALITY), images under 256 upscaled or padded as ``small`` says; resumable. Returns the marker's
    contents."""
    data, out = Path(data).expanduser(), Path(out).expanduser()
    store, quality = _check_store(store, quality)
    if small not in SMALL:
        raise UserError(f"unknown --small {small!r}; choose from {', '.join(SMALL)}")
    if kind_of(data).name == "prepared":   # finished or not
        raise UserError(f"{data} is already a prepared dataset; give the image folders it was made from")
    source = open_data(data, small=small)
    _check_outside(out, source)
    workers = min(8, usable_cores()) if workers is None else workers
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the prepared dataset as --out")
    lock = FolderLock(out, "prepare")
    try:
        held = lock.acquire()
    except OSError as e:
        raise UserError(f"cannot prepare into {out} ({e.strerror or e})") from None
    if not held:
        raise UserError(f"{out} is in use by {lock.refusal()}; wait for it to finish, or choose another --out")
    try:
        return _prepare(source, out, workers, shard_size, progress, store, quality, small)
    finally:
        lock.release()


def _prepare(source: DataSource, out: Path, workers: int, shard_size: int, progress: bool, store: str,
             quality: int | None, small: str) -> dict:
    meta = _existing_meta(out, source, shard_size, store, quality, small)
    out.mkdir(parents=True, exist_ok=True)
    vouched = _vouched(out)
    splits = {}
    for name in SPLITS:
        splits[name] = _prepare_split(source.splits[name], out / name, workers, shard_size, progress, quality,
                                      vouched.get(name))
    if progress:
        print(f"computing the mean image and RGB PCA of {out / 'train'}", file=sys.stderr, flush=True)
    # From the images as training will read them: for a jpeg store, its decoded JPEGs (in workers).
    train = prepared_split(out, "train", dict(meta, splits=splits))
    load_or_compute_stats(train, out / STATS, workers=workers if train.decodes else 0, progress=progress)
    meta["splits"] = splits
    meta["crc32"] = marker_checksum(meta)
    atomic_write(out / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    _say_empty_classes(train, out)
    return meta


def _say_empty_classes(train: ImageSet, out: Path) -> None:
    """A class whose training files were all left out as unreadable: the store is made (the other classes'
    work is kept), and train refuses it until that class has images. Those come only in a new store: prepare
    never gives a store other images than it was made from (a run may be reading it), so it refuses OUT once
    the files or classes it was made from have changed."""
    labels = {label for _, label in train.split.samples}
    empty = [c for label, c in enumerate(train.classes) if label not in labels]
    if empty:
        print(printable(f"warning: no training image of {', '.join(empty)} could be read: alexnet train refuses "
                        f"the store until {'each has' if len(empty) > 1 else 'it has'} images (replace the files, "
                        f"or remove the class, then prepare into a new --out, or delete {out} first)"),
              file=sys.stderr)


def _check_outside(out: Path, source: DataSource) -> None:
    """A store written into one of DATA's splits would become a class of the next scan of it."""
    target = out.resolve()
    for name, images in source.splits.items():
        root = Path(images.split.root).resolve()
        if target == root or root in target.parents:
            raise UserError(f"--out {out} lies inside {images.split.root}, the {name} split it would be made from; "
                            f"choose a folder outside it")


def _check_store(store: str, quality: int | None) -> tuple[str, int | None]:
    if store not in STORES:
        raise UserError(f"unknown store {store!r}; choose from {', '.join(STORES)}")
    if store == "raw":
        if quality is not None:
            raise UserError("--quality is for --store jpeg (a raw store keeps the pixels exactly)")
        return store, None
    quality = QUALITY if quality is None else quality
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be 1 to 100, got {quality}")
    return store, quality


def _existing_meta(out: Path, source: DataSource, shard_size: int, store: str, quality: int | None,
                   small: str = "upscale") -> dict:
    meta = {"format": FORMATS[store], "store": store, **({"quality": quality} if quality else {}), "small": small,
            "size": FIXED_SIZE, "shard_size": shard_size, "source": str(source.root.resolve()),
            "classes": source.classes, "names": source.names,
            # Where each split's files lie: SOURCE/train for folders, but a tar for ImageNet's archives.
            "roots": {name: str(Path(images.split.root).resolve()) for name, images in source.splits.items()}}
    if out.exists() and any(_entries(out)) and not _only_empty_splits(out):
        if not is_prepared(out):
            raise UserError(f"{out} exists and is not a prepared dataset; choose a new --out")
        old = _json(out / MARKER)   # damaged: rewritten at the end, the shards vouching for themselves
        if old is not None:
            if old.get("source") != meta["source"]:
                raise UserError(f"{out} was prepared from {old.get('source')}, not {source.root}; choose a new "
                                f"--out (or give --data {shlex.quote(str(old.get('source')))} to resume or redo it)")
            if old.get("classes") != meta["classes"]:
                raise UserError(f"{out} was prepared from {source.root} when it had "
                                f"{_classes_change(old.get('classes'), meta['classes'])}: prepare into a new "
                                f"--out, or delete {out} first")
        found = _store_in(out)
        if found is not None and found != (store, quality):
            raise UserError(f"{out} holds a {_describe(*found)} store, not the {_describe(store, quality)} one asked "
                            f"for; choose a new --out (or ask for {_flags(*found)} to resume or redo it)")
        held = _small_in(out)
        if held is not None and held != small:
            raise UserError(f"{out} holds images prepared with --small {held}, not --small {small}; choose a new "
                            f"--out (or ask for --small {held} to resume or redo it)")
        # Last: the flags a user gives come first. The size is the Python API's (prepare(shard_size=...)).
        if old is not None and isinstance(old.get("shard_size"), int) and old["shard_size"] != shard_size:
            raise UserError(f"{out} was prepared in shards of {old['shard_size']} images, not {shard_size}: "
                            f"prepare it with shard_size={old['shard_size']} to resume or redo it, or into a new --out")
    return meta


def _classes_change(old, new: list[str]) -> str:
    """What became of the classes a store was prepared with: "3 classes; it now has 1 class more (dog)"."""
    if not isinstance(old, list):   # a damaged marker that still parses
        return "other classes"
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    changes = [f"{_count(added)} more ({_some(added)})"] if added else []
    if removed:
        changes.append(f"{len(removed) if added else _count(removed)} fewer ({_some(removed)})")
    return f"{_count(old)}; it now has {' and '.join(changes) or 'them in another order'}"


def _count(classes: list) -> str:
    return f"{len(classes)} class{'' if len(classes) == 1 else 'es'}"


def _some(classes: list) -> str:
    return ", ".join(map(str, classes[:3])) + (f" and {len(classes) - 3} more" if len(classes) > 3 else "")


def _entries(out: Path) -> list[Path]:
    """OUT's contents but the lock this prepare holds on it."""
    return [f for f in out.iterdir() if f.name != FolderLock.NAME]


def _only_empty_splits(out: Path) -> bool:
    """What a prepare killed before its first image leaves: empty split folders."""
    return all(f.name in SPLITS and f.is_dir() and not any(f.iterdir()) for f in _entries(out))


def _json(path: Path) -> dict | None:
    """A marker's or shard's contents; None where it is missing or damaged (that shard is made again)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _vouched(out: Path) -> dict[str, list]:
    """The CRC-32 of each shard's record that OUT's marker vouches for, per split, where the marker itself
    is intact: a record changed since (a flipped bit that left it valid JSON) is made again, not vouched
    for anew."""
    old = _json(out / MARKER)
    if old is None or old.get("crc32") != marker_checksum(old) or not isinstance(old.get("splits"), dict):
        return {}
    return {name: split["crc32"] for name, split in old["splits"].items()
            if isinstance(split, dict) and isinstance(split.get("crc32"), list)}


def _first_info(out: Path) -> dict | None:
    """What OUT says of its store: its marker, else its first readable finished shard."""
    for path in [out / MARKER, *sorted(out.glob("*/[0-9]*.json"))]:
        info = _json(path)
        if info is not None:
            return info
    return None


def _store_in(out: Path) -> tuple[str, int | None] | None:
    """The store kind and quality of what OUT holds."""
    info = _first_info(out)
    return None if info is None else (info.get("store", "raw"), info.get("quality"))   # format 1 has neither: raw


def _small_in(out: Path) -> str | None:
    """What OUT did with images under 256."""
    info = _first_info(out)
    return None if info is None else info.get("small", "upscale")


def _describe(store: str, quality: int | None) -> str:
    return f"{store} (quality {quality})" if quality else store


def _flags(store: str, quality: int | None) -> str:
    return f"--store {store}" + (f" --quality {quality}" if quality else "")


def _prepare_split(images: ImageSet, folder: Path, workers: int, shard_size: int, progress: bool,
                   quality: int | None = None, vouched: list | None = None) -> dict:
    split = images.split
    folder.mkdir(parents=True, exist_ok=True)
    shards = (len(split) + shard_size - 1) // shard_size
    records = {s: _json(folder / f"{s:05d}.json") for s in range(shards)}
    done = [s for s, info in records.items() if info is not None and _as_vouched(folder, s, vouched)
            and _data_whole(folder, s, info, jpeg=quality is not None)]
    for shard in done:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        held = records[shard].get("shard_size")   # (records of earlier versions have none)
        if isinstance(held, int) and held != shard_size:   # an unfinished store (the marker would say it)
            raise UserError(f"{folder / f'{shard:05d}.json'} is a shard of {held} images, not {shard_size}: "
                            f"{folder.parent} was begun in shards of {held}; prepare it with shard_size={held} to "
                            f"resume it, or into a new --out")
        if records[shard].get("sources") != _sources(split, lo, hi):
            raise UserError(f"{folder / f'{shard:05d}.json'} was made from other files than {split.root} holds "
                            f"now; prepare into a new --out (or delete {folder.parent})")
    todo = sorted(set(range(shards)) - set(done))
    skipped = SkippedFiles(images)
    bar = progress_bar(total=len(split), initial=sum(min(shard_size, len(split) - s * shard_size) for s in done),
               desc=f"prepare {split.root.name}", unit="img", show=progress)
    for shard in todo:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        part = Subset(images, range(lo, hi))
        loader = Loader(part if quality is None else _Encoded(part, quality), batch_size=64,
                        num_workers=workers, collate_fn=ImageSet.collate)
        _write_shard(folder, shard, loader, split, skipped, bar, _sources(split, lo, hi), images.small, shard_size)
    bar.close()
    for file in folder.iterdir():   # left by a run killed mid-shard (of another store, say): all are done now
        if PARTIAL.fullmatch(file.name):
            file.unlink(missing_ok=True)
    counts, bad, checks = 0, 0, []
    for s in range(shards):
        text = (folder / f"{s:05d}.json").read_bytes()
        info = json.loads(text)
        counts += len(info["labels"])
        bad += len(info["skipped"])
        checks.append(zlib.crc32(text))   # the marker vouches for each shard's labels and files
    if counts == 0:
        raise UserError(f"no readable image in {split.root} ({len(split)} files tried)")
    return {"images": counts, "shards": shards, "skipped": bad, "crc32": checks}


def _as_vouched(folder: Path, shard: int, vouched: list | None) -> bool:
    """Whether the shard's record is as the marker vouched for it (True where it vouches for none)."""
    if vouched is None or shard >= len(vouched):
        return True
    return zlib.crc32((folder / f"{shard:05d}.json").read_bytes()) == vouched[shard]


def _data_whole(folder: Path, shard: int, info: dict, jpeg: bool) -> bool:
    """Whether the shard's data file has the size its record ``info`` gives: one cut short (a full disk, a
    copy that stopped) or lost since is made again, rather than refused by every run that opens the store."""
    try:
        size = (folder / f"{shard:05d}{'.jpg.bin' if jpeg else '.u8'}").stat().st_size
        expected = int(info["offsets"][-1]) if jpeg else len(info["labels"]) * FIXED_SIZE * FIXED_SIZE * 3
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return False
    return size == expected


def _sources(split: Split, lo: int, hi: int) -> list:
    """Which files samples lo..hi came from, as they were: path, size and modification time."""
    out = []
    for path, _ in split.samples[lo:hi]:
        try:
            st = path.stat()
        except OSError:   # a link to nothing, say: the decoder skips it with a warning, as training does
            out.append([str(path.relative_to(split.root)), None, None])
            continue
        out.append([str(path.relative_to(split.root)), st.st_size, st.st_mtime_ns])
    return out


class _Encoded(Dataset):
    """Batches of ``images`` as JPEGs at ``quality``: encoded in the DataLoader workers that decode them."""

    def __init__(self, images: Subset, quality: int) -> None:
        self.images, self.quality = images, quality

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]):
        images, labels, idx, errors = self.images.__getitems__(indices)
        return JpegBatch.encode(images, self.quality), labels, idx, errors


def _write_shard(folder: Path, shard: int, loader, split: Split, skipped: SkippedFiles, bar, sources: list,
                 small: str = "upscale", shard_size: int | None = None) -> None:
    jpeg = isinstance(loader.dataset, _Encoded)
    data = folder / f"{shard:05d}{'.jpg.bin' if jpeg else '.u8'}"
    tmp = folder / f".{data.name}.tmp"
    writer = _JpegWriter(tmp, loader.dataset.quality) if jpeg else _RawWriter(tmp)
    labels, files, bad = [], [], []
    for images, lab, idx, errors in loader:
        good = lab >= 0
        for i in torch.nonzero(~good).flatten().tolist():
            bad.append([str(split.samples[int(idx[i])][0].relative_to(split.root)), errors[i]])
        kept, kept_labels = skipped.keep(images, lab, idx, errors)   # warns once per file
        writer.add(kept)
        labels += kept_labels.tolist()
        files += [str(split.samples[int(i)][0].relative_to(split.root)) for i in idx[good].tolist()]
        bar.update(len(lab))
    index = writer.close()
    os.replace(tmp, data)
    info = {"labels": labels, "files": files, "skipped": bad, "sources": sources, "small": small,
            "shard_size": shard_size, **index}
    atomic_write(folder / f"{shard:05d}.json", lambda t: Path(t).write_text(json.dumps(info) + "\n"))


class _RawWriter:
    # Raw bytes rather than .npy: nothing to parse, and the .json says what they are. Written, not mapped: a
    # map of the shard would count its 200 MB as this process's memory.
    def __init__(self, tmp: Path) -> None:
        self.file = open(tmp, "wb")

    def add(self, images: torch.Tensor) -> None:
        if images.numel():   # a batch of unreadable files only has nothing to add (and memoryview refuses it)
            self.file.write(memoryview(np.ascontiguousarray(images.numpy())).cast("B"))

    def close(self) -> dict:
        self.file.close()
        return {}


class _JpegWriter:
    def __init__(self, tmp: Path, quality: int) -> None:
        self.file, self.quality = open(tmp, "wb"), quality
        self.offsets, self.crcs = [0], []

    def add(self, batch: JpegBatch) -> None:
        self.file.write(batch.data.numpy().tobytes())
        self.offsets += (self.offsets[-1] + batch.ends).tolist()
        self.crcs += [checksum(blob.numpy()) for blob in batch.blobs()]

    def close(self) -> dict:
        self.file.close()
        return {"store": "jpeg", "quality": self.quality, "offsets": self.offsets, "crc32": self.crcs}
