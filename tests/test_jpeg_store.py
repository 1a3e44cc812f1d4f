"""`alexnet prepare --store jpeg`: each fixed image kept as a JPEG of exactly the raw store's pixels, read back
through an independent decoder's eyes, indexed, much smaller, resumable, refused when mixed with another
store (resuming: test_prepared.py), damaged entries skipped by name, and accepted by train and evaluate."""

import io
import json
import re
import shutil
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.folders import FixedSizeImages, SkippedFiles, discover
from alexnet.choices import QUALITY
from alexnet.data.jpeg import JpegBatch, decode, decodes_on
from alexnet.data.loader import train_loader
from alexnet.data.prepare import prepare
from alexnet.data.prepared import marker_checksum, open_prepared
from alexnet.data.stats import DataStats, find_stats, fingerprint, load_or_compute_stats
from alexnet.errors import UserError
from conftest import run_main

RAW_BYTES = 256 * 256 * 3


def write_pictures(root, per_class=4, classes=("ant", "bee", "cow")):
    """Smooth colour gradients under soft stripes, of varied sizes, as PNGs and JPEGs: they compress like
    photographs do (noise would not compress at all)."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(180, 400, 2))
                y, x = (a[..., None] for a in np.mgrid[0:h, 0:w] / max(h, w))
                angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2)
                stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
                pixels = rng.uniform(60, 190, 3) + rng.uniform(-60, 60, 3) * x + rng.uniform(-60, 60, 3) * y \
                    + rng.uniform(10, 40, 3) * stripes
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    (root / "classes.txt").write_text("ant an ant\nbee a bee\ncow a cow\n")
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg-store")
    data = write_pictures(root / "data")
    prepare(data, root / "raw", workers=0, shard_size=5, progress=False)
    prepare(data, root / "jpeg", workers=2, shard_size=5, progress=False, store="jpeg")   # encoded in workers
    return data, root / "raw", root / "jpeg"


def stored_jpegs(folder):
    """Every JPEG of a split's shards, cut out by the offsets of their .json: [(bytes, info, k)]."""
    out = []
    for index in sorted(folder.glob("*.json")):
        info = json.loads(index.read_text())
        data = index.with_suffix(".jpg.bin").read_bytes()
        out += [(data[a:b], info, k) for k, (a, b) in enumerate(zip(info["offsets"], info["offsets"][1:]))]
    return out


def pil_decode(blob):
    return torch.from_numpy(np.array(Image.open(io.BytesIO(blob)).convert("RGB")))


def test_the_jpegs_are_pils_encoding_of_the_raw_stores_pixels(stores):
    _, raw, jpeg = stores
    meta = json.loads((jpeg / "alexnet-prepared.json").read_text())
    assert (meta["store"], meta["quality"], meta["format"]) == ("jpeg", QUALITY, 2)
    pixels = open_prepared(raw).splits
    for split in ("train", "val"):
        blobs = stored_jpegs(jpeg / split)
        assert len(blobs) == len(pixels[split]) == 12
        for i, (blob, _, _) in enumerate(blobs):
            expected = io.BytesIO()
            Image.fromarray(pixels[split][i][0].numpy()).save(expected, "JPEG", quality=QUALITY, optimize=True)
            assert blob == expected.getvalue(), (split, i)


def test_read_back_pixels_are_what_an_independent_decoder_sees(stores):
    _, raw, jpeg = stores
    ours, exact = open_prepared(jpeg).splits["train"], open_prepared(raw).splits["train"]
    batch, labels, indices, errors = ours.__getitems__(list(range(len(ours))))
    assert batch.dtype == torch.uint8 and batch.shape == (12, 256, 256, 3) and errors == [""] * 12
    pil = torch.stack([pil_decode(blob) for blob, _, _ in stored_jpegs(jpeg / "train")])
    # PIL and torchvision both bundle libjpeg-turbo (bit-identical today); builds may differ in the IDCT
    # and chroma upsampling by a level or two at edges, never more on average.
    diff = (batch.int() - pil.int()).abs()
    assert diff.max() <= 4 and diff.float().mean() < 0.1
    # Against the raw pixels: at quality 90 the quantisation steps of the low frequencies are 2-3 levels
    # (libjpeg's tables x 0.2), so smooth images stay within about 1-2 levels of the original on average;
    # 4:2:0 chroma adds some at colour edges. The demo set measures 2.6; 3 bounds it.
    assert (batch.int() - exact.__getitems__(list(range(12)))[0].int()).abs().float().mean() < 3.0
    assert torch.equal(ours[7][0], batch[7]) and ours[7][1] == int(labels[7])


def test_labels_classes_names_and_files_are_the_raw_stores(stores):
    _, raw, jpeg = stores
    a, b = open_prepared(raw), open_prepared(jpeg)
    assert (b.classes, b.names) == (a.classes, a.names) == (["ant", "bee", "cow"], ["an ant", "a bee", "a cow"])
    for split in ("train", "val"):
        assert b.splits[split].split.samples == a.splits[split].split.samples
        assert torch.equal(b.splits[split].labels, a.splits[split].labels)
    ma, mb = (json.loads((p / "alexnet-prepared.json").read_text()) for p in (raw, jpeg))
    counts = [{k: {n: v[n] for n in ("images", "shards", "skipped")} for k, v in m["splits"].items()} for m in (ma, mb)]
    assert counts[0] == counts[1] and counts[0]["train"] == {"images": 12, "shards": 3, "skipped": 1}
    for shard in sorted((raw / "train").glob("*.json")):
        ia, ib = json.loads(shard.read_text()), json.loads((jpeg / "train" / shard.name).read_text())
        assert all(ia[k] == ib[k] for k in ("labels", "files", "skipped", "sources")), shard.name


def test_the_offsets_and_checksums_index_each_shard(stores):
    _, _, jpeg = stores
    for index in sorted((jpeg / "train").glob("*.json")):
        info = json.loads(index.read_text())
        data = index.with_suffix(".jpg.bin").read_bytes()
        offsets = info["offsets"]
        assert len(offsets) == len(info["labels"]) + 1 and offsets[0] == 0 and offsets[-1] == len(data)
        assert all(a < b for a, b in zip(offsets, offsets[1:]))
        for k, (a, b) in enumerate(zip(offsets, offsets[1:])):
            assert data[a:a + 2] == b"\xff\xd8" and data[b - 2:b] == b"\xff\xd9"   # JPEG's start and end markers
            assert zlib.crc32(data[a:b]) == info["crc32"][k]


def test_the_jpeg_store_is_at_least_5x_smaller(stores):
    _, raw, jpeg = stores
    raw_bytes = sum(p.stat().st_size for p in raw.glob("*/*.u8"))
    jpeg_bytes = sum(p.stat().st_size for p in jpeg.glob("*/*.jpg.bin"))
    assert raw_bytes == 24 * RAW_BYTES
    assert jpeg_bytes * 5 <= raw_bytes, f"{jpeg_bytes / 24:.0f} bytes an image"


def test_the_statistics_are_those_of_the_decoded_jpegs(stores):
    _, raw, jpeg = stores
    saved, raw_stats = (DataStats.load(p / "data_stats.safetensors") for p in (jpeg, raw))
    pil = torch.stack([pil_decode(blob) for blob, _, _ in stored_jpegs(jpeg / "train")]).double()
    torch.testing.assert_close(saved.mean_image.double(), pil.mean(0), rtol=0, atol=1e-3)
    assert saved.images == 12 and not torch.equal(saved.mean_image, raw_stats.mean_image)


def test_a_statistics_cache_of_one_store_is_not_taken_for_the_other(stores, tmp_path):
    # A run's cache (RUN/data_stats.safetensors) made from the raw store, then a run on the jpeg store of the
    # same files in that folder: the file lists match, the pixels do not.
    _, raw, jpeg = stores
    cache = tmp_path / "data_stats.safetensors"
    raw_train, jpeg_train = (open_prepared(p).splits["train"] for p in (raw, jpeg))
    assert load_or_compute_stats(raw_train, cache, workers=0, progress=False).images == 12
    own = DataStats.load(jpeg / "data_stats.safetensors")
    got = find_stats(jpeg_train, cache)   # the jpeg store's own statistics, copied over the raw one's
    assert torch.equal(got.mean_image, own.mean_image) and not torch.equal(got.mean_image, DataStats.load(
        raw / "data_stats.safetensors").mean_image) and DataStats.load(cache).fingerprint == own.fingerprint
    # The raw store's pixels are the decoded files': its fingerprint stays theirs (caches made before still match).
    folder = FixedSizeImages(discover(stores[0]).splits["train"])
    readable = folder.subset([i for i in range(len(folder)) if folder.path(i).name != "broken.jpg"])
    assert fingerprint(raw_train) == fingerprint(readable) != fingerprint(jpeg_train)


def test_another_store_or_quality_in_out_is_refused(stores, tmp_path):
    data, raw, jpeg = stores
    unfinished = tmp_path / "unfinished"
    shutil.copytree(jpeg, unfinished)
    (unfinished / "alexnet-prepared.json").unlink()
    for args, message in [
        (["--out", jpeg, "--store", "raw"], "holds a jpeg (quality 90) store, not the raw one"),
        (["--out", unfinished, "--store", "jpeg", "--quality", 80], "not the jpeg (quality 80) one asked for"),
    ]:
        r = run_main("prepare", "--data", data, *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for out, store, quality, message in [
        (raw, "jpeg", None, "holds a raw store, not the jpeg (quality 90) one"),
        (tmp_path / "new", "raw", 80, "--quality is for --store jpeg"),
        (tmp_path / "new", "jpeg", 101, "--quality must be 1 to 100"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            prepare(data, out, workers=0, shard_size=5, progress=False, store=store, quality=quality)
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="--store jpeg --quality 90 to resume"):
        prepare(data, unfinished, workers=0, shard_size=5, progress=False)
    # The same store and quality resumes it (nothing left to do but the marker).
    prepare(data, unfinished, workers=0, shard_size=5, progress=False, store="jpeg", quality=QUALITY)
    assert json.loads((unfinished / "alexnet-prepared.json").read_text()) == \
        json.loads((jpeg / "alexnet-prepared.json").read_text())


def test_markers_of_format_1_still_open_and_unknown_ones_are_refused(stores, tmp_path):
    _, raw, jpeg = stores
    old = tmp_path / "old"
    shutil.copytree(raw, old)
    meta = json.loads((old / "alexnet-prepared.json").read_text())
    assert (meta["format"], meta["store"]) == (1, "raw")   # raw stays format 1: older versions read it
    for part in [meta, *meta["splits"].values()]:          # as those versions wrote it: no store, no checksums
        part.pop("store", None)
        part.pop("crc32")
    (old / "alexnet-prepared.json").write_text(json.dumps(meta))
    assert torch.equal(open_prepared(old).splits["val"][3][0], open_prepared(raw).splits["val"][3][0])
    meta = dict(json.loads((jpeg / "alexnet-prepared.json").read_text()), format=1)   # intact, but not readable
    (old / "alexnet-prepared.json").write_text(json.dumps(dict(meta, crc32=marker_checksum(meta))))
    with pytest.raises(UserError, match=r"format 1 \(jpeg store\); this version reads format 1 \(raw\) and format 2"):
        open_prepared(old)


def test_a_damaged_jpeg_is_named_and_skipped(stores, tmp_path):
    _, _, jpeg = stores
    out = tmp_path / "jpeg"
    shutil.copytree(jpeg, out)
    info = json.loads((out / "train" / "00000.json").read_text())
    a, b = info["offsets"][2:4]
    data = bytearray((out / "train" / "00000.jpg.bin").read_bytes())
    data[(a + b) // 2] ^= 0x10                    # one bit inside the compressed data: it would still decode
    (out / "train" / "00000.jpg.bin").write_bytes(bytes(data))
    images = open_prepared(out).splits["train"]
    batch, labels, _, errors = images.__getitems__([1, 2, 3])
    assert labels[1] == -1 and labels[0] >= 0 and labels[2] >= 0 and errors[0] == errors[2] == ""
    assert "train/00000.jpg.bin is damaged" in errors[1] and not batch[1].any()
    stream = io.StringIO()
    skipped = SkippedFiles(images, stream=stream)
    kept = sum(len(skipped.keep(*batch)[1]) for batch in train_loader(images, 4, 0, 1, 0, 0, False))
    assert kept == 11 and stream.getvalue().count("skipping unreadable image") == 1
    assert str(images.path(2)) in stream.getvalue() and "damaged" in stream.getvalue()


@pytest.mark.parametrize("change", [lambda i: i["offsets"].pop(), lambda i: i.pop("crc32"),
                                    lambda i: i["offsets"].reverse(), lambda i: i.__setitem__("crc32", "x")])
def test_a_damaged_jpeg_index_is_one_line_naming_the_file(stores, tmp_path, change):
    _, _, jpeg = stores
    out = tmp_path / "jpeg"
    shutil.copytree(jpeg, out)
    info = json.loads((out / "val" / "00001.json").read_text())
    change(info)
    (out / "val" / "00001.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"val/00001.json is damaged: it is not the file prepare wrote"):
        open_prepared(out)
    # As a store prepared before the marker held checksums sees it:
    marker = json.loads((out / "alexnet-prepared.json").read_text())
    for part in [marker, *marker["splits"].values()]:
        part.pop("crc32")
    (out / "alexnet-prepared.json").write_text(json.dumps(marker))
    with pytest.raises(UserError, match=r"val/00001.json is damaged: its JPEG offsets or checksums do not fit"):
        open_prepared(out)


def test_decode_names_what_it_cannot_read_and_decodes_the_rest(stores):
    _, _, jpeg = stores
    (good, _, _), (other, _, _) = stored_jpegs(jpeg / "val")[:2]
    blobs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (good, b"\xff\xd8 garbage", good[:500], other)]
    images, errors = decode(blobs + [torch.empty(0, dtype=torch.uint8)], 256, device="cpu")
    assert errors[0] == errors[3] == "" and errors[4] == "no JPEG bytes"
    assert errors[1].startswith("not a readable JPEG: ") and errors[2].startswith("not a readable JPEG: ")
    assert torch.equal(images[0], pil_decode(good)) and torch.equal(images[3], pil_decode(other))
    assert not images[1:3].any() and not images[4].any()
    images, errors = decode([blobs[0]], 128)
    assert errors == ["256x256 pixels, expected 128x128"]


def test_batches_handed_over_encoded_decode_to_the_same_pixels(stores, monkeypatch):
    from alexnet.data import prepared

    _, _, jpeg = stores
    images = open_prepared(jpeg).splits["train"]
    assert images.decodes and images.for_device("cpu") is images       # a CPU: decoded in the workers
    # What a loop on a GPU with nvJPEG gets (here pretended): the JPEGs, decoded by moving them to the device.
    monkeypatch.setattr(prepared, "decodes_on", lambda device: device.type == "cuda")
    handed = images.for_device(torch.device("cuda"))
    assert not handed.decodes and images.decodes   # its loader's workers only read bytes (train.loader_workers)
    a = list(train_loader(handed, 4, rank=0, world=1, seed=5, workers=2, pin_memory=False))
    b = list(train_loader(images, 4, rank=0, world=1, seed=5, workers=0, pin_memory=False))
    assert len(a) == len(b) == 3
    for (xa, ya, ia, _), (xb, yb, ib, _) in zip(a, b):
        assert isinstance(xa, JpegBatch) and xa.shape == xb.shape
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa.to("cpu"), xb)
        keep = torch.tensor([True, False, True, True])
        assert torch.equal(xa[keep].to("cpu"), xb[keep])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_nvjpeg_decodes_within_a_level_of_libjpeg(stores):
    _, _, jpeg = stores
    images = open_prepared(jpeg).splits["train"]
    assert decodes_on(torch.device("cuda")), "torchvision cannot decode JPEGs on this GPU"
    for batch, _, indices, _ in train_loader(images.for_device("cuda"), 4, 0, 1, 0, 0, pin_memory=True):
        assert isinstance(batch, JpegBatch)
        on_gpu = batch.to("cuda", non_blocking=True)
        assert on_gpu.is_cuda and on_gpu.shape == (4, 256, 256, 3) and on_gpu.dtype == torch.uint8
        on_cpu = images.__getitems__(indices.tolist())[0]
        assert (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean() < 1.0


def test_cli_prepare_jpeg_then_train_and_evaluate(tmp_path):
    data = write_pictures(tmp_path / "data", per_class=2, classes=("ant", "bee"))
    prep = tmp_path / "prep"
    r = run_main("prepare", "--data", data, "--out", prep, "--store", "jpeg", "--quality", 85, "--workers", 0)
    assert r.returncode == 0, r.stderr
    assert "(jpeg store, quality 85): train 4 images (1 unreadable left out)" in r.stdout
    # In this process, with their loaders' default workers (2: the JPEGs decoded there, as on any CPU).
    r = run_main("train", "--preset", "demo", "--data", prep, "--out", tmp_path / "run", "--epochs", 1,
                 "--batch-size", 2, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    r = run_main("evaluate", "--checkpoint", tmp_path / "run" / "best.pt", "--data", prep, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 4
