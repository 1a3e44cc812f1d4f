"""A prepared dataset: fixed 256x256 images decoded once (`alexnet prepare`, data/prepare.py), read back
from shards, raw or as JPEGs.

Decoding a full-size JPEG costs a few milliseconds of a core, every epoch; copying its 196,608 fixed
pixels out of the page cache costs microseconds. But raw, ImageNet's training set takes 252 GB, more than
most machines' memory, and every epoch reads it from disk again: the JPEG store keeps each fixed image as a
256x256 JPEG (about 18 KB, data/jpeg.py), which decodes in a third of a millisecond. The layout:

    PREP/alexnet-prepared.json       what this is: store (raw or jpeg), small (upscale or pad: images under 256),
                                     classes, names, splits, source, the CRC-32
                                     of each shard's .json and of itself; written last
    PREP/{train,val}/00000.u8        raw: up to 1,024 images, (n, 256, 256, 3) uint8, C order
    PREP/{train,val}/00000.jpg.bin   jpeg: their JPEGs end to end
    PREP/{train,val}/00000.json      their labels and source files, and the files that could not be read;
                                     jpeg: where each JPEG starts and ends in the .jpg.bin, and its CRC-32
    PREP/data_stats.safetensors      the mean image and RGB PCA of PREP/train as read back (data/stats.py)

Random crops, flips, PCA noise and mean subtraction stay per batch, on the training device. Shards are
read with pread, not memory-mapped: the page cache holds them either way, but a mapping would count every
page ever read as the reader's own memory (files.ReadAt). The index of a split, the source name and label
of each image, is kept compact (data/samples.py): about 130 bytes an image, measured.

What is checked when: on opening, the marker and every shard's .json against their CRC-32s (any changed bit
in a label or a file name is refused, not read as another class), their fields, and each shard file's size
(opening 52,000 images took 0.1 s, so about 3 s for ImageNet; no pixel is read); a JPEG against its own
CRC-32 each time it is read; raw pixels by their shard's size only (a checksum of the 262 GB would be a full
read on every start).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alexnet.choices import SMALL
from alexnet.data.imageset import SPLITS, Batch, DataSource, ImageSet, Split, labelled_by
from alexnet.data.jpeg import JpegBatch, checksum, decodes_on
from alexnet.data.samples import NamedSamples, take
from alexnet.data.stats import STATS_FILE
from alexnet.errors import UserError
from alexnet.files import FolderLock, ReadAt

MARKER = "alexnet-prepared.json"
STATS = STATS_FILE
# The marker's format, by store. A raw store is still written as format 1 (a "store" key added), so the
# versions before the JPEG store, which read format 1 only, keep reading it; they refuse a jpeg store by
# its format instead of failing on its missing .u8 files.
FORMATS = {"raw": 1, "jpeg": 2}


def is_prepared(path: str | Path) -> bool:
    """PREP rather than image folders (finished or not: an unfinished one is then refused by name)."""
    root = Path(path).expanduser()
    return (root / MARKER).is_file() or is_unfinished(root)


# What `prepare` writes before a shard is finished: its data (.00000.u8.tmp), then its .json (atomic_write's
# .00000.json.XXXX.tmp).
# What undoes damage to a store's shards: prepare makes again each shard whose record is missing, changed
# since the marker vouched for it, or whose data file has not the size its record gives.
REMAKE = "run alexnet prepare again with the --data and --out it was made with: it makes damaged shards afresh"

PARTIAL = re.compile(r"\.\d{5}\.(u8|jpg\.bin|json)(\..+)?\.tmp")


def is_unfinished(root: Path) -> bool:
    """A `prepare` into ROOT that has not written its marker: a finished shard, or, killed in its first
    shard, nothing but split folders holding prepare's temporary files."""
    if (root / "train" / "00000.json").is_file():
        return True
    if not root.is_dir() or (root / MARKER).exists():
        return False
    folders = [f for f in root.iterdir() if f.name != FolderLock.NAME]   # a prepare's lock, held or left by kill -9
    if not folders or not all(f.name in SPLITS and f.is_dir() for f in folders):
        return False
    names = [file.name for folder in folders for file in folder.iterdir()]
    return bool(names) and all(PARTIAL.fullmatch(name) for name in names)


@dataclass
class _Shard:
    path: Path
    count: int
    offsets: np.ndarray | None = None   # jpeg: (count + 1,) where each image's JPEG starts, then the end
    crcs: np.ndarray | None = None      # jpeg: (count,) the CRC-32 of each
    file: ReadAt | None = None          # opened (size checked) on first read


class PreparedImages(ImageSet):
    """One split of a raw prepared store. A batch's images are read from the shards straight into the
    batch, each run of consecutive images in one read; every process (DataLoader workers too) opens the
    shards itself, on first use.
    """
    decodes = False

    def __init__(self, root: str | Path, split: str, _meta: dict | None = None) -> None:
        self.root = Path(root).expanduser()
        meta = _meta or read_meta(self.root)
        self.size = meta["size"]
        self.names = list(meta["names"])
        self.stats_file = self.root / STATS
        self.small = meta.get("small", "upscale")   # stores from before --small upscaled
        if meta.get("store") == "jpeg":   # statistics of its decoded JPEGs are not those of the raw pixels
            self.pixels = f"jpeg quality {meta.get('quality')}"
        folder = self.root / split
        self.split_name = split
        self.origin = (Path(meta["source"]), split)   # what it was prepared from: dense views read that
        shards, parts = [], []
        self.unreadable = 0
        source = Path(meta.get("roots", {}).get(split) or Path(meta["source"]) / split)   # no "roots": folders
        checks = meta["splits"][split].get("crc32")   # none in stores prepared before checksums
        for s in range(meta["splits"][split]["shards"]):
            info = _shard_info(folder / f"{s:05d}.json", len(meta["classes"]), checks[s] if checks else None)
            shards.append(self._shard(folder, s, info))
            self.unreadable += len(info.get("skipped", ()))
            parts.append(NamedSamples(source, info["files"], info["labels"]))
        samples = NamedSamples.join(parts)
        for shard in shards:   # here, in one line, rather than in a DataLoader worker's traceback
            self._check_size(shard)
        self._shards = shards
        self._starts = np.cumsum([0] + [s.count for s in shards])
        self.labels = torch.from_numpy(samples.labels.copy())
        self.rows = torch.arange(len(samples))          # item -> image in the shards (see subset)
        # The source files, so that statistics' fingerprints, skip reports and pictures work unchanged.
        self.split = Split(root=source, classes=list(meta["classes"]), samples=samples)

    def _shard(self, folder: Path, s: int, info: dict) -> _Shard:
        return _Shard(folder / f"{s:05d}.u8", len(info["labels"]))

    def _bytes(self, s: _Shard) -> int:
        return s.count * self.size * self.size * 3

    def relabelled(self, classes: list[str]) -> PreparedImages:
        split = labelled_by(self.split, classes,
                            where=f"{self.root / self.split_name} (prepared from {self.split.root})")
        names = dict(zip(self.classes, self.names))
        return self._copy(split=split, names=[names.get(c, c) for c in classes],
                          labels=torch.from_numpy(split.samples.labels.copy()))

    def subset(self, indices: list[int]) -> PreparedImages:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self._copy(labels=self.labels[idx], rows=self.rows[idx],
                          split=Split(self.split.root, self.split.classes, take(self.split.samples, indices)))

    def _copy(self, **changes) -> PreparedImages:
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__, **changes)
        return other

    def _file(self, shard: int) -> ReadAt:
        """The shard's file, its size checked again on first use in this process."""
        s = self._shards[shard]
        if s.file is None:
            self._check_size(s)
            s.file = ReadAt(s.path)
        return s.file

    def _check_size(self, s: _Shard) -> None:
        expected = self._bytes(s)
        try:
            size = s.path.stat().st_size
        except OSError as e:
            raise UserError(f"{s.path} cannot be read ({e.strerror or e}); {REMAKE}") from None
        if size != expected:
            raise UserError(f"{s.path} has {size} bytes, expected {expected}; {REMAKE}")

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def __getitems__(self, indices: list[int]) -> Batch:
        out = torch.empty(len(indices), self.size, self.size, 3, dtype=torch.uint8)
        view, image = out.numpy(), self.size * self.size * 3
        rows = self.rows[indices].tolist()
        j = 0
        while j < len(rows):   # rows j..k-1: consecutive images of one shard (an evaluation reads in order)
            shard, offset = self._locate(rows[j])
            k = j + 1
            while k < len(rows) and rows[k] == rows[k - 1] + 1 and offset + k - j < self._shards[shard].count:
                k += 1
            self._file(shard).read_into(offset * image, view[j:k])
            j = k
        idx = torch.tensor(indices, dtype=torch.int64)
        return out, self.labels[idx], idx, [""] * len(indices)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_shards"] = [replace(s, file=None) for s in self._shards]
        return state


class PreparedJpegs(PreparedImages):
    """One split of a jpeg store. A batch's JPEGs are read from the shards and checked against
    their CRC-32 (a damaged one is an unreadable sample, named and skipped like a bad source file), then
    decoded where the batch is read: in the DataLoader workers. For a consumer that moves batches to a
    GPU (``for_device``) they are handed over undecoded instead, as a JpegBatch that nvJPEG decodes there.
    """
    decodes = True
    hand_over = False   # batches are JpegBatches, decoded by .to(device)

    def _shard(self, folder: Path, s: int, info: dict) -> _Shard:
        try:
            offsets = np.asarray(info["offsets"], dtype=np.int64)
            crcs = np.asarray(info["crc32"], dtype=np.int64)
            ok = offsets.shape == (len(info["labels"]) + 1,) and crcs.shape == (len(info["labels"]),) \
                and offsets[0] == 0 and bool(np.all(np.diff(offsets) >= 0))
        except (KeyError, TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise UserError(f"{folder / f'{s:05d}.json'} is damaged: its JPEG offsets or checksums do not fit its "
                            f"labels; {REMAKE}")
        return _Shard(folder / f"{s:05d}.jpg.bin", len(info["labels"]), offsets, crcs)

    def _bytes(self, s: _Shard) -> int:
        return int(s.offsets[-1])

    def for_device(self, device: torch.device | str) -> PreparedJpegs:
        # A GPU with nvJPEG decodes a batch in one call; a CPU decodes in the workers, in parallel.
        return self._copy(hand_over=True, decodes=False) if decodes_on(torch.device(device)) else self

    def __getitem__(self, index: int):
        images, labels, indices, errors = self._read([index], hand_over=False)
        return images[0], int(labels[0]), index, errors[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        return self._read(indices, self.hand_over)

    def _read(self, indices: list[int], hand_over: bool) -> Batch:
        idx = torch.tensor(indices, dtype=torch.int64)
        blobs, damaged = [], []
        for row in self.rows[idx].tolist():
            shard, k = self._locate(row)
            s = self._shards[shard]
            blob = self._file(shard).read(int(s.offsets[k]), int(s.offsets[k + 1] - s.offsets[k]))
            ok = checksum(blob) == s.crcs[k]
            blobs.append(blob if ok else blob[:0])   # no bytes: not decoded, not handed over
            damaged.append("" if ok else f"its JPEG in {s.path.parent.name}/{s.path.name} is damaged "
                                         f"(CRC-32 mismatch); rerun alexnet prepare into a new folder")
        batch = JpegBatch.join(blobs, self.size)
        if hand_over:
            errors = damaged
        else:
            batch, decoded = batch.decode("cpu")
            errors = [d or e for d, e in zip(damaged, decoded)]
        labels = self.labels[idx].clone()
        labels[torch.tensor([bool(e) for e in errors], dtype=torch.bool)] = -1
        return batch, labels, idx, errors


def _shard_info(path: Path, classes: int, crc: int | None) -> dict:
    """A shard's .json, checked against the CRC-32 the marker holds for it (any changed bit), and its labels
    against the number of classes: damage is one line naming the file."""
    try:
        text = path.read_bytes()
        if crc is not None and zlib.crc32(text) != crc:
            raise UserError(f"{path} is damaged: it is not the file prepare wrote (CRC-32 mismatch); {REMAKE}")
        info = json.loads(text)
        labels, files = info["labels"], info["files"]
        ok = len(labels) == len(files) and all(type(y) is int and 0 <= y < classes for y in labels)
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__}: {e})"
        raise UserError(f"{path} is {reason}; {REMAKE}") from None
    if not ok:
        raise UserError(f"{path} is damaged: its labels are not one class index (0 to {classes - 1}) per file; "
                        "rerun alexnet prepare into a new folder")
    return info


def read_meta(root: Path) -> dict:
    path = root / MARKER
    if not path.is_file():
        if is_unfinished(root):
            raise UserError(f"{root} is an unfinished `alexnet prepare`; run it again to complete it")
        raise UserError(f"{root} is not a prepared dataset (no {MARKER})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); run alexnet prepare again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is damaged (not a JSON object); run alexnet prepare again")
    # Stores prepared before checksums have none, in the marker or its splits; a store with either has both.
    splits = meta.get("splits") if isinstance(meta.get("splits"), dict) else {}
    checked = "crc32" in meta or any(isinstance(v, dict) and "crc32" in v for v in splits.values())
    if checked and meta.get("crc32") != marker_checksum(meta):
        raise UserError(f"{path} is damaged: it is not the file prepare wrote (CRC-32 mismatch); run alexnet "
                        "prepare again")
    store = meta.get("store", "raw")   # format 1 markers before the JPEG store have no "store"
    if not isinstance(store, str) or FORMATS.get(store) != meta.get("format"):
        raise UserError(f"{root} was prepared in format {meta.get('format')} ({store} store); this version reads "
                        + " and ".join(f"format {f} ({kind})" for kind, f in FORMATS.items()))
    if not _well_formed(meta):
        raise UserError(f"{path} is damaged (a field missing or of the wrong kind); run alexnet prepare again")
    return meta


def marker_checksum(meta: dict) -> int:
    """CRC-32 of the marker's contents but itself, in a canonical form (key order and spacing aside)."""
    return zlib.crc32(json.dumps({k: v for k, v in meta.items() if k != "crc32"}, sort_keys=True).encode())


def _well_formed(meta: dict) -> bool:
    classes, names, splits = meta.get("classes"), meta.get("names"), meta.get("splits")
    return (type(meta.get("size")) is int and meta["size"] > 0 and isinstance(meta.get("source"), str)
            and meta.get("small", "upscale") in SMALL
            and isinstance(classes, list) and len(classes) > 0 and all(isinstance(c, str) for c in classes)
            and isinstance(names, list) and len(names) == len(classes) and all(isinstance(n, str) for n in names)
            and isinstance(splits, dict) and set(SPLITS) <= set(splits)
            and all(isinstance(v, dict) and type(v.get("shards")) is int and v["shards"] >= 0 and _checks_fit(v)
                    for v in splits.values()))


def _checks_fit(split: dict) -> bool:
    checks = split.get("crc32")   # a CRC-32 per shard .json; none in stores prepared before checksums
    return checks is None or (isinstance(checks, list) and len(checks) == split["shards"]
                              and all(type(c) is int for c in checks))


def open_prepared(root: str | Path, splits: tuple[str, ...] = SPLITS) -> DataSource:
    root = Path(root).expanduser()
    meta = read_meta(root)
    sets = {name: prepared_split(root, name, meta) for name in splits}
    return DataSource(root, "prepared", list(meta["classes"]), list(meta["names"]), sets)


def prepared_split(root: Path, split: str, meta: dict) -> PreparedImages:
    """One split of the store at ``root``, as ``meta`` (its marker's contents) describes it."""
    kind = PreparedJpegs if meta.get("store") == "jpeg" else PreparedImages
    return kind(root, split, _meta=meta)
