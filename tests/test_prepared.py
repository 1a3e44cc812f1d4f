"""`alexnet prepare`: the decoded-once shards hold exactly the folder pipeline's pixels, resume, and are
accepted wherever a dataset folder is."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet.config import resolve
from alexnet.data import prepare as prepare_module
from alexnet.data.folders import FixedSizeImages, discover
from alexnet.data.loader import eval_loader, train_loader
from alexnet.data.prepare import prepare
from alexnet.data.prepared import PreparedImages, open_prepared
from alexnet.data.stats import compute_stats
from alexnet.data.transforms import Draws, Normalize, train_views
from alexnet.errors import UserError
from alexnet.train import train
from conftest import run_main, write_image_folders


def write_photos(root, per_class=5, classes=("ant", "bee", "cow")):
    """Noisy JPEGs of varied sizes and aspect ratios (the resize and crop matter), PNGs among them."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = int(rng.integers(180, 400)), int(rng.integers(180, 400))
                pixels = (rng.random((h, w, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    data = write_photos(root / "data")
    (data / "classes.txt").write_text("ant an ant\nbee a bee\ncow a cow\n")
    (data / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "val" / "cow" / "empty.png").write_bytes(b"")
    prepare(data, root / "prep", workers=2, shard_size=4, progress=False)
    return data, root / "prep"


def test_shards_hold_the_folder_pipelines_pixels_exactly(prep):
    data, out = prep
    folders = discover(data)
    ours = open_prepared(out)
    sets = ours.splits
    assert (ours.classes, ours.names) == (folders.classes, ["an ant", "a bee", "a cow"])
    for split in ("train", "val"):
        jpeg = FixedSizeImages(folders.splits[split])
        readable = [i for i in range(len(jpeg)) if jpeg[i][1] >= 0]
        got = sets[split]
        assert len(got) == len(readable) == 15
        for j, i in enumerate(readable):
            image, label, index, error = got[j]
            ref_image, ref_label, _, _ = jpeg[i]
            assert torch.equal(image, ref_image) and label == ref_label and index == j and error == ""
            assert got.path(j) == jpeg.path(i)


def test_unreadable_files_are_left_out_and_named(prep):
    _, out = prep
    meta = json.loads((out / "alexnet-prepared.json").read_text())
    assert meta["splits"]["train"] | {"crc32": None} == {"images": 15, "shards": 4, "skipped": 1, "crc32": None}
    assert meta["splits"]["val"]["skipped"] == 1
    skipped = [s for p in sorted((out / "train").glob("*.json")) for s in json.loads(p.read_text())["skipped"]]
    assert [path for path, _ in skipped] == [os.path.join("bee", "broken.jpg")]


def test_a_class_whose_training_files_are_all_unreadable_is_named_by_prepare_and_refused_by_train(tmp_path):
    data = write_photos(tmp_path / "data", per_class=2)
    for path in (data / "train" / "bee").iterdir():
        path.write_bytes(b"")
    r = run_main("prepare", "--data", data, "--out", tmp_path / "prep", "--workers", 0)
    assert r.returncode == 0 and "warning: no training image of bee could be read" in r.stderr, r.stderr
    with pytest.raises(UserError, match="no readable image of class bee in .*train .its files were left out as "
                                        "unreadable when it was prepared.: the network would have an output .*"
                                        "or remove the class, then prepare the data into a new --out$"):
        train(resolve("demo", dict(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), epochs=1, batch_size=2,
                                   workers=0, precision="fp32")))
    assert not (tmp_path / "run").exists()
    # The warning's advice is what works: the store itself is refused once its files have changed.
    assert f"then prepare into a new --out, or delete {tmp_path / 'prep'} first)" in r.stderr, r.stderr
    write_photos(tmp_path / "new", per_class=2)
    for path in (data / "train" / "bee").iterdir():
        path.write_bytes((tmp_path / "new" / "train" / "bee" / path.name).read_bytes())
    with pytest.raises(UserError, match="was made from other files than .* holds now; prepare into a new --out"):
        prepare(data, tmp_path / "prep", workers=0, progress=False)
    prepare(data, tmp_path / "prep2", workers=0, progress=False)
    open_prepared(tmp_path / "prep2").splits["train"].check_readable(every_class=True)


def test_batches_and_augmented_crops_equal_the_jpeg_pipelines(prep):
    data, out = prep
    jpeg = FixedSizeImages(discover(data).splits["train"])
    jpeg.split.samples = [s for i, s in enumerate(jpeg.split.samples) if jpeg[i][1] >= 0]
    fast = PreparedImages(out, "train")
    for workers in (0, 2):
        a = list(train_loader(jpeg, 4, rank=0, world=1, seed=3, workers=0, pin_memory=False))
        b = list(train_loader(fast, 4, rank=0, world=1, seed=3, workers=workers, pin_memory=False))
        assert len(a) == len(b) == 3
        for (xa, ya, ia, _), (xb, yb, ib, _) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)
            draws = Draws.per_sample(ia, epoch=0, seed=3, height=256, width=256, size=227)
            norm = Normalize.create("imagenet", None)
            assert torch.equal(train_views(xa, 227, norm, draws=draws), train_views(xb, 227, norm, draws=draws))
    val = list(eval_loader(PreparedImages(out, "val"), 4, rank=1, world=2, workers=0, pin_memory=False))
    assert [int(i) for _, _, idx, _ in val for i in idx] == list(range(1, 15, 2))


@pytest.mark.parametrize("rows", [list(range(15)), [3, 4, 5, 6], [7, 6, 5, 4], [2, 2, 3, 3, 4], [14, 0, 13, 1]])
def test_any_batch_reads_the_images_one_by_one_reading_gives(prep, rows):
    # Runs of consecutive images are read at once; a run must stop at a shard's end (4 images a shard here).
    data, out = prep
    jpeg = FixedSizeImages(discover(data).splits["train"])
    reference = [jpeg[i][0] for i in range(len(jpeg)) if jpeg[i][1] >= 0]
    fast = PreparedImages(out, "train")
    images, labels, idx, _ = fast.__getitems__(rows)
    assert torch.equal(images, torch.stack([reference[r] for r in rows])) and idx.tolist() == rows
    picked = fast.subset([5, 6, 7, 8, 1])   # a subset's consecutive items are not consecutive rows
    assert torch.equal(picked.__getitems__([0, 1, 2, 3, 4])[0], torch.stack([reference[r] for r in (5, 6, 7, 8, 1)]))
    assert [p.name for p, _ in picked.split.samples] == [fast.path(r).name for r in (5, 6, 7, 8, 1)]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_reading_a_store_maps_none_of_it(prep):
    # A mapping would count every page read as the reader's memory: a whole store, over an epoch.
    _, out = prep
    fast = PreparedImages(out, "train")
    fast.__getitems__(list(range(15)))
    maps = open("/proc/self/maps").read()
    assert str(out) not in maps and fast._shards[0].file is not None


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux's /proc/self/fd")
def test_reading_a_store_keeps_no_more_files_open_than_its_share_of_the_limit(prep, monkeypatch):
    # One descriptor a shard for good: an ImageNet store (1,301 shards) failed a few batches into training, in
    # every loader worker, under the usual `ulimit -n` of 1,024, and its prepare at the statistics pass.
    from alexnet import files

    data, out = prep
    jpeg = FixedSizeImages(discover(data).splits["train"])
    reference = [jpeg[i][0] for i in range(len(jpeg)) if jpeg[i][1] >= 0]
    monkeypatch.setattr(files._OPEN, "most", 2)   # of the store's 4 shards

    def shards_open():
        return sum(os.path.realpath(f"/proc/self/fd/{fd}").startswith(str(out)) for fd in os.listdir("/proc/self/fd"))

    fast = PreparedImages(out, "train")
    counts = []
    for _ in range(2):
        for i in np.random.default_rng(len(counts)).permutation(len(fast)).tolist():
            assert torch.equal(fast.__getitems__([i])[0][0], reference[i])
            counts.append(shards_open())
    assert max(counts) == 2
    del fast
    assert shards_open() == 0
    # The share: a quarter of the process's limit on open files.
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit("
              "resource.RLIMIT_NOFILE)[1])); from alexnet import files; print(files._OPEN.most)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "16", r.stderr


def test_the_statistics_are_those_of_the_decoded_training_set(prep):
    data, out = prep
    from alexnet.data.stats import DataStats

    saved = DataStats.load(out / "data_stats.safetensors")
    jpeg = FixedSizeImages(discover(data).splits["train"])
    ref = compute_stats(jpeg, workers=0, progress=False)
    assert saved.images == ref.images == 15
    torch.testing.assert_close(saved.mean_image, ref.mean_image, rtol=0, atol=1e-4)
    torch.testing.assert_close(saved.eigvals, ref.eigvals, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("store, suffix", [("raw", ".u8"), ("jpeg", ".jpg.bin")])
def test_an_interrupted_prepare_resumes_without_redoing_finished_shards(prep, tmp_path, monkeypatch, store, suffix):
    data, done = prep
    if store != "raw":
        done = tmp_path / "done"
        prepare(data, done, workers=0, shard_size=4, progress=False, store=store)
    out = tmp_path / "prep"
    prepare(data, out, workers=0, shard_size=4, progress=False, store=store)
    # As if killed while writing shard 2 of train: its data half-written, no .json, no marker.
    (out / "alexnet-prepared.json").unlink()
    (out / "train" / "00002.json").unlink()
    (out / "train" / f"00002{suffix}").unlink()
    (out / "train" / f".00002{suffix}.tmp").write_bytes(b"\xff\xd8" * 500)
    r = run_main("train", "--data", out, "--out", tmp_path / "run")
    assert r.returncode == 2 and "unfinished `alexnet prepare`" in r.stderr and "Traceback" not in r.stderr

    written = []
    real = prepare_module._write_shard
    monkeypatch.setattr(prepare_module, "_write_shard", lambda folder, shard, *a: (written.append((folder.name, shard)),
                                                                            real(folder, shard, *a)))
    prepare(data, out, workers=0, shard_size=4, progress=False, store=store)
    assert written == [("train", 2)]
    for path in sorted(done.rglob("*")):
        if path.is_file() and path.suffix != ".safetensors":    # (its header's key order varies)
            assert (out / path.relative_to(done)).read_bytes() == path.read_bytes(), path
    a, b = (load_file(p / "data_stats.safetensors") for p in (out, done))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list(out.rglob("*.tmp"))


def test_a_store_prepared_in_shards_of_another_size_says_so(prep, tmp_path):
    # prepare(shard_size=...) is the Python API's: a store made with 4, prepared again with the default, was
    # refused as "made from other files than DATA/train holds now", the data unchanged.
    data, _ = prep
    out = tmp_path / "prep"
    prepare(data, out, workers=0, shard_size=4, progress=False)
    r = run_main("prepare", "--data", data, "--out", out, "--workers", 0)
    assert r.returncode == 2 and f"{out} was prepared in shards of 4 images, not 1024: prepare it with " \
        "shard_size=4" in r.stderr, r.stderr
    (out / "alexnet-prepared.json").unlink()   # unfinished: its shards say it
    with pytest.raises(UserError, match=r"00000.json is a shard of 4 images, not 6: .* was begun in shards of 4; "
                                        r"prepare it with shard_size=4 to resume it"):
        prepare(data, out, workers=0, shard_size=6, progress=False)
    prepare(data, out, workers=0, shard_size=4, progress=False)   # resumed with its own
    assert (out / "alexnet-prepared.json").exists()
    # Images added since to an unfinished store whose last shard was not full: other files, not another size.
    copy = Path(shutil.copytree(data, tmp_path / "grown"))
    prepare(copy, tmp_path / "five", workers=0, shard_size=5, progress=False)   # 16 files: 5, 5, 5 and 1
    (tmp_path / "five" / "alexnet-prepared.json").unlink()
    for i in range(2):
        Image.new("RGB", (300, 200), (i, 9, 9)).save(copy / "train" / "cow" / f"new{i}.png")
    with pytest.raises(UserError, match="00003.json was made from other files than"):
        prepare(copy, tmp_path / "five", workers=0, shard_size=5, progress=False)


@pytest.mark.parametrize("left", [[], [".00000.u8.tmp"], [".00000.u8.tmp", ".00000.json.k2j4x.tmp"],
                                  [".00000.jpg.bin.tmp"]])
def test_a_prepare_killed_in_its_first_shard_resumes(prep, tmp_path, left):
    # Killed before any shard had its .json: the folder holds empty split folders or prepare's temporary
    # files only (a 1,024-image split is one shard); from another store's run too.
    data, _ = prep
    out = tmp_path / "prep"
    (out / "train").mkdir(parents=True)
    (out / "val").mkdir()
    for name in left:
        (out / "train" / name).write_bytes(b"\0" * 1000)
    if left:
        with pytest.raises(UserError, match="unfinished `alexnet prepare`; run it again"):
            open_prepared(out)
    prepare(data, out, workers=0, progress=False)
    splits = json.loads((out / "alexnet-prepared.json").read_text())["splits"]
    assert not list(out.rglob("*.tmp")) and {k: (v["images"], v["skipped"]) for k, v in splits.items()} == \
        {"train": (15, 1), "val": (15, 1)}


def test_bad_input_is_one_line_and_exit_2(prep, tmp_path):
    data, out = prep
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    for args, message in [
        (["--data", tmp_path / "nothing", "--out", tmp_path / "p"], "does not exist"),
        (["--data", data, "--out", tmp_path / "stuff"], "not a prepared dataset; choose a new --out"),
        (["--data", out, "--out", tmp_path / "p2"], "already a prepared dataset"),
    ]:
        r = run_main("prepare", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "mine"


def _damage_json(path, change):
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / "val" / "00001.json").write_text('{"labels": [0, 1'), "val/00001.json is unreadable"),
    (lambda out: _damage_json(out / "val" / "00000.json", lambda i: i["labels"].__setitem__(0, 7)),
     "val/00000.json is damaged: its labels are not one class index (0 to 2) per file"),
    (lambda out: _damage_json(out / "train" / "00002.json", lambda i: i["files"].pop()), "train/00002.json is damaged"),
    (lambda out: _damage_json(out / "alexnet-prepared.json", lambda m: m["splits"]["val"].__setitem__("shards", 9)),
     "val/00004.json is missing"),
    (lambda out: _damage_json(out / "alexnet-prepared.json", lambda m: m.pop("classes")),
     "alexnet-prepared.json is damaged"),
    (lambda out: _damage_json(out / "alexnet-prepared.json", lambda m: m.__setitem__("names", ["x"])),
     "alexnet-prepared.json is damaged"),
    (lambda out: (out / "alexnet-prepared.json").write_text("[1, 2]"), "alexnet-prepared.json is damaged"),
    (lambda out: (out / "train" / "00001.u8").unlink(), "train/00001.u8 cannot be read"),
    (lambda out: os.truncate(out / "val" / "00003.u8", 1000), "val/00003.u8 has 1000 bytes, expected"),
])
def test_a_damaged_store_is_one_line_naming_the_file(prep, tmp_path, damage, message):
    # As a store prepared before checksums (none in its marker) sees it: the checksums would name any of
    # these first (next test), and the checks behind them still hold.
    _, done = prep
    out = tmp_path / "prep"
    shutil.copytree(done, out)
    _damage_json(out / "alexnet-prepared.json", lambda m: [m.pop("crc32")] + [v.pop("crc32") for v in m["splits"].values()])
    damage(out)
    with pytest.raises(UserError, match=re.escape(message)):
        open_prepared(out)
    if "00001.u8" in message:   # and through a command: one line, exit 2
        r = run_main("train", "--data", out, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "4")
        # (train's first line says where it runs; the error is the last)
        assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def test_a_shard_cut_short_while_it_is_read_is_one_line_in_the_process_or_its_workers(prep, tmp_path):
    # A store truncated under a running train: a traceback before (OSError from the read, or torch's
    # "Caught OSError in DataLoader worker process 0" with the worker's), now one line and exit 2.
    import types

    from alexnet.cli import _run
    from alexnet.errors import CutShort, one_line

    _, done = prep
    out = tmp_path / "prep"
    shutil.copytree(done, out)
    images = PreparedImages(out, "train")
    images.__getitems__([0])                        # checked and opened: as a run that has begun
    shard = out / "train" / "00000.u8"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CutShort, match=r"00000.u8 ends \d+ bytes into a read of \d+ at byte \d+ \(cut short"):
        images.__getitems__(list(range(len(images))))
    # In a worker: torch raises it again with the worker's traceback in its message.
    loader = eval_loader(images, len(images), 0, 1, 1, pin_memory=False)
    with pytest.raises(CutShort) as caught:
        next(iter(loader))
    assert str(caught.value).startswith("Caught CutShort in DataLoader worker process 0")
    assert re.fullmatch(rf"{re.escape(str(shard))} ends \d+ bytes into a read of \d+ at byte \d+ \(cut short since "
                        r"it was written or indexed\?\)", one_line(caught.value)), one_line(caught.value)

    def fails(_):
        raise caught.value
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _run(types.SimpleNamespace(run=fails), "alexnet train") == 2
    assert err.getvalue() == f"alexnet train: error: {one_line(caught.value)}\n"


def test_any_flipped_bit_in_a_label_file_or_the_marker_is_refused_when_opened(prep, tmp_path):
    _, done = prep
    out = tmp_path / "prep"
    shutil.copytree(done, out)
    rng = np.random.default_rng(0)
    for name in ("alexnet-prepared.json", "val/00000.json", "train/00003.json"):
        path = out / name
        original = path.read_bytes()
        for bit in rng.choice(8 * len(original), 60, replace=False).tolist():
            damaged = bytearray(original)
            damaged[bit // 8] ^= 1 << (bit % 8)
            path.write_bytes(bytes(damaged))
            with pytest.raises(UserError, match=re.escape(str(path)) + " is (damaged|unreadable)"):
                open_prepared(out)
        path.write_bytes(original)
    assert len(open_prepared(out).splits["val"]) == 15   # and unharmed, it opens


@pytest.mark.parametrize("damage", [
    lambda out: (out / "alexnet-prepared.json").write_text("{garbage"),
    lambda out: [(out / "alexnet-prepared.json").unlink(), (out / "val" / "00001.json").write_text("not json")],
    lambda out: [(out / "alexnet-prepared.json").unlink(), (out / "train" / "00000.json").write_text("[1, 2]")],
    # Still valid JSON, a label changed: the intact marker's CRC-32 of that record no longer matches.
    lambda out: _damage_json(out / "val" / "00002.json",
                             lambda i: i["labels"].__setitem__(0, (i["labels"][0] + 1) % 3)),
    # A data file cut short or lost, its record intact: it was taken as done, and refused by every run.
    lambda out: os.truncate(out / "val" / "00003.u8", 1000),
    lambda out: (out / "train" / "00001.u8").unlink(),
])
def test_prepare_again_repairs_damaged_records(prep, tmp_path, damage):
    # What open_prepared refuses with "run alexnet prepare again": that run makes what is damaged again
    # (a shard whose record is unreadable counts as unfinished) and ends with the undamaged store's bytes.
    data, done = prep
    out = tmp_path / "prep"
    shutil.copytree(done, out)
    damage(out)
    prepare(data, out, workers=0, shard_size=4, progress=False)
    for path in sorted(done.rglob("*")):
        if path.is_file() and path.suffix != ".safetensors":
            assert (out / path.relative_to(done)).read_bytes() == path.read_bytes(), path


def test_prepare_again_repairs_a_jpeg_store_whose_data_was_cut_short(prep, tmp_path):
    data, _ = prep
    out = tmp_path / "prep"
    prepare(data, out, workers=0, shard_size=4, progress=False, store="jpeg")
    whole = out / "train" / "00002.jpg.bin"
    kept = whole.read_bytes()
    os.truncate(whole, len(kept) - 1)
    with pytest.raises(UserError, match=re.escape(f"{whole} has {len(kept) - 1} bytes, expected {len(kept)}; run "
                                                  "alexnet prepare again with the --data and --out it was made with")):
        open_prepared(out)
    prepare(data, out, workers=0, shard_size=4, progress=False, store="jpeg")
    assert whole.read_bytes() == kept and len(open_prepared(out).splits["train"]) == 15


def test_files_that_break_a_batch_or_a_name_are_skipped_or_kept(tmp_path):
    # A whole loader batch (64) of unreadable files in a raw store, a link to nothing, a file name that
    # is not UTF-8 (Latin-1 from an old archive): the unreadable ones are skipped with a warning as
    # training skips them, the readable one is kept under its own name.
    data = write_photos(tmp_path / "data", per_class=2, classes=("ant", "bee"))
    for i in range(64):
        (data / "val" / "ant" / f"empty{i:02d}.jpg").write_bytes(b"")
    (data / "train" / "bee" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    latin1 = os.fsdecode(b"na\xefve.jpg")
    shutil.copy(data / "train" / "ant" / "0.jpg", data / "train" / "ant" / latin1)
    prepare(data, tmp_path / "prep", workers=0, progress=False)
    store = open_prepared(tmp_path / "prep")
    splits = json.loads((tmp_path / "prep" / "alexnet-prepared.json").read_text())["splits"]
    assert {k: (v["images"], v["skipped"]) for k, v in splits.items()} == {"train": (5, 1), "val": (4, 64)}
    files = [str(path.relative_to(data / "train")) for path, _ in store.splits["train"].split.samples]
    assert os.path.join("ant", latin1) in files
    r = run_main("prepare", "--data", data, "--out", tmp_path / "prep")   # and again, from a command: done already
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_prepare_refuses_an_out_in_use_or_inside_the_data(prep, tmp_path):
    from alexnet.files import FolderLock

    data, _ = prep
    # The holder is named by its own command (a train's hold was called "another alexnet prepare").
    for what, said in (("train", "train"), ("prepare", "prepare"), ("", "command")):
        held = FolderLock(tmp_path / "busy", what)
        assert held.acquire()
        try:
            with pytest.raises(UserError, match=f"in use by another alexnet {said} \\(pid {os.getpid()}\\);"):
                prepare(data, tmp_path / "busy", workers=0, progress=False)
        finally:
            held.release()
    assert not (tmp_path / "busy").exists()   # refused: nothing written
    for inside in (data / "train" / "prep", data / "val"):
        with pytest.raises(UserError, match="lies inside"):
            prepare(data, inside, workers=0, progress=False)
    assert not (data / "train" / "prep").exists()
    (tmp_path / "file").write_text("x")
    r = run_main("prepare", "--data", data, "--out", tmp_path / "file")
    assert r.returncode == 2 and "is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_training_on_prep_ends_with_the_weights_of_training_on_the_folder(tmp_path):
    data = write_photos(tmp_path / "data", per_class=3, classes=("ant", "bee"))
    prepare(data, tmp_path / "prep", workers=0, progress=False)
    common = dict(epochs=1, batch_size=3, workers=0, precision="fp32", stats_images=0)
    a = train(resolve("demo", dict(common, data=str(data), out=str(tmp_path / "a"))))
    b = train(resolve("demo", dict(common, data=str(tmp_path / "prep"), out=str(tmp_path / "b"))))
    assert a["val_top1"] == b["val_top1"] and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    r = run_main("evaluate", "--checkpoint", tmp_path / "b" / "best.pt", "--data", tmp_path / "prep", "--json",
                 "--workers", 0)
    r2 = run_main("evaluate", "--checkpoint", tmp_path / "b" / "best.pt", "--data", data, "--json", "--workers", 0)
    assert r.returncode == r2.returncode == 0, r.stderr + r2.stderr
    a, b = json.loads(r.stdout), json.loads(r2.stdout)
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0 and a == b   # the same numbers, at their own speeds


def test_features_and_neighbours_read_a_prepared_split(prep):
    from alexnet.features import split_images

    data, out = prep
    fast, slow = split_images(out, "train"), split_images(data, "train")
    assert isinstance(fast, PreparedImages) and len(fast) == 15
    picked = fast.subset([7, 2])
    assert len(picked) == 2 and picked.path(0) == fast.path(7)
    image, label, _, _ = picked[0]
    assert torch.equal(image, fast[7][0]) and label == fast[7][1]
    batch = picked.__getitems__([1, 0])
    assert torch.equal(batch[0][0], fast[2][0]) and batch[1].tolist() == [fast[2][1], fast[7][1]]
    assert slow.path(slow.split.samples.index((fast.path(7), fast[7][1]))) == fast.path(7)


def test_a_changed_source_is_not_mixed_into_an_unfinished_prep(prep, tmp_path):
    data, _ = prep
    copy = tmp_path / "data"
    import shutil

    shutil.copytree(data, copy)
    out = tmp_path / "prep"
    prepare(copy, out, workers=0, shard_size=4, progress=False)
    (out / "alexnet-prepared.json").unlink()
    Image.new("RGB", (300, 200), (9, 9, 9)).save(copy / "train" / "ant" / "0.jpg")   # regenerated meanwhile
    with pytest.raises(UserError, match="00000.json was made from other files than .* holds now"):
        prepare(copy, out, workers=0, shard_size=4, progress=False)


@pytest.mark.parametrize("change, message", [
    (lambda data: [shutil.copytree(data / split / "cow", data / split / "dog") for split in ("train", "val")],
     "when it had 3 classes; it now has 1 class more (dog): prepare into a new --out, or delete {out} first"),
    (lambda data: [shutil.rmtree(data / split / "ant") for split in ("train", "val")],
     "when it had 3 classes; it now has 1 class fewer (ant): prepare into a new --out, or delete {out} first"),
    (lambda data: [(data / split / "ant").rename(data / split / "elk") for split in ("train", "val")],
     "when it had 3 classes; it now has 1 class more (elk) and 1 fewer (ant): prepare"),
])
def test_a_source_whose_classes_changed_is_refused_saying_how(tmp_path, change, message):
    data = write_image_folders(tmp_path / "data", {c: [(9, 9, 9)] for c in ("ant", "bee", "cow")})
    out = tmp_path / "prep"
    prepare(data, out, workers=0, progress=False)
    change(data)
    with pytest.raises(UserError, match=re.escape(f"{out} was prepared from {data} {message.format(out=out)}")):
        prepare(data, out, workers=0, progress=False)
    # Another folder is named as such, with the one it was prepared from.
    other = write_image_folders(tmp_path / "other", {c: [(9, 9, 9)] for c in ("ant", "bee", "cow")})
    with pytest.raises(UserError, match=re.escape(f"{out} was prepared from {data}, not {other}; choose a new "
                                                  f"--out (or give --data {data} to resume or redo it)")):
        prepare(other, out, workers=0, progress=False)


def test_the_data_to_give_again_is_quoted_for_the_shell(tmp_path):
    data = write_image_folders(tmp_path / "my data", {c: [(9, 9, 9)] for c in ("ant", "bee")})
    out = tmp_path / "prep"
    prepare(data, out, workers=0, progress=False)
    other = write_image_folders(tmp_path / "other", {c: [(9, 9, 9)] for c in ("ant", "bee")})
    with pytest.raises(UserError, match=re.escape(f"(or give --data '{data}' to resume or redo it)")):
        prepare(other, out, workers=0, progress=False)
