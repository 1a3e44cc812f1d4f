"""Compact sample lists (data/samples.py) behave as the lists of (path, label) they stand for, and cost a
few integers and the names' bytes a sample; files.ReadAt reads what the file holds, from any process."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from alexnet.data.samples import NamedSamples, Names, relabelled, take
from alexnet import files
from alexnet.files import ReadAt

NAMES = ["ant/0.jpg", "ant/1.JPEG", "bee/é.png", "bee/\udcff.jpg", "cow/a b.jpg"]   # non-UTF-8 bytes too


def test_names_behave_as_the_list_of_strings():
    names = Names(NAMES)
    assert len(names) == 5 and list(names) == NAMES and names == NAMES and [names[i] for i in range(5)] == NAMES
    assert names[-1] == NAMES[-1] and names[1:4] == NAMES[1:4] and names[::-2] == NAMES[::-2]
    assert names.take([4, 0, 0]) == [NAMES[4], NAMES[0], NAMES[0]] and names.take(np.array([2])) == [NAMES[2]]
    assert Names.join([names.take([1, 2]), Names(["x"]), Names()]) == [NAMES[1], NAMES[2], "x"]
    assert Names() == [] and Names.join([]) == [] and names != NAMES[:4] and names != NAMES[::-1]
    with pytest.raises(IndexError):
        names[5]


def test_named_samples_behave_as_the_list_of_path_label_pairs():
    root = Path("/data/train")
    labels = [0, 0, 1, 1, 2]
    reference = [(root / n, label) for n, label in zip(NAMES, labels)]
    samples = NamedSamples(root, NAMES, labels)
    assert samples == reference and list(samples) == reference and samples[-2] == reference[-2]
    assert samples[1:3] == reference[1:3] and len(samples) == 5
    assert all(type(label) is int for _, label in samples)
    assert take(samples, [3, 1]) == take(reference, [3, 1]) == [reference[3], reference[1]]
    assert isinstance(take(samples, [3, 1]), NamedSamples)
    table = [7, 5, 6]
    assert relabelled(samples, table) == relabelled(reference, table) == [(p, table[y]) for p, y in reference]
    assert relabelled(take(samples, [4, 0]), table) == [(root / NAMES[4], 6), (root / NAMES[0], 7)]
    joined = NamedSamples.join([NamedSamples(root, NAMES[:2], labels[:2]), NamedSamples(root, NAMES[2:], labels[2:])])
    assert joined == reference
    assert pickle.loads(pickle.dumps(samples)) == reference


def test_a_sample_costs_a_few_integers_and_its_names_bytes():
    # What a spawned DataLoader worker receives, and about what each process holds: 24 bytes and the name.
    n = 20_000
    names = [f"n{k % 1000:08d}.tar/n{k % 1000:08d}_{k}.JPEG" for k in range(n)]
    samples = NamedSamples(Path("/data/ILSVRC2012_img_train.tar"), names, [k % 1000 for k in range(n)])
    text = sum(len(name) for name in names)
    assert len(pickle.dumps(samples)) < text + 24 * n + 2000
    assert len(pickle.dumps(take(samples, range(0, n, 2)))) < text + 24 * n // 2 + 2000   # the text is shared


@pytest.mark.parametrize("calls", ["preadv", "pread", "seek and read"])   # what the platform offers
def test_read_at_reads_the_bytes_at_an_offset_in_any_process(tmp_path, monkeypatch, calls):
    if calls != "preadv":
        monkeypatch.setattr(files, "_PREADV", False)
    if calls == "seek and read":
        monkeypatch.delattr(os, "pread", raising=False)
    data = bytes(range(256)) * 40
    path = tmp_path / "shard.bin"
    path.write_bytes(data)
    file = ReadAt(path)
    assert file.read(100, 50) == data[100:150] and file.read(len(data) - 5, 10, exact=False) == data[-5:]
    buffer = np.zeros((4, 10), dtype=np.uint8)
    file.read_into(1000, buffer[1:3])
    assert buffer[1:3].tobytes() == data[1000:1020] and not buffer[0].any() and not buffer[3].any()
    with pytest.raises(OSError, match="ends 5 bytes into a read of 10"):
        file.read(len(data) - 5, 10)
    with pytest.raises(OSError, match="ends 5 bytes into a read of 10"):
        file.read_into(len(data) - 5, np.zeros(10, dtype=np.uint8))
    copy = pickle.loads(pickle.dumps(file))   # as a spawned worker gets it: opens the file itself
    assert copy._fd is None and copy.read(7, 3) == data[7:10]
    if hasattr(os, "fork"):   # a forked worker inherits the object, and opens its own descriptor
        pid = os.fork()
        if pid == 0:
            os._exit(0 if file.read(3, 4) == data[3:7] and file._pid == os.getpid() else 1)
        assert os.waitpid(pid, 0)[1] == 0
