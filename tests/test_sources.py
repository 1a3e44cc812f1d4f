"""The one door for data (data/sources.py): every kind of data gives the same samples through it.

Each kind in sources.KINDS needs a builder here that writes the test set in that kind's form; a kind
added without one fails the first test. Every kind is then held to an independent listing of the
files (sorted class folders, sorted file names) and to the pixels the decoder gives each file.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import sources
from alexnet.data.decode import load_fixed
from alexnet.data.loader import eval_loader
from alexnet.data.prepare import prepare
from alexnet.errors import UserError
from conftest import write_imagenet_archives, write_kaggle

CLASSES = ("bee", "ant", "cow")           # written unsorted: labels follow the sorted folder names


def write_set(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for split, count in (("train", 4), ("val", 2)):
        for c, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
                pixels = (rng.random((h, w, 3)) * 90 + 50 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{count - i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "classes.txt").write_text("ant an ant\nbee a bee\ncow a cow\n")
    return root


def prepared(data: Path, tmp: Path):
    prepare(data, tmp / "prep", workers=0, shard_size=5, progress=False)
    return tmp / "prep", {}


# Each writes the set in its kind's form: (the path to open, each class-folder file -> the sample path
# that kind names it by, where that differs).
BUILDERS = {
    "folders": lambda data, tmp: (data, {}),
    "prepared": prepared,
    "imagenet-archives": lambda data, tmp: (tmp / "archives", write_imagenet_archives(data, tmp / "archives")),
    "imagenet-extracted": lambda data, tmp: (tmp / "kaggle", write_kaggle(data, tmp / "kaggle")),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("sources") / "data")


@pytest.fixture(scope="module", params=[kind.name for kind in sources.KINDS])
def built(request, data, tmp_path_factory):
    return request.param, BUILDERS[request.param](data, tmp_path_factory.mktemp(request.param))


def listing(data: Path, split: str) -> list[tuple[Path, int]]:
    classes = sorted(p.name for p in (data / split).iterdir())
    return [(data / split / cls / name, label) for label, cls in enumerate(classes)
            for name in sorted(p.name for p in (data / split / cls).iterdir())]


def test_every_kind_of_data_has_a_builder_here():
    assert {kind.name for kind in sources.KINDS} == set(BUILDERS)


def test_every_kind_gives_the_files_classes_names_and_pixels(built, data):
    kind, (path, where) = built
    source = sources.open_data(path)
    assert source.kind == kind == sources.kind_of(path).name
    assert source.classes == ["ant", "bee", "cow"] and source.names == ["an ant", "a bee", "a cow"]
    for split in ("train", "val"):
        images, expected = source.splits[split], listing(data, split)
        assert len(images) == len(expected) and images.classes == source.classes
        assert [(images.path(i), images.split.samples[i][1]) for i in range(len(images))] == \
            [(where.get(file, file), label) for file, label in expected]
        batch, labels, indices, errors = images.__getitems__([len(images) - 1, 0, 2])
        assert batch.dtype == torch.uint8 and batch.shape == (3, 256, 256, 3)
        assert labels.tolist() == [expected[-1][1], expected[0][1], expected[2][1]]
        assert indices.tolist() == [len(images) - 1, 0, 2] and errors == ["", "", ""]
        for row, i in zip(batch, (len(images) - 1, 0, 2)):
            assert torch.equal(row, load_fixed(expected[i][0]))


def test_loaders_read_every_kind_the_same_way(built):
    _, (path, _) = built
    val = sources.open_split(path, "val")
    seen = [b for b in eval_loader(val, 4, rank=0, world=1, workers=1, pin_memory=False)]
    images = torch.cat([b[0] for b in seen])
    assert torch.equal(images, val.__getitems__(list(range(len(val))))[0])
    assert torch.cat([b[2] for b in seen]).tolist() == list(range(len(val)))


def test_a_split_labelled_by_a_networks_classes(built, data):
    _, (path, _) = built
    network = ["cow", "dog", "ant", "bee"]          # more classes than the data, in another order
    val = sources.open_split(path, "val", classes=network)
    assert val.classes == network
    assert [label for _, label in val.split.samples] == [network.index(p.parent.name) for p, _ in listing(data, "val")]
    assert val.__getitems__([0])[1].tolist() == [network.index("ant")]
    assert val.names == ["a cow", "dog", "an ant", "a bee"]
    # Named by the path given (a prepared store's, not the folder it was prepared from).
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}\S* (\(prepared from .*\) )?has class folders the "
                                        "network has no output for: bee"):
        sources.open_split(path, "val", classes=["ant", "cow"])


def test_a_subset_keeps_its_samples_and_pixels(built):
    _, (path, _) = built
    train = sources.open_split(path, "train")
    picked = train.subset([7, 2])
    assert len(picked) == 2 and [picked.path(0), picked.path(1)] == [train.path(7), train.path(2)]
    assert torch.equal(picked.__getitems__([0, 1])[0], train.__getitems__([7, 2])[0])
    assert picked.names == train.names


def test_statistics_ahead_of_time_only_where_they_were_computed(built):
    kind, (path, _) = built
    train = sources.open_split(path, "train")
    assert (train.stats_file is not None) == (kind == "prepared")
    assert train.decodes == (kind != "prepared")


def test_a_path_that_is_no_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        sources.open_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/ folder"):
        sources.open_data(tmp_path / "empty")


def test_a_split_is_a_name_the_kind_of_data_has(built):
    _, (path, _) = built
    for split in ("", ".", "..", "train/ant"):
        with pytest.raises(UserError, match="is not a split"):
            sources.open_split(path, split)
    if sources.kind_of(path).splits is not None:   # a kind with fixed splits names them
        with pytest.raises(UserError, match="has no split 'Val': its splits are train and val"):
            sources.open_split(path, "Val")
