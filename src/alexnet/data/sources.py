"""The one door for data: every command opens its dataset here, whatever kind of data lies at the path.

    source = open_data("data/demo")                 # DataSource: classes, names, splits["train"|"val"]
    source = open_data("/data/ILSVRC2012")          # ImageNet's archives (or Kaggle's download) as they are
    val = open_split("data/demo-prepared", "val", classes=loaded.classes)   # labelled as a network's outputs

A kind of data is a detector and an opener in KINDS, tried in order; each opener returns ImageSets
(data/imageset.py), so nothing past this module asks which kind it holds. The kinds: a prepared store,
ImageNet's archives or its extracted files as downloaded (data/imagenet.py), and image folders. To add
a kind, write its opener and add it here; tests/test_sources.py then asks for a builder of it and holds
it to the samples the other kinds give.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alexnet.data.folders import open_folders
from alexnet.data.imagenet import is_archives, is_extracted, open_archives, open_extracted
from alexnet.data.imageset import SPLITS, DataSource, ImageSet
from alexnet.data.prepared import is_prepared, open_prepared
from alexnet.errors import UserError


@dataclass(frozen=True)
class Kind:
    name: str
    detect: Callable[[Path], bool]
    open: Callable[[Path, tuple[str, ...]], DataSource]
    splits: tuple[str, ...] | None = None   # the only splits this kind has (None: any folder of it)


# Most specific first; image folders take whatever is left, and explain what they expected. Each
# detector only looks at a few names (ImageNet's: its archives, Kaggle's folders, or a val/ of images
# rather than of class folders), so none of them takes another kind's data.
KINDS = (
    Kind("prepared", is_prepared, open_prepared, SPLITS),
    Kind("imagenet-archives", is_archives, open_archives, SPLITS),
    Kind("imagenet-extracted", is_extracted, open_extracted, SPLITS),
    Kind("folders", lambda path: True, open_folders),
)


def kind_of(path: str | Path) -> Kind:
    path = Path(path).expanduser()
    return next(kind for kind in KINDS if kind.detect(path))


def open_data(path: str | Path, splits: tuple[str, ...] = SPLITS, small: str | None = None,
              fixed: str = "") -> DataSource:
    """The dataset at ``path`` with the ``splits`` asked for; a one-line UserError if it is not one.
    With ``small`` (choices.SMALL), its images under 256 are treated so, or it is refused if it cannot
    (``fixed``: why --small cannot change the setting, as ImageSet.with_small says)."""
    path = Path(path).expanduser()
    for split in splits:
        if split in ("", ".", "..") or "/" in split or os.sep in split:
            raise UserError(f"{split!r} is not a split: give the name of a folder of {path} (train, val, ...)")
    kind = kind_of(path)
    unknown = [split for split in splits if kind.splits is not None and split not in kind.splits]
    if unknown:
        raise UserError(f"{path} has no split {unknown[0]!r}: its splits are {' and '.join(kind.splits)}")
    source = kind.open(path, splits)
    if small is not None:
        source.splits = {name: images.with_small(small, fixed) for name, images in source.splits.items()}
    return source


def open_split(path: str | Path, split: str = "val", classes: list[str] | None = None,
               small: str | None = None, fixed: str = "") -> ImageSet:
    """One split; with ``classes`` (a network's outputs), labelled by their index among them."""
    images = open_data(path, (split,), small, fixed).splits[split]
    return images if classes is None else images.relabelled(classes)
