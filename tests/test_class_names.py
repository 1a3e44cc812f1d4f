"""The files that name classes (classes.txt, LOC_synset_mapping.txt, --classes) as other editors write them."""

import pytest

from alexnet.data.class_names import read_pairs
from alexnet.data.folders import discover
from alexnet.errors import UserError


def test_a_folder_name_with_spaces_ends_at_a_tab_or_at_the_longest_known_folder(tmp_path):
    # "dog house Kennel" was split at its first space: the class "dog" got the name "house Kennel", and
    # "dog house" none, silently.
    path = tmp_path / "classes.txt"
    path.write_text("dog house Kennel\ndog Puppy\nn01440764 tench, Tinca tinca\n")
    assert read_pairs(path, ["dog", "dog house"]) == [("dog house", "Kennel"), ("dog", "Puppy"),
                                                      ("n01440764", "tench, Tinca tinca")]
    path.write_text("dog house Kennel\n")
    assert read_pairs(path) == [("dog", "house Kennel")]   # no folders to go by: the first space
    path.write_text("dog house\tKennel\nbig cat\t\ncat\n")   # a tab: whatever the folders are
    assert read_pairs(path) == [("dog house", "Kennel"), ("big cat", ""), ("cat", "")]


def test_a_byte_order_mark_and_crlf_are_no_part_of_a_name(tmp_path):
    # Windows Notepad's UTF-8: the first class kept its folder name ("\ufeffa" named no folder).
    path = tmp_path / "classes.txt"
    path.write_bytes("a Äpfel\r\nb Banana\r\n\r\nc Cherry\r\n".encode("utf-8-sig"))
    assert read_pairs(path, ["a", "b", "c"]) == [("a", "Äpfel"), ("b", "Banana"), ("c", "Cherry")]


def test_text_that_is_not_utf8_and_a_folder_named_twice_are_refused(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("a Apple\nb Äpfel\n".encode("latin-1"))   # read as U+FFFD, silently, before
    with pytest.raises(UserError, match=r"classes.txt is not UTF-8 text \(byte 0xC4 on line 2\); save it as UTF-8"):
        read_pairs(path)
    path.write_text("dog Puppy\ncat Cat\ndog Hound\n")   # the second silently won
    with pytest.raises(UserError, match=r"names 'dog' twice \(lines 1 and 3\); keep one"):
        read_pairs(path)


def test_a_dataset_takes_its_names_so(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("dog", "dog house"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.png")
    (tmp_path / "classes.txt").write_bytes("\ufeffdog house Kennel\r\ndog Puppy\r\n".encode())
    assert discover(tmp_path).names == ["Puppy", "Kennel"]
    assert capsys.readouterr().err == ""
    # A file of another dataset's folders: every class keeps its folder name, which is said once.
    (tmp_path / "classes.txt").write_text("n01440764 tench\n")
    assert discover(tmp_path).names == ["dog", "dog house"]
    assert "classes.txt names none of the class folders (n01440764; the folders: dog, dog house)" in \
        capsys.readouterr().err
