"""What every kind of data offers the rest of the project: one split as fixed 256x256 uint8 images.

A kind of data (image folders, a prepared store, any source added later) is an ``ImageSet``: its
length, its classes and their readable names, the source file of each sample, batch reads, another
labelling, a subset, and where statistics computed ahead of time lie. Commands never ask which kind
they hold; ``data/sources.py`` opens the right one.

Item i is (uint8 (256, 256, 3), label, i, error); a batch read gives the same four fields batched
(images (B, 256, 256, 3), labels (B,), indices (B,), errors: B strings). An unreadable sample has
label -1 and its reason in ``error``, so one bad file never stops a DataLoader (see SkippedFiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from alexnet.data.samples import relabelled
from alexnet.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]
SPLITS = ("train", "val")


@dataclass
class Split:
    """One split's samples: (source path, label) in class order, then file-name order."""
    root: Path
    classes: list[str]
    samples: Sequence[tuple[Path, int]]   # a list, or compact (data/samples.py)

    def __len__(self) -> int:
        return len(self.samples)


def labelled_by(split: Split, classes: list[str], where: str | Path | None = None) -> Split:
    """``split`` with each sample labelled by its class's index among the network's ``classes``.

    The data may hold all of the network's classes or any subset of them (ImageNet val/ restricted to
    a few folders, say); a folder the network has no output for is an error, not a silent miss, naming
    ``where`` the split was given (a prepared store's, say; default: its files' folder).
    """
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in split.classes if c not in index]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        known = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise UserError(f"{where or split.root} has class folders the network has no output for: "
                        f"{', '.join(unknown[:3])}{more} (it knows {len(classes)} classes: {known})")
    samples = relabelled(split.samples, [index[c] for c in split.classes])
    return Split(root=split.root, classes=list(classes), samples=samples)


class ImageSet(Dataset):
    """The interface; subclasses set ``split``, ``names`` and ``size`` and read batches.

    Batches are read whole (``__getitems__``, which DataLoader calls with a batch's indices), so
    every loader passes ``collate_fn=ImageSet.collate``.
    """
    split: Split           # root, classes (one per label), samples (source path, label)
    names: list[str]       # readable class names, same order as classes
    size: int              # side of the fixed images
    decodes: bool = True   # reading decodes files (worth DataLoader workers); False: copies stored pixels
    stats_file: Path | None = None   # the mean image and RGB PCA computed ahead of time, if any
    pixels: str = ""       # how its pixels differ from the decoded source files' ("": they do not)
    small: str = "upscale"  # what became of images under 256 (choices.SMALL): upscaled, or padded
    unreadable: int = 0    # files found unreadable before this set was made (left out of a prepared store)

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    def __len__(self) -> int:
        return len(self.split)

    def path(self, index: int) -> Path:
        return self.split.samples[index][0]

    def __getitem__(self, index: int):
        images, labels, indices, errors = self.__getitems__([index])
        return images[0], int(labels[0]), int(indices[0]), errors[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        raise NotImplementedError

    def check_readable(self, every_class: bool = False) -> None:
        """Raise UserError unless some sample (with ``every_class``, some sample of each class) can be read.
        Samples are tried in order until one is: on healthy data one read (a class), and a split of broken
        files is found before an epoch of training, not after it; a class of them, before the network
        grows an output that nothing teaches."""
        groups: dict[int, list[int]] = {label: [] for label in range(len(self.classes))} if every_class else {0: []}
        for i, (_, label) in enumerate(self.split.samples):
            groups[label if every_class else 0].append(i)
        for label, indices in groups.items():
            first = ""
            for i in indices:
                _, read, _, error = self[i]
                if read >= 0:
                    break
                first = first or f" (the first, {self.path(i)}: {error})"
            else:
                if not every_class:
                    raise UserError(f"no readable image in {self.split.root}: none of its {len(indices):,} files "
                                    f"can be read{first}")
                raise UserError(f"no readable image of class {self.classes[label]} in {self.split.root}"
                                + (f": none of its {len(indices):,} files can be read{first}" if indices else
                                   " (its files were left out as unreadable when it was prepared)")
                                + ": the network would have an output that nothing teaches; replace its files "
                                  "or remove the class"
                                + ("" if indices else ", then prepare the data into a new --out"))

    def relabelled(self, classes: list[str]) -> ImageSet:
        """The same samples labelled by their class's index among ``classes`` (a network's outputs)."""
        raise NotImplementedError

    def subset(self, indices: list[int]) -> ImageSet:
        """These samples only, in this order (a few query images, say)."""
        raise NotImplementedError

    def with_small(self, small: str, fixed: str = "") -> ImageSet:
        """This set with images under 256 treated as ``small`` says (choices.SMALL). A set that decodes its
        files can do either; one that stores decoded pixels (a prepared store) only what it was made with.
        ``fixed``: why the run's setting is not --small's to change ("as the network was trained"); empty
        where --small sets it, which is then the first remedy named."""
        if small != self.small:
            flag = "" if fixed else f"give --small {self.small} to use them as they are, or "
            raise UserError(f"{getattr(self, 'root', self.split.root)} holds images prepared with --small "
                            f"{self.small}, and this run uses --small {small}{f' ({fixed})' if fixed else ''}; "
                            f"{flag}prepare the data again with --small {small} (into another folder), or give "
                            f"the image folders themselves")
        return self

    def for_device(self, device: torch.device | str) -> ImageSet:
        """This set for a loop that drops a batch's unreadable samples (SkippedFiles.keep) and then only
        moves its images to ``device`` (``images.to(device)``): a set may then hand its batches over in a
        form that becomes the images by that move (JPEGs that a GPU decodes, data/jpeg.py). Most sets:
        themselves."""
        return self

    @staticmethod
    def collate(batch: Batch) -> Batch:
        return batch


@dataclass
class DataSource:
    """An opened dataset of any kind: its classes, their readable names, and the splits asked for."""
    root: Path
    kind: str                               # which kind of data (sources.KINDS) this is
    classes: list[str]                      # index = label (ImageNet: WordNet ids, sorted)
    names: list[str]                        # readable names, same order
    splits: dict[str, ImageSet]
