"""Dataset discovery in the ImageNet layout, layout errors, and bad files that never stop a run."""

import io
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from alexnet.data.folders import FixedSizeImages, SkippedFiles, discover
from alexnet.data.imageset import ImageSet
from alexnet.errors import UserError
from conftest import deny


def test_classes_are_sorted_folders_and_labels_follow(tiny_folders):
    root, _ = tiny_folders
    ds = discover(root)
    assert ds.classes == ["cat", "dog"] and ds.names == ["cat", "dog"]
    train = ds.splits["train"]
    assert [label for _, label in train.samples] == [0, 0, 0, 1, 1, 1]
    assert [p.name for p, _ in train.samples[:3]] == ["000.png", "001.png", "002.png"]


def test_readable_names_from_classes_txt_or_imagenet_mapping(tiny_folders):
    root, _ = tiny_folders
    (root / "LOC_synset_mapping.txt").write_text("cat n02123045 tabby, tabby cat\n")
    assert discover(root).names == ["n02123045 tabby, tabby cat", "dog"]
    (root / "classes.txt").write_text("dog good dog\ncat house cat\n")
    assert discover(root).names == ["house cat", "good dog"]  # classes.txt wins
    (root / "classes.txt").write_text("dog\tgood dog\ncat \t house cat\t\n")   # tabs separate as spaces do
    assert discover(root).names == ["house cat", "good dog"]


def test_stray_hidden_and_nested_files(tiny_folders, capsys):
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    (cat / "README.txt").write_text("not a sample")
    (cat / ".DS_Store").write_bytes(b"\0")
    (cat / ".hidden.png").write_bytes(b"\0")
    (cat / "sub").mkdir()
    (cat / "000.png").rename(cat / "sub" / "000.PNG")
    (cat / "001.png").rename(cat / "001.jpe")   # a JPEG by another of its names: an image
    (cat / "IMG_0001").write_bytes(b"\0")
    (cat / "IMG_0002.HEIC").write_bytes(b"\0")
    names = [p.relative_to(cat).as_posix() for p, label in discover(root).splits["train"].samples if label == 0]
    assert names == ["001.jpe", "002.png", "sub/000.PNG"]
    # What is left out for its name is said once a split (hidden files aside): a camera's HEIC, say.
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"note: {root / 'train'} holds 3 other files (.heic 1, .txt 1, no extension 1), " \
        "left out: not images by their names" in err, err


@pytest.mark.parametrize("breakage,message", [
    (lambda r: shutil.rmtree(r / "val"), "has no val/ folder"),
    (lambda r: shutil.rmtree(r / "train"), "has no train/ folder"),
    (lambda r: (r / "val" / "cow").mkdir(), "only in train/: none; only in val/: cow"),
    (lambda r: (r / "val" / "dog").rename(r / "val" / "dgo"), "only in train/: dog; only in val/: dgo"),
    (lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()], "with no images: train/dog; images end in"),
    (lambda r: [p.rename(p.with_suffix(".heic")) for p in (r / "val" / "dog").iterdir()],
     "with no images: val/dog (holds 3 other files (.heic 3)); images end in .avif, .bmp"),
])
def test_layout_problems_are_clear_user_errors(tiny_folders, breakage, message):
    root, _ = tiny_folders
    breakage(root)
    with pytest.raises(UserError, match=re.escape(message)):
        discover(root)


def test_missing_data_directory(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        discover(tmp_path / "nowhere")


def test_fixed_size_items(tiny_folders):
    root, colours = tiny_folders
    ds = FixedSizeImages(discover(root).splits["val"])
    image, label, index, error = ds[4]
    assert image.shape == (256, 256, 3) and image.dtype == torch.uint8
    assert (label, index, error) == (1, 4, "")
    assert (image == torch.tensor(colours["dog"][1], dtype=torch.uint8)).all()


def test_bad_files_are_skipped_warned_once_and_counted_per_epoch(tiny_folders):
    root, _ = tiny_folders
    (root / "train" / "cat" / "001.png").write_bytes(b"")                # zero bytes
    (root / "train" / "dog" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated
    ds = FixedSizeImages(discover(root).splits["train"])
    log = io.StringIO()
    skipped = SkippedFiles(ds, stream=log)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=ImageSet.collate)   # whole batches
    for _epoch in range(2):
        kept = 0
        for images, labels, indices, errors in loader:
            images, labels = skipped.keep(images, labels, indices, errors)
            assert len(images) == len(labels) and (labels >= 0).all()
            kept += len(labels)
        assert kept == 4 and skipped.end_epoch() == 2
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # once per file, not once per epoch
    assert "cat/001.png" in lines[0] and "an empty file" in lines[0] and "dog/002.png" in lines[1]


def test_links_are_followed_once_and_never_make_a_class_of_the_split(tiny_folders, tmp_path):
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    before = discover(root).splits["train"].samples
    (cat / "loop").symlink_to(".")                          # a loop inside a class: read once
    (cat / "up").symlink_to("..")                           # a link up to the split: not into the other class
    (cat / "dogs").symlink_to(root / "train" / "dog")       # nor straight into it
    elsewhere = tmp_path / "kept-elsewhere"
    elsewhere.mkdir()
    (cat / "001.png").rename(elsewhere / "001.png")
    (cat / "more").symlink_to(elsewhere)                    # images kept elsewhere: followed
    samples = discover(root).splits["train"].samples
    assert len(samples) == len(before)
    assert sorted(p.relative_to(cat).as_posix() for p, label in samples if label == 0) == ["000.png", "002.png",
                                                                                           "more/001.png"]
    (root / "train" / "zloop").symlink_to(".")              # a "class" that is the split itself
    (root / "val" / "zloop").mkdir()
    with pytest.raises(UserError, match="zloop links to .* which holds .*train itself"):
        discover(root)


def test_a_folder_and_links_to_it_in_one_class_are_read_once(tiny_folders, tmp_path):
    # Queued from one listing, a folder and a link to it (or two links to one folder) were both walked: its
    # images counted twice, in training and in every accuracy. The folder itself is read, not the link.
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    before = sorted(p.name for p, label in discover(root).splits["train"].samples if label == 0)
    photos = cat / "photos"
    photos.mkdir()
    for name in before:
        (cat / name).rename(photos / name)
    (cat / "all").symlink_to("photos")                      # sorts before the folder it links to
    (cat / "zz recent").symlink_to("photos")
    elsewhere = tmp_path / "kept-elsewhere"
    shutil.copytree(photos, elsewhere)
    (cat / "a").symlink_to(elsewhere)                       # two links to one folder kept elsewhere
    (cat / "b").symlink_to(elsewhere)
    samples = [p.relative_to(cat).as_posix() for p, label in discover(root).splits["train"].samples if label == 0]
    assert sorted(samples) == [f"a/{n}" for n in before] + [f"photos/{n}" for n in before]


def test_a_linked_file_of_the_split_is_no_second_sample_and_loose_files_are_named(tiny_folders, tmp_path, capsys):
    # A link in cat/ to an image of dog/ made those pixels a sample of both classes, and a link to another
    # image of cat/ a second sample of it, silently (linked folders were refused or left out already).
    # Images lying in train/ itself were left out without a word.
    root, _ = tiny_folders
    before = discover(root).splits["train"].samples
    capsys.readouterr()
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    (cat / "a dog.png").symlink_to(dog / "000.png")
    (dog / "again.png").symlink_to("000.png")
    elsewhere = tmp_path / "kept-elsewhere"
    elsewhere.mkdir()
    (cat / "002.png").rename(elsewhere / "002.png")
    (cat / "002.png").symlink_to(elsewhere / "002.png")     # an image kept elsewhere: a sample
    (cat / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a link to nothing: a sample, skipped when read
    (root / "train" / "stray.jpg").write_bytes(b"")
    (root / "train" / "README").write_text("about the set")
    samples = discover(root).splits["train"].samples
    assert [(p.relative_to(root / "train").as_posix(), y) for p, y in samples] == \
        [(p.relative_to(root / "train").as_posix(), y) for p, y in before[:3]] + [("cat/gone.png", 0)] + \
        [(p.relative_to(root / "train").as_posix(), y) for p, y in before[3:]]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"note: {root / 'train'} holds 2 files (.jpg 1, no extension 1) outside its class folders, left "
                   "out: a class's images go in train/<class>/",
                   f"note: {root / 'train'} holds 2 links to its own images (cat/a dog.png, dog/again.png), left out: "
                   "each image is one sample of one class"]


def test_images_linked_from_a_hidden_folder_or_loose_in_the_split_are_samples_of_the_class(tiny_folders, capsys):
    # Every link into train/ was taken for a link to a sample of the split: a linked folder in train/.pool was
    # left out without a word, and files linked there or to a file lying in train/ were noted as "links to its
    # own images" (a class of nothing else refused "with no images"). No class reads them: they are the linking
    # class's samples.
    root, _ = tiny_folders
    train, cat = root / "train", root / "train" / "cat"
    (train / ".pool" / "catpics").mkdir(parents=True)
    (cat / "000.png").rename(train / ".pool" / "catpics" / "000.png")
    (cat / "001.png").rename(train / ".pool" / "p0.png")
    (cat / "002.png").rename(train / "t0.png")
    (cat / "pool0.png").symlink_to("../.pool/p0.png")
    (cat / "top0.png").symlink_to("../t0.png")
    capsys.readouterr()

    def cats() -> list[str]:
        return [p.relative_to(cat).as_posix() for p, label in discover(root).splits["train"].samples if label == 0]

    assert cats() == ["pool0.png", "top0.png"]
    (cat / "more").symlink_to("../.pool/catpics")
    (cat / ".hidden").mkdir()
    (train / ".pool" / "p0.png").rename(cat / ".hidden" / "p1.png")
    (cat / "pool0.png").unlink()
    (cat / "pool1.png").symlink_to(".hidden/p1.png")        # a hidden folder of its own class: not read either
    assert cats() == ["more/000.png", "pool1.png", "top0.png"]
    assert capsys.readouterr().err == ""                     # t0.png is a sample, not a loose file left out
    # The rules stay: no second sample of an image of another class, or of one this class reads.
    (cat / "a dog.png").symlink_to("../dog/000.png")
    shutil.copy(root / "train" / "dog" / "001.png", cat / "own.png")
    (cat / "again.png").symlink_to("own.png")
    (cat / "dogs").symlink_to("../dog")
    (cat / "split").symlink_to("..")
    assert cats() == ["more/000.png", "own.png", "pool1.png", "top0.png"]
    assert capsys.readouterr().err == (f"note: {train} holds 2 links to its own images (cat/a dog.png, "
                                       "cat/again.png), left out: each image is one sample of one class\n")
    # An image no class holds is the sample of the first class that links it: another's link is left out.
    (root / "train" / "dog" / "top0.png").symlink_to("../t0.png")
    samples = discover(root).splits["train"].samples
    assert [p.name for p, label in samples if label == 1 and p.is_symlink()] == []
    assert [p.relative_to(cat).as_posix() for p, label in samples if label == 0] == \
        ["more/000.png", "own.png", "pool1.png", "top0.png"]
    assert "dog/top0.png" in capsys.readouterr().err


def test_two_class_folders_that_are_one_folder_are_refused(tiny_folders):
    root, _ = tiny_folders
    (root / "train" / "kitten").symlink_to(root / "train" / "cat")
    (root / "val" / "kitten").mkdir()
    with pytest.raises(UserError, match=r"train/cat and \S*train/kitten are the same folder"):
        discover(root)


def test_class_names_that_differ_only_in_unicode_normalisation_are_named(tiny_folders):
    root, _ = tiny_folders
    nfc, nfd = "caf\u00e9", "cafe\u0301"   # both print as café
    (root / "train" / "cat").rename(root / "train" / nfc)
    (root / "val" / "cat").rename(root / "val" / nfd)
    with pytest.raises(UserError, match="café is spelled with other Unicode code points in each"):
        discover(root)


def test_a_class_folder_that_is_a_dead_link_is_one_line_naming_it(tiny_folders, tmp_path):
    # A class folder linked to an unmounted disk was read as a loose file of its split: val's class dropped
    # with a note, or train/ and val/ said to disagree, or (in both) a run trained without the class.
    root, _ = tiny_folders
    for split in ("train", "val"):
        (root / split / "cow").symlink_to(tmp_path / "unmounted" / split / "cow")
    with pytest.raises(UserError, match=re.escape(f"{root / 'train' / 'cow'} is a link to "
                                                  f"{tmp_path / 'unmounted' / 'train' / 'cow'}, which does not exist")):
        discover(root)
    (root / "train" / "cow").unlink()
    (root / "train" / "cow").symlink_to("cow")              # to itself
    with pytest.raises(UserError, match=re.escape(f"{root / 'train' / 'cow'} is a link to cow, which cannot be "
                                                  "reached (too many levels of symbolic links)")):
        discover(root)
    (root / "train" / "cow").unlink()
    (root / "val" / "cow").unlink()
    (root / "val" / "gone.jpg").symlink_to(tmp_path / "gone.jpg")   # a stray image's link: noted, not refused
    assert discover(root).classes == ["cat", "dog"]


def test_folders_that_cannot_be_read_are_said_so(tiny_folders, monkeypatch, capsys):
    # A folder in a class that could not be listed lost its images without a word, and a class folder that
    # could not be was called one "with no images", with the extensions images end in.
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    (cat / "sub").mkdir()
    (cat / "000.png").rename(cat / "sub" / "000.png")
    deny(monkeypatch, cat / "sub")
    assert [p.name for p, label in discover(root).splits["train"].samples if label == 0] == ["001.png", "002.png"]
    assert capsys.readouterr().err == f"warning: skipping unreadable folder {cat / 'sub'}: permission denied; " \
        "the images in it are left out\n"
    deny(monkeypatch, root / "val" / "dog")
    with pytest.raises(UserError, match=re.escape(f"{root}: cannot read class folder val/dog (permission denied): "
                                                  "give this user read access to it")):
        discover(root)
    deny(monkeypatch, root / "train")
    with pytest.raises(UserError, match=re.escape(f"cannot read {root / 'train'}: permission denied")):
        discover(root)


def test_a_subfolder_that_is_a_dead_link_is_named_not_counted_as_another_file(tiny_folders, capsys):
    # Part of a class's images on a disk not mounted: they were missing, and the note said "1 file (no
    # extension)" lay outside the images. A dead link named as a file (notes.txt -> ...) is still a file.
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    (cat / "more").symlink_to("/mnt/alexnet-not-mounted/cat")
    (cat / "notes.txt").symlink_to("/mnt/alexnet-not-mounted/notes.txt")
    capsys.readouterr()
    assert [p.name for p, label in discover(root).splits["train"].samples if label == 0] == \
        ["000.png", "001.png", "002.png"]
    err = capsys.readouterr().err
    assert f"warning: skipping unreadable folder {cat / 'more'}: a link to /mnt/alexnet-not-mounted/cat, which " \
           "does not exist; the images in it are left out\n" in err, err
    assert "(no extension" not in err and ".txt 1" in err, err


def test_a_link_to_itself_is_an_unreadable_file_not_a_link_to_an_image_of_the_split(tiny_folders, capsys):
    # A link leading nowhere was judged by the path it names: "loop.jpg -> loop.jpg", or a link to an image
    # deleted from another class, was noted as a link to the split's own images.
    root, _ = tiny_folders
    cat = root / "train" / "cat"
    (cat / "loop.jpg").symlink_to("loop.jpg")
    (cat / "gone.png").symlink_to(root / "train" / "dog" / "deleted.png")
    capsys.readouterr()
    split = discover(root).splits["train"]
    assert "link" not in capsys.readouterr().err
    assert [p.name for p, label in split.samples if label == 0] == ["000.png", "001.png", "002.png", "gone.png",
                                                                    "loop.jpg"]
    images = FixedSizeImages(split)   # each skipped when read, with the reason, as a link to nothing outside
    assert images[3][1:] == (-1, 3, "no such file or directory")
    assert images[4][1:] == (-1, 4, "too many levels of symbolic links")


def test_an_image_kept_elsewhere_and_linked_from_two_classes_is_one_sample_of_the_first(tiny_folders, tmp_path,
                                                                                         capsys):
    # It was a sample of both, under two labels (and twice a sample of one class linking it twice), where an
    # image in a hidden folder of the split, linked so, was already the first class's only. So was each image
    # of a folder kept elsewhere that two classes link.
    root, _ = tiny_folders
    train = root / "train"
    before = discover(root).splits["train"].samples
    capsys.readouterr()
    elsewhere = tmp_path / "kept-elsewhere"
    (elsewhere / "pics").mkdir(parents=True)
    shutil.copy(train / "dog" / "000.png", elsewhere / "shared.png")
    shutil.copy(train / "dog" / "001.png", elsewhere / "pics" / "p.png")
    for cls in ("cat", "dog"):
        (train / cls / "shared.png").symlink_to(elsewhere / "shared.png")
        (train / cls / "pics").symlink_to(elsewhere / "pics")
    (train / "cat" / "shared2.png").symlink_to(elsewhere / "shared.png")
    (train / "dog" / "p.png").symlink_to(elsewhere / "pics" / "p.png")
    samples = discover(root).splits["train"].samples
    added = [(p.relative_to(train).as_posix(), y) for p, y in samples if p not in {q for q, _ in before}]
    assert added == [("cat/pics/p.png", 0), ("cat/shared.png", 0)]
    assert capsys.readouterr().err == (f"note: {train} holds 4 links to images kept elsewhere that a link before them "
                                       f"made samples (cat/shared2.png, dog/pics, dog/p.png and 1 more), left out: "
                                       f"each image is one sample of one class\n")


def test_an_image_hidden_in_a_folder_another_class_links_is_the_sample_of_the_class_that_links_it(tiny_folders,
                                                                                                   tmp_path):
    # cat links a folder kept elsewhere and does not read its hidden subfolder; dog links an image in that
    # subfolder: no class read it, so it is dog's (it was left out as "made a sample by a link before").
    root, _ = tiny_folders
    train = root / "train"
    before = {p for p, _ in discover(root).splits["train"].samples}
    elsewhere = tmp_path / "kept-elsewhere"
    (elsewhere / ".hidden").mkdir(parents=True)
    shutil.copy(train / "dog" / "000.png", elsewhere / "1.png")
    shutil.copy(train / "dog" / "001.png", elsewhere / ".hidden" / "x.png")
    (train / "cat" / "ext").symlink_to(elsewhere)
    (train / "dog" / "x.png").symlink_to(elsewhere / ".hidden" / "x.png")
    samples = discover(root).splits["train"].samples
    added = sorted((p.relative_to(train).as_posix(), y) for p, y in samples if p not in before)
    assert added == [("cat/ext/1.png", 0), ("dog/x.png", 1)]


def test_readable_names_reach_a_folder_named_in_utf_8_in_an_ascii_locale(tiny_folders):
    # Without Python's UTF-8 mode in an ASCII locale (LC_ALL=C PYTHONUTF8=0) the folder "dög house" reaches
    # Python as "d\udcc3\udcb6g house", which no line of the UTF-8 classes.txt matched: it silently kept its
    # folder name (a warning came only where no folder at all matched).
    root, _ = tiny_folders
    for split in ("train", "val"):
        (root / split / "dog").rename(root / split / "dög house")
    (root / "classes.txt").write_text("cat Katze\ndög house Hund\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"} | {"LC_ALL": "C", "PYTHONUTF8": "0"}
    code = "import sys\nfrom alexnet.data.folders import discover\nprint(ascii(discover(sys.argv[1]).names))"
    r = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout == "['Katze', 'Hund']\n", r.stdout + r.stderr
