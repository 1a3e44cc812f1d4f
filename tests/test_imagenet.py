"""ImageNet as downloaded (data/imagenet.py, data/tars.py): each layout gives what its class folders give.

A small ImageNet-shaped set (12 made-up WordNet ids, a few JPEGs each) is written as class folders, the
reference, and then in each of ImageNet's layouts from the same files. The devkit numbers the classes in
an order that is not sorted-WordNet-id order, with WordNet ancestors among the entries of meta.mat: the
traps that would mislabel val.
"""

import gzip
import io
import json
import pickle
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.decode import UndecodableImage, open_rgb
from alexnet.data.prepare import prepare
from alexnet.data.prepared import read_meta
from alexnet.data.sources import kind_of, open_data, open_split
from alexnet.data.tars import Archive, index_tar, member_path
from alexnet.errors import UserError
from conftest import deny, imagenet_val_names, run_cli, tar_of, write_devkit, write_imagenet_archives, write_kaggle

RNG = np.random.default_rng(7)
WNIDS = [f"n{k:08d}" for k in sorted(RNG.choice(10**8, 12, replace=False).tolist())]
IDS = {w: i + 1 for i, w in enumerate(RNG.permutation(WNIDS).tolist())}   # ILSVRC2012_ID: not sorted order
VAL_PER_CLASS = [1 + (k % 3 == 0) for k in range(len(WNIDS))]


def write_reference(root: Path) -> Path:
    """root/{train,val}/<wnid>/ of small JPEGs; val's are named ILSVRC2012_val_<n>, n shuffled over classes."""
    numbers = iter(RNG.permutation(sum(VAL_PER_CLASS)).tolist())
    for k, wnid in enumerate(WNIDS):
        for split, count in (("train", 3), ("val", VAL_PER_CLASS[k])):
            (root / split / wnid).mkdir(parents=True)
            for j in range(count):
                name = f"{wnid}_{j}.JPEG" if split == "train" else f"ILSVRC2012_val_{next(numbers) + 1:08d}.JPEG"
                pixels = (RNG.random((int(RNG.integers(30, 50)), int(RNG.integers(30, 50)), 3)) * 200 + k * 4)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / wnid / name, quality=90)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {k}, a {w}\n" for k, w in enumerate(WNIDS)))
    return root


def write_extracted(reference: Path, images: Path) -> None:
    """images/train/<wnid>/ as they are, images/val/ flat (as the val tar extracts)."""
    shutil.copytree(reference / "train", images / "train")
    (images / "val").mkdir()
    for f, name in imagenet_val_names(reference).items():
        shutil.copyfile(f, images / "val" / name)


def layout(name: str, reference: Path, out: Path) -> Path:
    """The reference set in layout ``name``; returns the path a user gives as --data."""
    if name == "archives":
        write_imagenet_archives(reference, out, ids=IDS)
        return out
    if name in ("kaggle", "kaggle-cls-loc"):
        write_kaggle(reference, out)
        return out if name == "kaggle" else out / "ILSVRC" / "Data" / "CLS-LOC"
    write_extracted(reference, out / "imagenet")
    if name == "extracted-devkit-tar":
        write_devkit(reference, out / "imagenet", ids=IDS)
    elif name == "extracted-devkit-folder":   # two folders above the images
        write_devkit(reference, out.parent, ids=IDS, extracted=True)
    else:
        write_kaggle(reference, out / "kaggle")
        shutil.move(out / "kaggle" / "LOC_val_solution.csv", out)
        shutil.move(out / "kaggle" / "LOC_synset_mapping.txt", out)
    return out / "imagenet"


LAYOUTS = ["archives", "kaggle", "kaggle-cls-loc", "extracted-devkit-tar", "extracted-devkit-folder", "extracted-csv"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return write_reference(tmp_path_factory.mktemp("imagenet") / "folders")


@pytest.fixture(scope="module")
def prepared_reference(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prep"
    prepare(reference, out, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def archives(reference, tmp_path_factory):
    return layout("archives", reference, tmp_path_factory.mktemp("archives") / "ILSVRC2012")


def everything(images) -> tuple[torch.Tensor, list[int]]:
    pixels, labels, _, errors = images.__getitems__(list(range(len(images))))
    assert errors == [""] * len(images)
    return pixels, labels.tolist()


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_gives_the_classes_names_labels_and_pixels_of_its_class_folders(name, reference, tmp_path):
    path = layout(name, reference, tmp_path / "d" / "e" / name)
    source, expected = open_data(path), open_data(reference)
    assert source.kind == kind_of(path).name == ("imagenet-archives" if name == "archives" else "imagenet-extracted")
    assert expected.kind == "folders"
    assert source.classes == expected.classes == WNIDS
    assert source.names == expected.names == [f"thing {k}, a {w}" for k, w in enumerate(WNIDS)]
    for split in ("train", "val"):
        got, want = source.splits[split], expected.splits[split]
        assert [p.name for p, _ in got.split.samples] == [p.name for p, _ in want.split.samples]
        assert got.names == want.names and got.classes == want.classes
        (got_pixels, got_labels), (want_pixels, want_labels) = everything(got), everything(want)
        assert got_labels == want_labels and torch.equal(got_pixels, want_pixels)


def test_val_labels_are_sorted_wordnet_ids_not_the_devkits_numbers(archives, reference):
    assert sorted(WNIDS, key=IDS.get) != WNIDS   # the trap is set
    val = open_data(archives, ("val",)).splits["val"]
    # Independently: each val file's class folder in the reference, as an index among the sorted ids.
    wnid_of = {name: f.parent.name for f, name in imagenet_val_names(reference).items()}
    labels = [label for _, label in val.split.samples]
    assert labels == [sorted(WNIDS).index(wnid_of[p.name]) for p, _ in val.split.samples] == sorted(labels)
    assert val.__getitems__([0, len(val) - 1])[1].tolist() == [0, len(WNIDS) - 1]


def test_members_are_named_by_virtual_paths_and_read_in_place(archives):
    source = open_data(archives)
    train, val = source.splits["train"], source.splits["val"]
    first = train.path(0)
    assert str(first) == f"{archives}/ILSVRC2012_img_train.tar/{WNIDS[0]}.tar/{WNIDS[0]}_0.JPEG"
    assert str(val.path(0)).startswith(f"{archives}/ILSVRC2012_img_val.tar/ILSVRC2012_val_")
    assert first.read_bytes()[:2] == b"\xff\xd8" and first.stat().st_size == len(first.read_bytes())
    assert not list(archives.rglob("*.JPEG"))   # nothing was extracted
    assert open_data(archives / "ILSVRC2012_img_train.tar", ("train",)).root == archives   # the archive named
    # Spawned DataLoader workers get the set pickled: the archive is reopened there, not copied.
    again = pickle.loads(pickle.dumps(train))
    assert torch.equal(again.__getitems__([0, 5])[0], train.__getitems__([0, 5])[0])
    assert pickle.loads(pickle.dumps(first)).read_bytes() == first.read_bytes()


@pytest.mark.parametrize("name,workers", [("archives", 2), ("kaggle", 0), ("extracted-devkit-tar", 0)])
def test_prepare_of_a_layout_stores_what_preparing_its_class_folders_stores(name, workers, reference,
                                                                            prepared_reference, tmp_path):
    path = layout(name, reference, tmp_path / name)
    prepare(path, tmp_path / "prep", workers=workers, progress=False)
    got, want = open_data(tmp_path / "prep"), open_data(prepared_reference)
    assert (got.classes, got.names) == (want.classes, want.names)
    for split in ("train", "val"):
        (got_pixels, got_labels), (want_pixels, want_labels) = map(everything, (got.splits[split], want.splits[split]))
        assert got_labels == want_labels and torch.equal(got_pixels, want_pixels)
    assert read_meta(tmp_path / "prep")["splits"]["train"]["skipped"] == 0
    # The source files a prepared image came from (skip reports, pictures) are those of the layout.
    source = open_data(path)
    for split in ("train", "val"):
        assert [got.splits[split].path(i) for i in (0, 5)] == [source.splits[split].path(i) for i in (0, 5)]


def test_dense_views_of_a_store_prepared_from_the_archives_read_the_archives(archives, reference, tmp_path):
    # Dense views read whole source images: a store's paths into a tar ("ILSVRC2012_img_val.tar/x.JPEG")
    # are no files, and evaluate --views dense refused every store made from ImageNet's archives.
    from alexnet.dense import DenseImages

    copy = shutil.copytree(archives, tmp_path / "ILSVRC2012")
    prepare(copy, tmp_path / "prep", workers=0, progress=False)
    store = open_split(tmp_path / "prep", "val", classes=WNIDS)
    got, want = DenseImages(store, (256, 288), 227), DenseImages(open_split(reference, "val", classes=WNIDS),
                                                                 (256, 288), 227)
    assert len(got) == len(want) == len(store)
    for i in range(len(got)):
        (got_views, got_label, _, error), (want_views, want_label, _, _) = got[i], want[i]
        assert error == "" and got_label == want_label and got.path(i).name == want.path(i).name
        assert all(torch.equal(a, b) for a, b in zip(got_views, want_views))
    # The archive holds fewer images since: one line naming the first it lacks.
    val = copy / "ILSVRC2012_img_val.tar"
    with tarfile.open(val) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(val, "w") as tar:
        for m, data in members[1:]:
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(UserError, match=f"{copy} no longer holds {members[0][0].name}, which .*prep was prepared"):
        DenseImages(open_split(tmp_path / "prep", "val", classes=WNIDS), (256,), 227)


def test_an_empty_class_tar_is_refused_not_left_out(reference, tmp_path):
    # Left out, it gave every later class the label of the one before it, and prepare said nothing (or, with
    # val images of that class, blamed val).
    folders = shutil.copytree(reference, tmp_path / "folders")
    for f in (folders / "train" / WNIDS[4]).iterdir():
        f.unlink()
    write_imagenet_archives(folders, tmp_path / "a", ids=IDS)
    with pytest.raises(UserError, match=rf"ILSVRC2012_img_train.tar/{WNIDS[4]}.tar holds no image: a class of "
                                        r"ImageNet's training set is empty"):
        open_data(tmp_path / "a")


@pytest.mark.parametrize("name", ["archives", "kaggle", "extracted-devkit-folder"])
def test_a_training_class_the_label_files_do_not_list_is_refused(name, reference, tmp_path):
    path = layout(name, reference, tmp_path / name)
    if name == "archives":
        train = path / "ILSVRC2012_img_train.tar"
        with tarfile.open(train) as tar:
            inner = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        train.write_bytes(tar_of(inner | {"n09999999.tar": inner[f"{WNIDS[0]}.tar"]}))
    else:
        train = next(p for p in path.rglob("train") if p.is_dir())
        shutil.copytree(train / WNIDS[0], train / "n09999999")
    with pytest.raises(UserError, match=r"n09999999(\.tar|/) is no class that .*(meta\.mat|LOC_synset_mapping\.txt) "
                                        r"lists: ImageNet's classes are WordNet ids"):
        open_data(path)


def test_one_split_needs_only_its_own_archive(reference, tmp_path):
    write_imagenet_archives(reference, tmp_path / "a", ids=IDS)
    (tmp_path / "a" / "ILSVRC2012_img_train.tar").unlink()
    val = open_data(tmp_path / "a", ("val",))
    assert val.classes == WNIDS and len(val.splits["val"]) == sum(VAL_PER_CLASS)   # meta.mat's leaves only
    with pytest.raises(UserError, match="has no ILSVRC2012_img_train.tar"):
        open_data(tmp_path / "a")
    write_imagenet_archives(reference, tmp_path / "b", ids=IDS)
    (tmp_path / "b" / "ILSVRC2012_img_val.tar").unlink()
    (tmp_path / "b" / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    train = open_data(tmp_path / "b", ("train",))
    assert train.classes == WNIDS and train.names == WNIDS and len(train.splits["train"]) == 3 * len(WNIDS)


@pytest.mark.parametrize("folder", ["./", "images/"])
def test_a_class_is_its_tars_name_whatever_folders_the_members_lie_in(folder, reference, tmp_path):
    # `tar -C <wnid> -cf <wnid>.tar .` names the members ./<file>: each class was ".", all labels 0, or no
    # class that LOC_synset_mapping.txt lists.
    inner = {}
    for wnid in WNIDS[:3]:
        images = sorted((reference / "train" / wnid).iterdir())
        files = {folder: None} | {folder + f.name: f.read_bytes() for f in images}
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type = tarfile.DIRTYPE
                else:
                    info.size = len(data)
                tar.addfile(info, None if data is None else io.BytesIO(data))
        inner[f"{wnid}.tar"] = out.getvalue()
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(tar_of(inner))
    shutil.copyfile(reference / "LOC_synset_mapping.txt", tmp_path / "LOC_synset_mapping.txt")
    train = open_data(tmp_path, ("train",))
    samples = train.splits["train"].split.samples
    assert train.classes == WNIDS[:3] and [label for _, label in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(f"ILSVRC2012_img_train.tar/{WNIDS[label]}.tar/" in str(p) for p, label in samples)


def test_class_folders_and_prepared_stores_are_not_taken_for_imagenet(reference, prepared_reference, tmp_path):
    assert kind_of(reference).name == "folders"
    assert kind_of(prepared_reference).name == "prepared"
    write_extracted(reference, tmp_path)   # flat val/ without labels anywhere near: ImageNet, and says what it lacks
    with pytest.raises(UserError, match="found no labels for val: put ILSVRC2012_devkit_t12.tar.gz"):
        open_data(tmp_path)
    assert len(open_data(tmp_path, ("train",)).splits["train"]) == 3 * len(WNIDS)


# Bad input: one line that names the file.

def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def cut(path: Path, at: int) -> None:
    path.write_bytes(path.read_bytes()[:at])


def last_data_end(path: Path) -> int:
    last = tar_members(path)[-1]
    return last.offset_data + -(-last.size // 512) * 512


@pytest.mark.parametrize("where", ["inside a header", "inside a member's data", "after the last member",
                                   "at the first byte"])
@pytest.mark.parametrize("archive", ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"])
def test_a_truncated_archive_is_one_error_naming_it(archive, where, archives, tmp_path):
    shutil.copytree(archives, tmp_path, dirs_exist_ok=True)
    path = tmp_path / archive
    last = tar_members(path)[-1]
    cut(path, {"inside a header": last.offset + 100, "inside a member's data": last.offset_data + 100,
               "after the last member": last_data_end(path), "at the first byte": 0}[where])
    with pytest.raises(UserError, match=f"{path}.* is truncated"):
        open_data(tmp_path)


@pytest.mark.parametrize("where", ["inside a member's data", "after the last member"])
def test_a_truncated_tar_inside_the_train_archive_is_named(where, archives, tmp_path):
    shutil.copytree(archives, tmp_path, dirs_exist_ok=True)
    outer = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(outer) as tar:
        inner = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    bad = f"{WNIDS[4]}.tar"
    last = tarfile.open(fileobj=io.BytesIO(inner[bad])).getmembers()[-1]
    keep = last.offset_data + (100 if where == "inside a member's data" else -(-last.size // 512) * 512)
    outer.write_bytes(tar_of(inner | {bad: inner[bad][:keep]}))   # the outer tar is whole
    with pytest.raises(UserError, match=f"{outer}/{bad} is truncated"):
        open_data(tmp_path)


def test_a_truncated_archive_is_one_line_and_exit_status_2_from_prepare(archives, tmp_path):
    shutil.copytree(archives, tmp_path / "data")
    cut(tmp_path / "data" / "ILSVRC2012_img_val.tar", 5000)
    result = run_cli("prepare", "--data", tmp_path / "data", "--out", tmp_path / "prep")
    assert result.returncode == 2 and "ILSVRC2012_img_val.tar is truncated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "prep").exists()


def test_a_file_that_is_no_tar_is_named(archives, tmp_path):
    shutil.copytree(archives, tmp_path, dirs_exist_ok=True)
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"<html>404 not found</html>" * 40)
    with pytest.raises(UserError, match="ILSVRC2012_img_val.tar is truncated or not a tar"):
        open_data(tmp_path)


def test_the_devkit_labels_every_val_image_by_its_number_and_a_part_of_val_too(reference, tmp_path):
    count = sum(VAL_PER_CLASS)
    write_imagenet_archives(reference, tmp_path, ids=IDS)
    write_devkit(reference, tmp_path, ids=IDS, truth=[IDS[WNIDS[0]]] * (count - 1))   # one label short
    last = f"ILSVRC2012_val_{count:08d}.JPEG"
    with pytest.raises(UserError, match=f"{last} has no label in .*ground_truth.txt"):
        open_data(tmp_path)
    # A part of val beside the whole devkit (the other images deleted to save space): those present keep
    # the labels of their class folders in the reference.
    images = layout("extracted-devkit-tar", reference, tmp_path / "part")
    wnid_of = {name: f.parent.name for f, name in imagenet_val_names(reference).items()}
    kept = sorted(wnid_of)[::3]
    for f in (images / "val").iterdir():
        if f.name not in kept:
            f.unlink()
    val = open_data(images, ("val",)).splits["val"]
    assert sorted(p.name for p, _ in val.split.samples) == kept
    assert [label for _, label in val.split.samples] == [WNIDS.index(wnid_of[p.name]) for p, _ in val.split.samples]
    write_devkit(reference, tmp_path, ids=IDS, truth=[1] * (count - 1) + [99])
    with pytest.raises(UserError, match=f"ground_truth.txt line {count}: ILSVRC2012_ID 99 is no class of meta.mat"):
        open_data(tmp_path)


def test_a_flat_val_that_cannot_be_read_is_said_so(reference, tmp_path, monkeypatch):
    # It was "val has no images". (An extracted val that cannot be listed is not known to be flat: it is read as
    # class folders, where a split that cannot be listed is said so too.)
    images = layout("kaggle-cls-loc", reference, tmp_path)
    deny(monkeypatch, images / "val")
    with pytest.raises(UserError, match=re.escape(f"cannot read {images / 'val'}: permission denied")):
        open_data(tmp_path, ("val",))


def test_a_devkit_without_ground_truth_is_named_when_val_is_asked_for(reference, tmp_path):
    write_imagenet_archives(reference, tmp_path, ids=IDS)
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit) as tar:
        kept = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if "ground_truth" not in m.name}
    devkit.write_bytes(gzip.compress(tar_of(kept)))
    with pytest.raises(UserError, match=f"{devkit} has no ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_gr"):
        open_data(tmp_path)
    assert open_data(tmp_path, ("train",)).names[0] == f"thing 0, a {WNIDS[0]}"   # names still come from it
    devkit.unlink()
    with pytest.raises(UserError, match="found no labels for val"):
        open_data(tmp_path)


def test_a_damaged_devkit_is_named(reference, tmp_path):
    write_imagenet_archives(reference, tmp_path, ids=IDS)
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    cut(devkit, devkit.stat().st_size // 2)
    with pytest.raises(UserError, match=f"{devkit} is truncated or not a .tar.gz"):
        open_data(tmp_path)
    devkit.unlink()
    write_devkit(reference, tmp_path, ids=IDS, extracted=True)
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really")
    with pytest.raises(UserError, match="data/meta.mat is not ImageNet's meta.mat"):
        open_data(tmp_path)


def test_a_val_image_without_a_label_is_named(reference, tmp_path):
    kaggle = layout("kaggle", reference, tmp_path / "kaggle")
    extra = kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000099.JPEG"
    shutil.copyfile(next((reference / "val").rglob("*.JPEG")), extra)
    with pytest.raises(UserError, match=f"{extra} has no label in .*LOC_val_solution.csv"):
        open_data(kaggle)
    # The devkit labels images by their number: one renamed out of its range has none (the count still agrees).
    shutil.copytree(layout("extracted-devkit-tar", reference, tmp_path / "ext"), tmp_path / "ext2")
    val = sorted((tmp_path / "ext2" / "val").iterdir())
    val[0].rename(val[0].with_name("ILSVRC2012_val_00000999.JPEG"))
    with pytest.raises(UserError, match="ILSVRC2012_val_00000999.JPEG has no label in .*ground_truth.txt"):
        open_data(tmp_path / "ext2")


def test_unknown_wordnet_ids_in_kaggles_csv_are_named(reference, tmp_path):
    kaggle = layout("kaggle", reference, tmp_path / "a")
    csv = kaggle / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    image = lines[1].split(",")[0]
    csv.write_text("\n".join([lines[0], f"{image},n99999999 1 2 3 4 "] + lines[2:]) + "\n")
    with pytest.raises(UserError, match=f"csv: {image} is labelled n99999999, which .*_mapping.txt does not list"):
        open_data(kaggle)
    # Listed in the mapping, but train has no such class.
    with (kaggle / "LOC_synset_mapping.txt").open("a") as f:
        f.write("n99999999 a class train lacks\n")
    with pytest.raises(UserError, match=f"{image}.JPEG is labelled n99999999 in .*which is not among the 12 classes"):
        open_data(kaggle)


def test_a_corrupt_jpeg_inside_the_train_archive_is_skipped_and_named_once(reference, tmp_path, capsys):
    shutil.copytree(reference, tmp_path / "folders")
    bad = tmp_path / "folders" / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:30])
    write_imagenet_archives(tmp_path / "folders", tmp_path / "archives", ids=IDS)
    train = open_data(tmp_path / "archives").splits["train"]
    _, labels, _, errors = train.__getitems__([7, 8])
    assert labels.tolist() == [-1, 2] and errors[0] and not errors[1]
    prepare(tmp_path / "archives", tmp_path / "prep", workers=0, progress=False)
    assert read_meta(tmp_path / "prep")["splits"]["train"] | {"crc32": None} == \
        {"images": 3 * len(WNIDS) - 1, "shards": 1, "skipped": 1, "crc32": None}
    shard = json.loads((tmp_path / "prep" / "train" / "00000.json").read_text())
    assert [file for file, _ in shard["skipped"]] == [f"{WNIDS[2]}.tar/{WNIDS[2]}_1.JPEG"]
    warned = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert len(warned) == 1 and f"ILSVRC2012_img_train.tar/{WNIDS[2]}.tar/{WNIDS[2]}_1.JPEG" in warned[0]


def test_a_member_path_is_a_plain_path_once_derived(archives):
    archive = Archive(archives / "ILSVRC2012_img_val.tar")
    member = tar_members(archive.path)[0]
    p = member_path(f"{archive.path}/{member.name}", archive, member.offset_data, member.size, int(member.mtime))
    assert p.stat().st_mtime_ns == int(member.mtime) * 10**9 and p.stat().st_size == member.size
    with pytest.raises(OSError):
        p.with_name("other.JPEG").stat()   # a path derived from it is looked up on disk, as any other
    with pytest.raises(ValueError, match="reading bytes only"):
        p.open("w")


@pytest.mark.parametrize("long_names", [False, True])
@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_tar_format_is_indexed_as_tarfile_lists_it(form, long_names, tmp_path):
    # Plain headers are read by a fast path; long names (a ustar prefix, GNU and pax records) and
    # folders must give what tarfile itself lists.
    files = {"a.JPEG": b"a" * 700, "g.JPEG": b""}
    if long_names:
        files[f"{'d' * 90}/{'e' * 60}.JPEG"] = b"e" * 10
        if form != tarfile.USTAR_FORMAT:   # no room for a name this long in a ustar header
            files["f" * 150 + ".JPEG"] = b"f" * 1025
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=form) as tar:
        folder = tarfile.TarInfo("d")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_234_567_890
            tar.addfile(info, io.BytesIO(data))
    members = index_tar(path, keep=lambda name: True)
    listed = [m for m in tar_members(path) if m.isfile()]
    assert members.names == [m.name for m in listed] == list(files)
    assert list(members.offsets) == [m.offset_data for m in listed]
    assert list(members.sizes) == [m.size for m in listed] and set(members.mtimes) == {1_234_567_890}
    assert [members.path(i).read_bytes() for i in range(len(members))] == list(files.values())


def sparse_tar(folder: Path, out: Path, form: str) -> Path:
    """``tar --sparse`` of the files of ``folder`` (by their names alone) into ``out``."""
    if shutil.which("tar") is None:
        pytest.skip("no tar here to make a sparse archive with")
    names = sorted(f.name for f in folder.iterdir())
    subprocess.run(["tar", "--sparse", f"--format={form}", "-cf", out, *names], cwd=folder, check=True)
    return out


@pytest.mark.parametrize("form", ["gnu", "pax"])
def test_a_sparse_member_reads_as_tar_extracts_it(form, reference, tmp_path):
    # A JPEG with a hole (a run of zeros that takes no disk) is stored as its data pieces alone: taken for
    # one run of its full size, the archive was "truncated" (prepare refused it) or a later member misread.
    wnid = WNIDS[0]
    folder = shutil.copytree(reference / "train" / wnid, tmp_path / wnid)
    holed = sorted(folder.iterdir())[1]
    with open(holed, "r+b") as f:
        f.seek(2**20, io.SEEK_END)
        f.write(b"end")
    inner = sparse_tar(folder, tmp_path / f"{wnid}.tar", form)
    if not any(m.sparse for m in tar_members(inner)):
        pytest.skip(f"{tmp_path} keeps no holes in files: tar stored {holed.name} whole")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ILSVRC2012_img_train.tar").write_bytes(tar_of({inner.name: inner.read_bytes()}))
    shutil.copyfile(reference / "LOC_synset_mapping.txt", tmp_path / "data" / "LOC_synset_mapping.txt")
    samples = open_data(tmp_path / "data", ("train",)).splits["train"].split.samples
    assert [p.name for p, _ in samples] == sorted(f.name for f in folder.iterdir())
    for p, _ in samples:
        assert p.stat().st_size == (folder / p.name).stat().st_size
        assert p.read_bytes() == pickle.loads(pickle.dumps(p)).read_bytes() == (folder / p.name).read_bytes()
    # A class tar with holes (its 1 MB of zeros, left as a hole by a copy) stored sparse cannot be read in place.
    (tmp_path / "outer").mkdir()
    (tmp_path / "plain.tar").write_bytes(tar_of({holed.name: holed.read_bytes()}))
    subprocess.run(["cp", "--sparse=always", tmp_path / "plain.tar", tmp_path / "outer" / f"{wnid}.tar"], check=True)
    train = sparse_tar(tmp_path / "outer", tmp_path / "ILSVRC2012_img_train.tar", form)
    with pytest.raises(UserError, match=rf"{train}/{wnid}.tar is a sparse member, .*: re-pack {train.name} "
                                        r"without --sparse"):
        index_tar(train, keep=lambda name: True, nested=True)


def tar_with_links(files: dict[str, bytes], links: dict[str, tuple[bytes, str]]) -> bytes:
    """A tar of these files, then these links: name -> (tarfile.LNKTYPE or SYMTYPE, target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return out.getvalue()


def test_a_hard_link_is_its_files_image_again_and_other_links_are_named_left_out(tmp_path, capsys):
    # They were all left out without a word, where tar (and ImageFolder on what it extracts) gives the hard link.
    path = tmp_path / "t.tar"
    path.write_bytes(tar_with_links({"./a.JPEG": b"a" * 700, "b.JPEG": b"b" * 10},
                                    {"./c.JPEG": (tarfile.LNKTYPE, "./a.JPEG"), "d.JPEG": (tarfile.LNKTYPE, "c.JPEG"),
                                     "e.JPEG": (tarfile.SYMTYPE, "b.JPEG"), "f.JPEG": (tarfile.LNKTYPE, "gone.JPEG"),
                                     "notes": (tarfile.SYMTYPE, "b.JPEG")}))
    members = index_tar(path, keep=lambda name: name.endswith(".JPEG"))
    assert members.names == ["./a.JPEG", "b.JPEG", "./c.JPEG", "d.JPEG"]
    assert [members.path(i).read_bytes() for i in range(4)] == [b"a" * 700, b"b" * 10, b"a" * 700, b"a" * 700]
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: {path} holds 1 symbolic link (e.JPEG -> b.JPEG), left out: a link to a member would "
                     f"make its image a second sample, and one out of the archive leads to nothing read here",
                     f"note: {path} holds 1 hard link to no file stored before it (f.JPEG -> gone.JPEG), left out: "
                     f"tar cannot extract such a link either"]


def test_a_class_tar_that_is_a_hard_link_is_read_and_a_symbolic_one_refused_not_left_out(tmp_path):
    # Left out, a class would shift the labels of every class after it.
    inner = tar_with_links({"x.JPEG": b"x"}, {"y.JPEG": (tarfile.LNKTYPE, "x.JPEG")})
    path = tmp_path / "ILSVRC2012_img_train.tar"
    path.write_bytes(tar_with_links({"n01.tar": inner}, {"n03.tar": (tarfile.LNKTYPE, "n01.tar")}))
    members = index_tar(path, keep=lambda name: True, nested=True)
    assert members.names == ["n01.tar/x.JPEG", "n01.tar/y.JPEG", "n03.tar/x.JPEG", "n03.tar/y.JPEG"]
    assert {members.path(i).read_bytes() for i in range(4)} == {b"x"}
    path.write_bytes(tar_with_links({"n01.tar": inner}, {"n02.tar": (tarfile.SYMTYPE, "n01.tar")}))
    with pytest.raises(UserError, match=f"{path}/n02.tar is a symbolic link to n01.tar, not a tar of images: "
                                        f"re-pack ILSVRC2012_img_train.tar with the tar it leads to in its place"):
        index_tar(path, keep=lambda name: True, nested=True)


def test_an_empty_member_of_an_archive_is_named_empty_and_a_foreign_one_not_an_image(tmp_path):
    # decode asks the member (not the disk, where no such file is) for its size.
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in {"empty.JPEG": b"", "notes.JPEG": b"not a picture"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = Archive(path)
    empty, notes = (member_path(f"{path}/{m.name}", archive, m.offset_data, m.size, int(m.mtime))
                    for m in tar_members(path))
    with pytest.raises(UndecodableImage, match=r"an empty file \(0 bytes\)"):
        open_rgb(empty)
    with pytest.raises(UndecodableImage, match="not an image"):
        open_rgb(notes)


def test_kaggles_csv_saved_by_a_spreadsheet_with_a_bom_reads_the_same(reference, tmp_path):
    kaggle = layout("kaggle", reference, tmp_path / "a")
    before = [(path.name, label) for path, label in open_data(kaggle).splits["val"].split.samples]
    csv = kaggle / "LOC_val_solution.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert [(path.name, label) for path, label in open_data(kaggle).splits["val"].split.samples] == before


def test_a_class_tar_of_links_only_is_refused_naming_them_not_as_a_damaged_download(tmp_path):
    # It was "holds no image ... (a damaged download?)": the links, left out, were not named, and downloading
    # again would not have helped.
    links = {f"n02_{i}.JPEG": (tarfile.SYMTYPE, f"/elsewhere/n02_{i}.JPEG") for i in range(4)}
    path = tmp_path / "ILSVRC2012_img_train.tar"
    path.write_bytes(tar_with_links({"n01.tar": tar_with_links({"x.JPEG": b"x"}, {}),
                                     "n02.tar": tar_with_links({}, links)}, {}))
    with pytest.raises(UserError) as e:
        open_data(tmp_path, ("train",))
    assert str(e.value) == (f"{path}/n02.tar holds no image, only 4 symbolic links "
                            f"(n02_0.JPEG -> /elsewhere/n02_0.JPEG, n02_1.JPEG -> /elsewhere/n02_1.JPEG, "
                            f"n02_2.JPEG -> /elsewhere/n02_2.JPEG and 1 more), "
                            f"left out as links are: re-pack n02.tar with the images they lead to in their place, or "
                            f"remove it to train without that class")
