"""Decode once: a dataset as memory-mapped uint8 shards of fixed 256x256 images (`alexnet prepare`).

Decoding a full-size JPEG costs a few milliseconds of a core, every epoch; copying its 196,608 fixed
pixels out of the page cache costs microseconds. So `prepare` applies the paper's fixed preprocessing
(shorter side 256, centre 256x256, through the same decoder as the folder pipeline) to every image once,
in parallel, and stores the pixels raw:

    PREP/alexnet-prepared.json       what this is: classes, names, splits, source; written last
    PREP/{train,val}/00000.u8        up to 1,024 images, (n, 256, 256, 3) uint8, C order
    PREP/{train,val}/00000.json      their labels and source files, and the files that could not be read
    PREP/data_stats.safetensors      the mean image and RGB PCA of PREP/train (data/stats.py)

A shard's .json is written (atomically) after its pixels, so a shard with a .json is complete: an
interrupted `prepare` continues with the first shard that has none. Unreadable files are left out, each
named once. Random crops, flips, PCA noise and mean subtraction stay per batch, on the training device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from alexnet.data.decode import FIXED_SIZE
from alexnet.data.folders import SPLITS, FixedSizeImages, ImageFolders, SkippedFiles, Split, discover
from alexnet.errors import UserError
from alexnet.files import atomic_write

MARKER = "alexnet-prepared.json"
FORMAT = 1
SHARD = 1024


def is_prepared(path: str | Path) -> bool:
    """PREP rather than image folders (finished or not: an unfinished one is then refused by name)."""
    root = Path(path).expanduser()
    return (root / MARKER).is_file() or (root / "train" / "00000.json").is_file()


def prepare(data: str | Path, out: str | Path, workers: int | None = None, shard_size: int = SHARD,
            progress: bool = True) -> dict:
    """Decode DATA's train and val once into OUT; resumable. Returns the marker's contents."""
    data, out = Path(data).expanduser(), Path(out).expanduser()
    if is_prepared(data):
        raise UserError(f"{data} is already a prepared dataset; give the image folders it was made from")
    folders = discover(data)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    meta = _existing_meta(out, folders, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name in SPLITS:
        splits[name] = _prepare_split(folders.splits[name], out / name, workers, shard_size, progress)
    if progress:
        print(f"computing the mean image and RGB PCA of {out / 'train'}", flush=True)
    from alexnet.data.stats import load_or_compute_stats

    load_or_compute_stats(PreparedImages(out, "train", _meta=dict(meta, splits=splits)),
                          out / "data_stats.safetensors", workers=0, progress=progress)
    meta["splits"] = splits
    atomic_write(out / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    return meta


def _existing_meta(out: Path, folders: ImageFolders, shard_size: int) -> dict:
    meta = {"format": FORMAT, "size": FIXED_SIZE, "shard_size": shard_size, "source": str(folders.root.resolve()),
            "classes": folders.classes, "names": folders.names}
    if out.exists() and any(out.iterdir()):
        if not is_prepared(out):
            raise UserError(f"{out} exists and is not a prepared dataset; choose a new --out")
        if (out / MARKER).is_file():
            old = json.loads((out / MARKER).read_text())
            if old.get("source") != meta["source"] or old.get("classes") != meta["classes"]:
                raise UserError(f"{out} was prepared from {old.get('source')}; choose a new --out")
    return meta


def _prepare_split(split: Split, folder: Path, workers: int, shard_size: int, progress: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    shards = (len(split) + shard_size - 1) // shard_size
    done = [s for s in range(shards) if (folder / f"{s:05d}.json").is_file()]
    for shard in done:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        if json.loads((folder / f"{shard:05d}.json").read_text()).get("sources") != _sources(split, lo, hi):
            raise UserError(f"{folder / f'{shard:05d}.json'} was made from other files than {split.root} holds "
                            f"now; prepare into a new --out (or delete {folder.parent})")
    todo = sorted(set(range(shards)) - set(done))
    dataset = FixedSizeImages(split)
    skipped = SkippedFiles(dataset)
    bar = tqdm(total=len(split), initial=sum(min(shard_size, len(split) - s * shard_size) for s in done),
               desc=f"prepare {split.root.name}", unit="img", disable=None if progress else True)
    for shard in todo:
        lo, hi = shard * shard_size, min(len(split), (shard + 1) * shard_size)
        loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=64, num_workers=workers)
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


@dataclass
class _Shard:
    path: Path
    count: int
    pixels: np.ndarray | None = None


class PreparedImages(Dataset):
    """One split of a prepared dataset, with FixedSizeImages' items: (uint8 (256, 256, 3), label, index, "").

    Reads whole batches at once (``__getitems__``, which DataLoader calls with a batch's indices) into
    one uint8 tensor; pass ``collate_fn=PreparedImages.collate``. The shards are opened lazily in each
    process, so DataLoader workers map them themselves instead of receiving copies.
    """

    def __init__(self, root: str | Path, split: str, _meta: dict | None = None) -> None:
        self.root = Path(root).expanduser()
        meta = _meta or read_meta(self.root)
        self.size = meta["size"]
        self.classes, self.names = meta["classes"], meta["names"]
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
        # What FixedSizeImages offers, so the statistics, fingerprints and skip reports work unchanged.
        self.split = Split(root=source, classes=self.classes, samples=samples)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return self.split.samples[index][0]

    def relabelled(self, classes: list[str]) -> PreparedImages:
        """Labels as indices among another class list (a network's), as evaluate.labelled_by does."""
        from alexnet.evaluate import labelled_by

        split = labelled_by(self.split, classes)
        other = object.__new__(PreparedImages)
        other.__dict__.update(self.__dict__, split=split, classes=list(classes),
                              labels=torch.tensor([label for _, label in split.samples], dtype=torch.int64))
        return other

    def subset(self, indices: list[int]) -> PreparedImages:
        """These items only, in this order (for picking a few query images, say)."""
        other = object.__new__(PreparedImages)
        idx = torch.as_tensor(indices, dtype=torch.int64)
        samples = [self.split.samples[i] for i in indices]
        other.__dict__.update(self.__dict__, labels=self.labels[idx], rows=self.rows[idx],
                              split=Split(self.split.root, self.split.classes, samples))
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

    def __getitems__(self, indices: list[int]):
        out = torch.empty(len(indices), self.size, self.size, 3, dtype=torch.uint8)
        view = out.numpy()
        for j, index in enumerate(self.rows[indices].tolist()):
            shard, offset = self._locate(index)
            view[j] = self._pixels(shard)[offset]
        idx = torch.tensor(indices, dtype=torch.int64)
        return out, self.labels[idx], idx, [""] * len(indices)

    @staticmethod
    def collate(batch):
        return batch

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


def open_prepared(root: str | Path, splits: tuple[str, ...] = SPLITS) -> tuple[ImageFolders, dict[str, PreparedImages]]:
    root = Path(root).expanduser()
    meta = read_meta(root)
    sets = {name: PreparedImages(root, name, _meta=meta) for name in splits}
    folders = ImageFolders(root=root, classes=meta["classes"], names=meta["names"])
    return folders, sets
