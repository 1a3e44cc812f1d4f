"""ImageNet as it is downloaded, read where it lies: the official archives, Kaggle's layout, extracted folders.

    DATA/ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz    "imagenet-archives"
    DATA/ILSVRC/Data/CLS-LOC/{train/<wnid>/*, val/*}, DATA/LOC_val_solution.csv              "imagenet-extracted"
    DATA/{train/<wnid>/*, val/*} with the devkit (tar.gz or folder) or LOC_val_solution.csv
        in DATA or up to 3 folders above it (Kaggle's CLS-LOC folder is one of these)

Nothing is extracted: archive members are read in place (data/tars.py). Class i is the i-th sorted
WordNet id, torchvision's and Caffe's order, so that imported weights predict the right classes. The
devkit's ground truth numbers classes by ILSVRC2012_ID, another order; meta.mat maps each to its WordNet
id. The classes are train's (for val alone, the label files'); val's images are sorted by class, then
name, as in class folders.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.data.class_names import read_pairs
from alexnet.data.folders import IMAGE_EXTENSIONS, FixedSizeImages, discover, image_files, warn_unreadable
from alexnet.data.imageset import SPLITS, DataSource, Split
from alexnet.data.tars import MemberSamples, index_tar
from alexnet.errors import UserError, printable

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12"                        # .tar.gz, or the folder it extracts to
META, GROUND_TRUTH = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"
SOLUTION, MAPPING = "LOC_val_solution.csv", "LOC_synset_mapping.txt"
KAGGLE = Path("ILSVRC", "Data", "CLS-LOC")
PARENTS = 3                                             # how far above the images label files are looked for
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


def is_archives(path: Path) -> bool:
    """A folder with ImageNet's train or val archive, or that archive itself."""
    return (path / TRAIN_TAR).is_file() or (path / VAL_TAR).is_file() or _is_archive(path)


def is_extracted(path: Path) -> bool:
    """Kaggle's download, or a flat val/ of images (class folders make it plain image folders)."""
    return (path / KAGGLE).is_dir() or _flat_images(path / "val")


def open_archives(path: Path, splits: tuple[str, ...] = SPLITS) -> DataSource:
    path = path.parent if _is_archive(path) else path
    labels = LabelFiles.near(path)
    for split, name in (("train", TRAIN_TAR), ("val", VAL_TAR)):
        if split in splits and not (path / name).is_file():
            raise UserError(f"{path} has no {name} (ImageNet's archives: {TRAIN_TAR}, {VAL_TAR} and {DEVKIT}.tar.gz)")
    sets, classes = {}, None
    if "train" in splits:
        members = index_tar(path / TRAIN_TAR, keep=_is_image, nested=True, on_empty=_empty_class(path / TRAIN_TAR))
        # A member is <wnid>.tar/<file>; loose files at the top have no class. The class is the class tar's
        # own name, not the folder <file> lies in: a tar re-packed with `tar -C <wnid> -cf <wnid>.tar .` names
        # its members ./<file>, and every class would be "." (one class, or no class the label files list).
        by_class = defaultdict(list)
        for i, name in enumerate(members.names):
            inner, nested, _ = name.partition(".tar/")
            if nested:
                by_class[inner.rpartition("/")[2]].append(i)
        if not by_class:
            raise UserError(f"{path / TRAIN_TAR} holds no <wnid>.tar of images")
        classes = sorted(by_class)
        labels.check_train(classes, path / TRAIN_TAR, ".tar")
        rows = [i for c in classes for i in sorted(by_class[c], key=members.names.__getitem__)]
        targets = [label for label, c in enumerate(classes) for _ in by_class[c]]
        sets["train"] = Split(path / TRAIN_TAR, classes, MemberSamples(members.take(rows), targets))
    if "val" in splits:
        members = index_tar(path / VAL_TAR, keep=_is_image)
        classes = classes or labels.classes()
        # Plain string splitting: a PurePosixPath each would intern every part, and Python's table of
        # interned strings never shrinks again.
        wnids = labels.val_wnids([n.rpartition("/")[2] for n in members.names], path / VAL_TAR, classes)
        rows, targets = _by_class(members.names, wnids, classes)
        sets["val"] = Split(path / VAL_TAR, classes, MemberSamples(members.take(rows), targets))
    return _source(path, "imagenet-archives", classes, labels, sets)


def open_extracted(path: Path, splits: tuple[str, ...] = SPLITS) -> DataSource:
    root = path / KAGGLE if (path / KAGGLE).is_dir() else path
    labels = LabelFiles.near(root)
    sets, classes = {}, None
    if "train" in splits:
        sets["train"] = discover(root, ("train",)).splits["train"]   # class folders, as ever
        classes = sets["train"].classes
        labels.check_train(classes, root / "train", "/")
    if "val" in splits:
        if not (root / "val").is_dir():
            raise UserError(f"{root} has no val/ folder (expected {root}/val/<images>)")
        unreadable: list[tuple[Path, str]] = []
        files = image_files(root / "val", unreadable=unreadable)
        if unreadable and unreadable[0][0] == root / "val":
            raise UserError(printable(f"cannot read {root / 'val'}: {unreadable[0][1]}"))
        warn_unreadable(unreadable)
        if not files:
            raise UserError(f"{root / 'val'} has no images")
        classes = classes or labels.classes()
        wnids = labels.val_wnids([f.name for f in files], root / "val", classes)
        rows, targets = _by_class([f.name for f in files], wnids, classes)
        sets["val"] = Split(root / "val", classes, [(files[i], label) for i, label in zip(rows, targets)])
    return _source(root, "imagenet-extracted", classes, labels, sets)


def _empty_class(archive: Path):
    def refuse(name: str, links: list[tuple[str, str, str]]) -> None:
        # Left out, it would have given every later class another label: one line, as an empty class folder.
        if links:   # not a download cut short: links in place of images, which are left out (tars.index_tar)
            kinds = {kind for _, kind, _ in links}
            what = f"{next(iter(kinds))} link" if len(kinds) == 1 else "link"
            n, more = len(links), f" and {len(links) - 3:,} more" if len(links) > 3 else ""
            shown = ", ".join(f"{link} -> {target}" for link, _, target in links[:3])
            raise UserError(printable(f"{archive}/{name} holds no image, only {n:,} {what}{'s' * (n != 1)} "
                                      f"({shown}{more}), left out as links are: re-pack {name} with the images "
                                      f"they lead to in their place, or remove it to train without that class"))
        raise UserError(f"{archive}/{name} holds no image: a class of ImageNet's training set is empty (a "
                        f"damaged download?); download it again, or remove {name} to train without that class")
    return refuse


def _source(root: Path, kind: str, classes: list[str], labels: LabelFiles, splits: dict[str, Split]) -> DataSource:
    names = labels.names(classes)
    sets = {name: FixedSizeImages(split, names=names) for name, split in splits.items()}
    return DataSource(root, kind, classes, names, sets)


def _by_class(names: list[str], wnids: list[str], classes: list[str]) -> tuple[list[int], list[int]]:
    """Rows in class order, then name order (as class folders list them), and their labels."""
    index = {c: i for i, c in enumerate(classes)}
    rows = sorted(range(len(names)), key=lambda i: (index[wnids[i]], names[i]))
    return rows, [index[wnids[i]] for i in rows]


@dataclass
class LabelFiles:
    """Where val's labels and the readable names come from: the devkit, else Kaggle's csv and mapping."""
    devkit: Path | None = None          # ILSVRC2012_devkit_t12.tar.gz or the ILSVRC2012_devkit_t12 folder
    solution: Path | None = None        # LOC_val_solution.csv
    mapping: Path | None = None         # LOC_synset_mapping.txt
    _meta: tuple[dict[int, str], dict[str, str]] | None = field(default=None, repr=False)

    @classmethod
    def near(cls, folder: Path) -> LabelFiles:
        """The nearest of each, in ``folder`` or up to PARENTS folders above it."""
        places = [folder, *folder.resolve().parents[:PARENTS]]

        def nearest(*names: str) -> Path | None:
            return next((place / name for place in places for name in names if (place / name).exists()), None)

        return cls(nearest(f"{DEVKIT}.tar.gz", DEVKIT), nearest(SOLUTION), nearest(MAPPING))

    def meta(self) -> tuple[dict[int, str], dict[str, str]]:
        """The devkit's meta.mat: ILSVRC2012_ID -> WordNet id, and WordNet id -> words, for the 1,000 classes."""
        if self._meta is None:
            self._meta = read_meta(*_devkit_file(self.devkit, META))
        return self._meta

    def mapping_names(self) -> dict[str, str]:
        """LOC_synset_mapping.txt: WordNet id -> words ("n01440764 tench, Tinca tinca" per line)."""
        return {wnid: words or wnid for wnid, words in read_pairs(self.mapping)}

    def classes(self) -> list[str]:
        """The classes when there is no train split: every class the label files know."""
        if self.devkit:
            return sorted(self.meta()[1])
        if self.mapping:
            return sorted(self.mapping_names())
        if self.solution:
            return sorted(set(self._solution().values()))
        raise self._missing()

    def names(self, classes: list[str]) -> list[str]:
        words = self.meta()[1] if self.devkit else self.mapping_names() if self.mapping else {}
        return [words.get(c, c) for c in classes]

    def val_wnids(self, files: list[str], where: Path, classes: list[str]) -> list[str]:
        """The WordNet id of each val image of ``where`` (by file name): each must have one, among ``classes``."""
        if self.devkit:
            label_of, source = self._devkit_labels(files, where)
        elif self.solution:
            label_of, source = self._solution_labels(files), self.solution
        else:
            raise self._missing()
        for f in files:
            if f not in label_of:
                raise UserError(f"{where}/{f} has no label in {source}")
            if label_of[f] not in classes:
                raise UserError(f"{where}/{f} is labelled {label_of[f]} in {source}, which is not among the "
                                f"{len(classes)} classes ({classes[0]}, ...)")
        return [label_of[f] for f in files]

    def _devkit_labels(self, files: list[str], where: Path) -> tuple[dict[str, str], str]:
        """Line n of the ground truth is the ILSVRC2012_ID of ILSVRC2012_val_<n>; meta.mat maps it to a WordNet id."""
        data, source = _devkit_file(self.devkit, GROUND_TRUTH)
        try:
            truth = [int(line) for line in data.decode().split()]
        except ValueError:
            raise UserError(f"{source} is not one ILSVRC2012_ID per line") from None
        # Fewer images than labels is a part of val (kept to save space, or a quick check), as with Kaggle's
        # csv: each image present is labelled by its number; one beyond the labels has none (val_wnids).
        ids = self.meta()[0]
        label_of = {}
        for f in files:
            number = VAL_NUMBER.match(f)
            if number and 0 < int(number[1]) <= len(truth):
                n = int(number[1])
                if truth[n - 1] not in ids:
                    raise UserError(f"{source} line {n}: ILSVRC2012_ID {truth[n - 1]} is no class of meta.mat")
                label_of[f] = ids[truth[n - 1]]
        return label_of, source

    def _solution_labels(self, files: list[str]) -> dict[str, str]:
        by_image = self._solution()
        if self.mapping:
            known = self.mapping_names()
            image, wnid = next(((i, w) for i, w in by_image.items() if w not in known), (None, None))
            if image:
                raise UserError(f"{self.solution}: {image} is labelled {wnid}, which {self.mapping} does not list")
        stems = {f: f.rpartition(".")[0] for f in files}
        return {f: by_image[stem] for f, stem in stems.items() if stem in by_image}

    def _solution(self) -> dict[str, str]:
        """LOC_val_solution.csv: ImageId -> the first WordNet id of its PredictionString (its first box's)."""
        with open(self.solution, newline="", encoding="utf-8-sig") as f:   # -sig: a BOM from a spreadsheet
            rows = csv.DictReader(f)
            if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or ()):
                raise UserError(f"{self.solution} has no ImageId,PredictionString header")
            found = {}
            for row in rows:
                words = (row["PredictionString"] or "").split()
                if not words:
                    raise UserError(f"{self.solution} line {rows.line_num}: no label for {row['ImageId']}")
                found[row["ImageId"]] = words[0]
            return found

    def check_train(self, classes: list[str], where: Path, suffix: str) -> None:
        """A training class that the devkit or Kaggle's mapping does not list (where either is there) is refused:
        no ImageNet class, it would shift the labels of the classes after it."""
        if not (self.devkit or self.mapping):
            return
        known = self.meta()[1] if self.devkit else self.mapping_names()
        unknown = [c for c in classes if c not in known]
        if unknown:
            listed = self.devkit / META if self.devkit else self.mapping
            raise UserError(f"{where}/{unknown[0]}{suffix} is no class that {listed} lists"
                            f"{f' ({len(unknown)} such)' if len(unknown) > 1 else ''}: ImageNet's classes are "
                            f"WordNet ids such as {next(iter(sorted(known)), 'n01440764')}; remove it, or train on "
                            f"class folders of your own")

    def _missing(self) -> UserError:
        return UserError(f"found no labels for val: put {DEVKIT}.tar.gz (ImageNet's devkit) or {SOLUTION} and "
                         f"{MAPPING} (Kaggle's) beside the images or up to {PARENTS} folders above them")


def read_meta(data: bytes, where: str) -> tuple[dict[int, str], dict[str, str]]:
    """meta.mat's ``synsets``: the entries without children are the 1,000 classes (the rest, WordNet's
    ancestors of them); returns ILSVRC2012_ID -> WordNet id and WordNet id -> words."""
    import numpy as np
    import scipy.io

    try:
        synsets = np.atleast_1d(scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"])
        leaves = synsets[np.asarray(synsets["num_children"], dtype=np.int64) == 0]
        ids = [int(i) for i in leaves["ILSVRC2012_ID"]]
        wnids, words = [str(w) for w in leaves["WNID"]], [str(w) for w in leaves["words"]]
    except Exception as e:   # scipy raises ValueError, TypeError, KeyError, ... on a file that is not one
        raise UserError(f"{where} is not ImageNet's meta.mat ({type(e).__name__}: {e})") from None
    return dict(zip(ids, wnids)), dict(zip(wnids, words))


def _devkit_file(devkit: Path, name: str) -> tuple[bytes, str]:
    """``name`` (data/...) from the devkit, a .tar.gz (read in memory: a few MB) or the folder it extracts
    to, and where it was found, for messages."""
    if devkit.is_dir():
        path = devkit / name
        if not path.is_file():
            raise UserError(f"{devkit} has no {name}")
        return path.read_bytes(), str(path)
    try:
        with tarfile.open(devkit, "r:gz") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith("/" + name):
                    return tar.extractfile(info).read(), f"{devkit}/{info.name}"
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{devkit} is truncated or not a .tar.gz ({e})") from None
    raise UserError(f"{devkit} has no {DEVKIT}/{name}")


def _is_archive(path: Path) -> bool:
    return path.name in (TRAIN_TAR, VAL_TAR) and path.is_file()


def _is_image(name: str) -> bool:
    base = name.rpartition("/")[2]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _flat_images(folder: Path) -> bool:
    """``folder`` holds image files and no folders (a class-folder val/ holds folders)."""
    try:
        with os.scandir(folder) as entries:
            images = False
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    return False
                images = images or _is_image(entry.name)
            return images
    except OSError:
        return False

