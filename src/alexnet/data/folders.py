"""Datasets in the layout ImageNet users already have: DATA/train/<class>/* and DATA/val/<class>/*.

Class = folder name (a WordNet id for ImageNet); sorted order gives the label, as in torchvision's
ImageFolder. An optional DATA/classes.txt or ImageNet's LOC_synset_mapping.txt ("<folder> <readable
name>" per line) gives readable names. Problems with the layout are UserErrors, raised before any work
starts; problems with single files surface later, one file at a time (see SkippedFiles).
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import default_collate

from alexnet.data.class_names import read_pairs
from alexnet.data.decode import FIXED_SIZE, UndecodableImage, load_fixed
from alexnet.data.imageset import SPLITS, Batch, DataSource, ImageSet, Split, labelled_by
from alexnet.data.samples import take
from alexnet.errors import UserError, printable

# torchvision's ImageFolder extensions, plus what PIL also reads of photos (.gif, .jfif, .jpe, .mpo: a
# phone's multi-picture JPEG, .avif, .pnm); anything else in a class folder (a README, a thumbnail
# database, .heic that PIL cannot read) is not a sample, and is counted and named as left out (discover).
# Matching ignores case: ImageNet's files end in .JPEG.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".mpo", ".png", ".ppm", ".pgm", ".pbm", ".pnm",
                              ".bmp", ".tif", ".tiff", ".webp", ".gif", ".avif"})
CLASS_NAME_FILES = ("classes.txt", "LOC_synset_mapping.txt")


@dataclass
class ImageFolders:
    """A dataset directory: its classes, their readable names, and its splits."""
    root: Path
    classes: list[str]                      # folder names; index = label
    names: list[str]                        # readable names, same order
    splits: dict[str, Split] = field(default_factory=dict)


def discover(data: str | Path, splits: tuple[str, ...] = SPLITS) -> ImageFolders:
    """Find the classes and image files of ``data``; raise UserError on any layout problem."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"{data} is not a directory (expected {data}/train/<class>/*.jpg and {data}/val/<class>/*.jpg)")
    found: dict[str, list[str]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(f"{root} has no {split}/ folder (expected {root}/{split}/<class>/<images>)")
        found[split] = _class_folders(split_dir)
        if not found[split]:
            raise UserError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<images>)")
    classes = found[splits[0]]
    for split in splits[1:]:
        if found[split] != classes:
            only_first = sorted(set(classes) - set(found[split]))
            only_this = sorted(set(found[split]) - set(classes))
            # Names that print alike but are other code points: a folder copied through macOS (NFD) beside
            # one made elsewhere (NFC). Said outright, or the message reads "only in train/: café; only in val/: café".
            alike = sorted(set(map(_nfc, only_first)) & set(map(_nfc, only_this)))
            hint = (f" ({_few(alike)} {'is' if len(alike) == 1 else 'are'} spelled with other Unicode code points in "
                    f"each (NFC and NFD forms, as a copy through macOS leaves them): rename one to match)"
                    if alike else "")
            raise UserError(f"{splits[0]}/ and {split}/ disagree on classes: only in {splits[0]}/: "
                            f"{_few(only_first)}; only in {split}/: {_few(only_this)}{hint}")

    result = ImageFolders(root=root, classes=classes, names=read_class_names(root, classes))
    for split in splits:
        samples, empty, others, linked, closed, blocked = [], [], Counter(), [], [], []
        roots, reached = {os.path.realpath(root / split / cls) for cls in classes}, {}
        for label, cls in enumerate(classes):
            theirs: Counter = Counter()
            unreadable: list[tuple[Path, str]] = []
            files = image_files(root / split / cls, split=root / split, left_out=theirs, linked=linked,
                                unreadable=unreadable, classes=roots, reached=reached)
            if unreadable and unreadable[0][0] == root / split / cls:   # the class folder itself
                closed.append(f"{split}/{cls} ({unreadable[0][1]})")
            elif not files:
                empty.append(f"{split}/{cls}" + (f" (holds {_kinds(theirs)})" if theirs else ""))
            samples += [(f, label) for f in files]
            others += theirs
            blocked += unreadable
        if closed:   # said as what it is: an extension list would send the user looking for other file names
            raise UserError(printable(f"{root}: cannot read class folder{'s' if len(closed) > 1 else ''} "
                                      f"{_few(closed)}: give this user read access to "
                                      f"{'them' if len(closed) > 1 else 'it'}"))
        if empty:
            raise UserError(printable(f"{root}: class folder{'s' if len(empty) > 1 else ''} with no images: "
                                      f"{_few(empty)}; images end in {', '.join(sorted(IMAGE_EXTENSIONS))}"))
        # A loose file that a class links to is that class's sample, not left out.
        loose = Counter(os.path.splitext(e.name)[1].lower() for e in os.scandir(root / split)
                        if not e.name.startswith(".") and not _is_dir(e)
                        and not (reached and os.path.realpath(e.path) in reached))
        warn_unreadable(blocked)
        if os.environ.get("LOCAL_RANK", "0") == "0":   # once a machine, under torchrun
            if others:
                print(printable(f"note: {root / split} holds {_kinds(others)}, left out: not images by their names "
                                f"(images end in {', '.join(sorted(IMAGE_EXTENSIONS))}, in any case)"), file=sys.stderr)
            if loose:
                print(printable(f"note: {root / split} holds {_kinds(loose, 'file')} outside its class folders, left "
                                f"out: a class's images go in {split}/<class>/"), file=sys.stderr)
            inside = os.path.realpath(root / split)
            own, elsewhere = [], []
            for p in linked:   # the split's images are its class folders' (which may be links) and its own
                real = os.path.realpath(p)
                (own if _within(real, inside) or _owner(real, roots) else elsewhere).append(p)
            for links, what in ((own, "its own images"),
                                (elsewhere, "images kept elsewhere that a link before them made samples")):
                if links:
                    print(printable(f"note: {root / split} holds {len(links):,} link{'s' * (len(links) != 1)} to "
                                    f"{what} ({_few([os.path.relpath(p, root / split) for p in links], 3)}), left "
                                    f"out: each image is one sample of one class"), file=sys.stderr)
        result.splits[split] = Split(root=root / split, classes=classes, samples=samples)
    return result


def _kinds(files: Counter, what: str = "other file") -> str:
    """"3 other files (.heic 2, no extension 1)"."""
    n = sum(files.values())
    common = sorted(files.items(), key=lambda kind: (-kind[1], kind[0] == "", kind[0]))[:5]   # ties: by name
    kinds = ", ".join(f"{ext or 'no extension'} {count}" for ext, count in common)
    more = ", ..." if len(files) > 5 else ""
    return f"{n:,} {what}{'s' * (n != 1)} ({kinds}{more})"


def open_folders(data: str | Path, splits: tuple[str, ...] = SPLITS) -> DataSource:
    """Image folders as a DataSource, every split decoded as it is read."""
    folders = discover(data, splits)
    sets = {name: FixedSizeImages(folders.splits[name], names=folders.names) for name in splits}
    return DataSource(folders.root, "folders", folders.classes, folders.names, sets)


def image_files(folder: Path, split: Path | None = None, left_out: Counter | None = None,
                linked: list[str] | None = None, unreadable: list[tuple[Path, str]] | None = None,
                classes: set[str] | None = None, reached: dict[str, str] | None = None) -> list[Path]:
    """Image files in ``folder`` and its subfolders (symlinks followed, as ImageFolder does), sorted.

    Hidden files and folders (.DS_Store, .ipynb_checkpoints) are not samples. A linked folder is followed
    unless it leads back to a folder already read or above ``folder`` (``ln -s . loop``, ``ln -s .. up``:
    a loop would multiply the samples), or into another class of ``split`` or to a folder holding one or
    the split (its images are that class's, its loose files no class's), so each image of the split is one
    sample of one class; links to images kept elsewhere, or in a hidden folder of the split, are followed.
    So is a linked file, unless it leads to a sample of ``split`` already (in another class, or in a folder
    of this one that is read) or to a file an earlier link made one: such links go into ``linked``, and the
    files that links make samples (a loose file of the split, one in a hidden folder, one kept outside the
    split) and the folders of no class that links lead to go into ``reached``, each with the real path of
    the class that reached it first: with one ``reached`` for every class of a split, an image kept
    elsewhere, linked or in a linked folder, is one sample of the first class that reaches it, as an image
    of a class is, and later links to it or its folder go into ``linked``. ``classes`` holds the real paths of
    the split's class folders (found from ``split`` if not given). ``left_out`` counts the files left out
    for their extension (lower case; "" for none), hidden ones aside. A folder that cannot be listed
    (``folder`` itself first, if it cannot) goes into ``unreadable`` with the reason ("permission
    denied"): its images are not in the list."""
    top = os.path.realpath(folder)
    others = os.path.realpath(split) if split is not None else None
    if others is not None and classes is None:
        classes = {os.path.realpath(e.path) for e in os.scandir(others) if not e.name.startswith(".") and _is_dir(e)}

    def followed(real: str) -> bool:
        if real in seen or top == real or _within(top, real):   # read already, or above the class
            return False
        if others is None or _within(real, top):
            return True
        if _owner(real, classes) is not None or _within(others, real) or any(_within(cls, real) for cls in classes):
            return False
        if reached is not None:   # no class's folder: the first class's to reach it
            if another(real):
                return False
            reached.setdefault(real, top)
        return True

    def another(real: str) -> bool:
        """Whether ``real`` lies in a file or folder of no class that another class reached first."""
        holder = _owner(real, reached) if reached else None
        return holder is not None and reached[holder] != top

    def taken(real: str) -> bool:
        owner = _owner(real, classes) if real else None
        if owner is None:
            # A file no class holds (loose in the split, hidden, or kept outside it) is the first link's sample.
            if real and reached is not None:
                holder = _owner(real, reached)
                # Linked before (by a class read before, or twice by this one): its sample already. Or in a
                # folder of no class that a class reads: that class's, as in a class folder (below), unless
                # hidden there (not read: the link is its sample, whichever class reached the folder).
                if holder == real or (holder is not None and not _hidden(real, holder)):
                    return True
                reached[real] = top
            return False
        # In this class, a file in a hidden folder (or hidden itself) is not read, so the link is its sample.
        return owner != top or not _hidden(real, top)

    # os.scandir rather than os.walk: its entries say which are links without a stat of every file.
    # A folder counts as read once it is queued: two ways to one folder (itself and a link to it, two
    # links) queued from one listing would otherwise both be walked, and its images counted twice.
    found, seen, folders, reals = [], {top}, [str(folder)], {str(folder): top}
    while folders:
        path = folders.pop()
        # A folder of no class (kept elsewhere): a file in it that a link made a sample already is not read again.
        elsewhere = reached is not None and reached.get(reals[path]) == top
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as e:   # unreadable: skipped, as os.walk skips it, and said by the caller
            if unreadable is not None:
                unreadable.append((Path(path), _said(e)))
            continue
        below = []
        for entry in sorted((e for e in entries if not e.name.startswith(".") and _is_dir(e)),
                            key=lambda e: e.is_symlink()):   # a folder itself before a link to it
            real = os.path.realpath(entry.path)
            if followed(real):
                seen.add(real)
                below.append(entry.path)
                reals[entry.path] = real
            elif linked is not None and entry.is_symlink() and others is not None and another(real):
                linked.append(entry.path)
        below.sort()
        for entry in entries:
            if entry.name.startswith(".") or _is_dir(entry):
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                lost = _lost_folder(entry) if unreadable is not None else ""
                if lost:   # a subfolder on a disk not mounted: its images are missing, not "other files"
                    unreadable.append((Path(entry.path), lost))
                elif left_out is not None:
                    left_out[ext] += 1
            elif others is not None and entry.is_symlink() and taken(_target(entry.path)):
                if linked is not None:
                    linked.append(entry.path)
            elif elsewhere and os.path.join(reals[path], entry.name) in reached:
                if linked is not None:
                    linked.append(entry.path)
            else:
                found.append(Path(entry.path))
        folders += reversed(below)   # in name order, depth first, as os.walk goes
    return sorted(found)


def _hidden(real: str, folder: str) -> bool:
    """Whether real path ``real``, inside ``folder``, is hidden there (or in a hidden folder): not read."""
    return any(part.startswith(".") for part in os.path.relpath(real, folder).split(os.sep))


def _within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _owner(real: str, classes: Collection[str]) -> str | None:
    """The class folder of ``classes`` (real paths) that holds real path ``real``, the nearest; None if none."""
    while real not in classes:
        parent = os.path.dirname(real)
        if parent == real:
            return None
        real = parent
    return real


def _lost_folder(entry: os.DirEntry) -> str:
    """Why ``entry``, a link named as no file is (no extension) and leading nowhere, is a folder that cannot be
    read ("a link to /mnt/photos/x, which does not exist"); "" for anything else."""
    if not entry.is_symlink():
        return ""
    target = os.readlink(entry.path)
    if os.path.splitext(target)[1]:
        return ""
    try:
        os.stat(entry.path)
        return ""
    except OSError as e:
        return f"a link to {target}, which " + ("does not exist" if isinstance(e, FileNotFoundError) else
                                                 f"cannot be reached ({_said(e)})")


def warn_unreadable(folders: list[tuple[Path, str]]) -> None:
    """One warning for each folder image_files could not list, as for an unreadable image (once a machine)."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    for path, reason in folders:
        print(printable(f"warning: skipping unreadable folder {path}: {reason}; the images in it are left out"),
              file=sys.stderr)


def _target(link: str) -> str:
    """The file ``link`` leads to; "" if none (a link to nothing, or to itself): a sample then, like any
    file that cannot be read, and said so when it is read ("too many levels of symbolic links")."""
    try:
        return os.path.realpath(link, strict=True)
    except OSError:
        return ""


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()   # through a link
    except OSError:
        return False


def read_class_names(root: Path, classes: list[str]) -> list[str]:
    """Readable names from classes.txt / LOC_synset_mapping.txt; a folder without an entry keeps its name."""
    # The file is UTF-8; a folder's name is as the file system's encoding gives it: in an ASCII locale without
    # Python's UTF-8 mode (LC_ALL=C PYTHONUTF8=0) "dög" reaches Python as "d\udcc3\udcb6g". Matched by their
    # bytes, or such a folder silently kept its folder name.
    spelled = [os.fsencode(c).decode("utf-8", "surrogateescape") for c in classes]
    for name in CLASS_NAME_FILES:
        path = root / name
        if path.is_file():
            mapping = {folder: words or folder for folder, words in read_pairs(path, spelled)}
            if mapping and classes and not mapping.keys() & set(spelled):
                print(printable(f"warning: {path} names none of the class folders ({_few(sorted(mapping), 3)}; "
                                f"the folders: {_few(classes, 3)}): each class is named by its folder"),
                      file=sys.stderr)
            return [mapping.get(s, c) for s, c in zip(spelled, classes)]
    return list(classes)


def _class_folders(split_dir: Path) -> list[str]:
    try:
        entries = [p for p in split_dir.iterdir() if not p.name.startswith(".")]
    except OSError as e:
        raise UserError(printable(f"cannot read {split_dir}: {_said(e)}")) from None
    classes = sorted(p.name for p in entries if p.is_dir())
    # A link that leads nowhere (to a disk not mounted, a folder moved) is a class folder lost: left out, it
    # would be trained without, or read as a file lying in the split. A dead link named as an image is one.
    for p in sorted(entries):
        if p.is_symlink() and os.path.splitext(p.name)[1].lower() not in IMAGE_EXTENSIONS and not p.is_dir():
            _refuse_dead_link(p)
    # A class folder may be a link (to images kept elsewhere), but not to the split or a folder above it:
    # that "class" would hold every other class's images.
    split_real = os.path.realpath(split_dir)
    seen: dict[str, str] = {}
    for name in classes:
        real = os.path.realpath(split_dir / name)
        if split_real == real or split_real.startswith(real.rstrip(os.sep) + os.sep):
            raise UserError(f"{split_dir / name} links to {real}, which holds {split_dir} itself: a class folder "
                            f"cannot contain its own split")
        if real in seen:   # every image would be in two classes at once, under two labels
            raise UserError(f"{split_dir / seen[real]} and {split_dir / name} are the same folder ({real}): "
                            f"each image would belong to two classes")
        seen[real] = name
    return classes


def _refuse_dead_link(link: Path) -> None:
    """A UserError for ``link`` unless it leads to something (a file: a stray file in the split, noted later)."""
    try:
        link.stat()
        return
    except OSError as e:
        reason = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be reached ({_said(e)})"
    raise UserError(printable(f"{link} is a link to {os.readlink(link)}, which {reason}: its class cannot be "
                              f"read (a disk not mounted? a folder moved?); mount it or mend the link, or remove "
                              f"it to go without that class"))


def _said(e: OSError) -> str:
    """The file system's own words for ``e``: "permission denied", "too many levels of symbolic links"."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _few(items: list[str], limit: int = 5) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class FixedSizeImages(ImageSet):
    """A split of image folders as the paper's fixed 256x256 uint8 images, decoded as they are read.

    An undecodable file gives a zero image, label -1 and the reason, so that one bad file never stops
    a DataLoader; the main process drops it from the batch and reports it once (SkippedFiles).
    """

    def __init__(self, split: Split, size: int = FIXED_SIZE, names: list[str] | None = None,
                 small: str = "upscale") -> None:
        self.split, self.size, self.small = split, size, small
        self.names = list(split.classes) if names is None else list(names)

    def _item(self, index: int):
        path, label = self.split.samples[index]
        try:
            return load_fixed(path, self.size, self.small), label, index, ""
        except UndecodableImage as e:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), -1, index, str(e)
        except OSError as e:  # the file vanished or can't be read at all; still not worth stopping a run
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), -1, index, f"{type(e).__name__}: {e}"

    def __getitem__(self, index: int):
        return self._item(index)

    def __getitems__(self, indices: list[int]) -> Batch:
        # default_collate: in a DataLoader worker it stacks straight into shared memory.
        images, labels, idx, errors = default_collate([self._item(i) for i in indices])
        return images, labels, idx, list(errors)

    def relabelled(self, classes: list[str]) -> FixedSizeImages:
        names = dict(zip(self.classes, self.names))
        return FixedSizeImages(labelled_by(self.split, classes), self.size, [names.get(c, c) for c in classes],
                               self.small)

    def subset(self, indices: list[int]) -> FixedSizeImages:
        split = Split(self.split.root, self.split.classes, take(self.split.samples, indices))
        return FixedSizeImages(split, self.size, self.names, self.small)

    def with_small(self, small: str, fixed: str = "") -> FixedSizeImages:
        return FixedSizeImages(self.split, self.size, self.names, small)


class SkippedFiles:
    """Undecodable files seen in the main process: each warned about once per run, and counted until the
    count is taken (``end_epoch``: evaluation takes it once an epoch, training after every batch)."""

    def __init__(self, dataset: ImageSet, stream=None) -> None:
        self.dataset, self.stream = dataset, stream
        self.reasons: dict[int, str] = {}
        self.this_epoch = 0

    def keep(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, errors: list[str]):
        """Drop a batch's undecodable samples (warning about new ones); return (images, labels) left."""
        bad = labels < 0
        if not bad.any():
            return images, labels
        for i in torch.nonzero(bad).flatten().tolist():
            index = int(indices[i])
            if index not in self.reasons:
                self.reasons[index] = errors[i]
                self._warn(printable(f"warning: skipping unreadable image {self.dataset.path(index)}: {errors[i]}"))
        self.this_epoch += int(bad.sum())
        if isinstance(images, list):   # dense evaluation's images: each its own size, one list per sample
            return [image for image, b in zip(images, bad.tolist()) if not b], labels[~bad]
        return images[~bad], labels[~bad]

    def end_epoch(self) -> int:
        """How many samples were skipped since the last call."""
        n, self.this_epoch = self.this_epoch, 0
        return n

    def _warn(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=self.stream or sys.stderr)
