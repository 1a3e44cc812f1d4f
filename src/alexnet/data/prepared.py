"""A prepared dataset: fixed 256x256 images decoded once (`alexnet prepare`, data/prepare.py), read back
as memory-mapped uint8 shards.

Decoding a full-size JPEG costs a few milliseconds of a core, every epoch; copying its 196,608 fixed
pixels out of the page cache costs microseconds. The layout:

    PREP/alexnet-prepared.json       what this is: classes, names, splits, source; written last
    PREP/{train,val}/00000.u8        up to 1,024 images, (n, 256, 256, 3) uint8, C order
    PREP/{train,val}/00000.json      their labels and source files, and the files that could not be read
    PREP/data_stats.safetensors      the mean image and RGB PCA of PREP/train (data/stats.py)

Random crops, flips, PCA noise and mean subtraction stay per batch, on the training device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alexnet.data.imageset import SPLITS, Batch, DataSource, ImageSet, Split, labelled_by
from alexnet.errors import UserError

MARKER = "alexnet-prepared.json"
STATS = "data_stats.safetensors"
FORMAT = 1


def is_prepared(path: str | Path) -> bool:
    """PREP rather than image folders (finished or not: an unfinished one is then refused by name)."""
    root = Path(path).expanduser()
    return (root / MARKER).is_file() or (root / "train" / "00000.json").is_file()


@dataclass
class _Shard:
    path: Path
    count: int
    pixels: np.ndarray | None = None


class PreparedImages(ImageSet):
    """One split of a prepared dataset. Batches are copied out of the shards whole; the shards are
    mapped lazily in each process, so DataLoader workers map them themselves instead of receiving copies.
    """
    decodes = False

    def __init__(self, root: str | Path, split: str, _meta: dict | None = None) -> None:
        self.root = Path(root).expanduser()
        meta = _meta or read_meta(self.root)
        self.size = meta["size"]
        self.names = list(meta["names"])
        self.stats_file = self.root / STATS
        folder = self.root / split
        shards, labels, samples = [], [], []
        source = Path(meta["source"]) / split
        for s in range(meta["splits"][split]["shards"]):
            info = json.loads((folder / f"{s:05d}.json").read_text())
            shards.append(_Shard(folder / f"{s:05d}.u8", len(info["labels"])))
            labels += info["labels"]
            samples += [(source / f, label) for f, label in zip(info["files"], info["labels"])]
        self._shards = shards
        self._starts = np.cumsum([0] + [s.count for s in shards])
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.rows = torch.arange(len(labels))          # item -> image in the shards (see subset)
        # The source files, so that statistics' fingerprints, skip reports and pictures work unchanged.
        self.split = Split(root=source, classes=list(meta["classes"]), samples=samples)

    def relabelled(self, classes: list[str]) -> PreparedImages:
        split = labelled_by(self.split, classes)
        names = dict(zip(self.classes, self.names))
        return self._copy(split=split, names=[names.get(c, c) for c in classes],
                          labels=torch.tensor([label for _, label in split.samples], dtype=torch.int64))

    def subset(self, indices: list[int]) -> PreparedImages:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        samples = [self.split.samples[i] for i in indices]
        return self._copy(labels=self.labels[idx], rows=self.rows[idx],
                          split=Split(self.split.root, self.split.classes, samples))

    def _copy(self, **changes) -> PreparedImages:
        other = object.__new__(PreparedImages)
        other.__dict__.update(self.__dict__, **changes)
        return other

    def _pixels(self, shard: int) -> np.ndarray:
        s = self._shards[shard]
        if s.pixels is None:
            expected = s.count * self.size * self.size * 3
            if s.path.stat().st_size != expected:
                raise UserError(f"{s.path} has {s.path.stat().st_size} bytes, expected {expected}; "
                                "rerun alexnet prepare into a new folder")
            s.pixels = np.memmap(s.path, dtype=np.uint8, mode="r", shape=(s.count, self.size, self.size, 3))
        return s.pixels

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def __getitem__(self, index: int):
        shard, offset = self._locate(int(self.rows[index]))
        return torch.from_numpy(np.array(self._pixels(shard)[offset])), int(self.labels[index]), index, ""

    def __getitems__(self, indices: list[int]) -> Batch:
        out = torch.empty(len(indices), self.size, self.size, 3, dtype=torch.uint8)
        view = out.numpy()
        for j, index in enumerate(self.rows[indices].tolist()):
            shard, offset = self._locate(index)
            view[j] = self._pixels(shard)[offset]
        idx = torch.tensor(indices, dtype=torch.int64)
        return out, self.labels[idx], idx, [""] * len(indices)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_shards"] = [_Shard(s.path, s.count) for s in self._shards]
        return state


def read_meta(root: Path) -> dict:
    path = root / MARKER
    if not path.is_file():
        if (root / "train" / "00000.json").is_file():
            raise UserError(f"{root} is an unfinished `alexnet prepare`; run it again to complete it")
        raise UserError(f"{root} is not a prepared dataset (no {MARKER})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); run alexnet prepare again") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{root} was prepared in format {meta.get('format')}; this version reads {FORMAT}")
    return meta


def open_prepared(root: str | Path, splits: tuple[str, ...] = SPLITS) -> DataSource:
    root = Path(root).expanduser()
    meta = read_meta(root)
    sets = {name: PreparedImages(root, name, _meta=meta) for name in splits}
    return DataSource(root, "prepared", list(meta["classes"]), list(meta["names"]), sets)
