"""Mean image and RGB PCA against values computed by hand, and their cache."""

import hashlib

import numpy as np
import pytest
import torch

from alexnet.data import stats as stats_module
from alexnet.data.folders import FixedSizeImages, discover
from alexnet.data.stats import DataStats, compute_stats, fingerprint, load_or_compute_stats
from alexnet.errors import UserError
from conftest import write_image_folders


@pytest.fixture
def colour_set(tmp_path):
    # Flat colours resize to themselves, so every statistic has a closed form over the colour list.
    colours = {"a": [(250, 10, 10), (200, 40, 0), (90, 90, 90)], "b": [(0, 0, 255), (30, 200, 60), (120, 130, 140)]}
    root = write_image_folders(tmp_path / "data", colours, splits=("train",))
    all_colours = np.array(colours["a"] + colours["b"], dtype=np.float64)
    return FixedSizeImages(discover(root, splits=("train",)).splits["train"]), all_colours


def test_mean_image_and_pca_match_numpy(colour_set):
    ds, colours = colour_set
    s = compute_stats(ds, batch_size=4, workers=0, progress=False)
    assert s.images == 6 and s.mean_image.shape == (256, 256, 3)
    torch.testing.assert_close(s.mean_image, torch.tensor(colours.mean(0)).float().expand(256, 256, 3))
    # Every image has the same number of pixels, so the pixel covariance is the covariance of the colours.
    cov = np.cov(colours.T / 255.0, bias=True)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    np.testing.assert_allclose(s.eigvals.numpy(), vals, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.abs(s.eigvecs.numpy()), np.abs(vecs), atol=1e-5)  # up to sign
    np.testing.assert_allclose(s.channel_mean.numpy(), colours.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s.channel_std.numpy(), colours.std(0), rtol=1e-5)


def test_bad_files_are_left_out_and_an_all_bad_split_is_an_error(colour_set):
    ds, colours = colour_set
    ds.path(0).write_bytes(b"garbage")
    s = compute_stats(ds, batch_size=4, workers=0, progress=False)
    assert s.images == 5
    torch.testing.assert_close(s.mean_image[0, 0], torch.tensor(colours[1:].mean(0)).float())
    for i in range(len(ds)):
        ds.path(i).write_bytes(b"")
    with pytest.raises(UserError, match="no readable image"):
        compute_stats(ds, workers=0, progress=False)


def test_max_images_takes_an_evenly_spaced_subset(colour_set):
    ds, colours = colour_set
    s = compute_stats(ds, workers=0, max_images=2, progress=False)
    assert s.images == 2
    torch.testing.assert_close(s.mean_image[0, 0], torch.tensor(colours[[0, 5]].mean(0)).float())


def test_cache_is_reused_and_recomputed_when_files_change(colour_set, tmp_path, monkeypatch):
    ds, _ = colour_set
    cache = tmp_path / "run" / "data_stats.safetensors"
    first = load_or_compute_stats(ds, cache, workers=0, progress=False)
    assert cache.is_file()
    real = stats_module.compute_stats
    monkeypatch.setattr(stats_module, "compute_stats", lambda *a, **k: pytest.fail("recomputed"))
    again = load_or_compute_stats(ds, cache)
    torch.testing.assert_close(again.mean_image, first.mean_image)
    assert again.fingerprint == first.fingerprint and again.images == 6

    # A different file list, or a damaged cache, is recomputed.
    monkeypatch.setattr(stats_module, "compute_stats", real)
    ds.split.samples.pop()
    assert load_or_compute_stats(ds, cache, workers=0, progress=False).images == 5
    cache.write_bytes(b"not safetensors")
    assert load_or_compute_stats(ds, cache, workers=0, progress=False).images == 5
    assert DataStats.load(cache).images == 5



def test_a_cache_of_another_sample_is_recomputed_and_one_of_the_same_is_reused(colour_set, tmp_path, monkeypatch):
    # A fresh attempt with --stats-images 2 stopped before its first checkpoint left RUN's statistics of 2
    # images; its retry over every image took them as its own (only the files were matched).
    ds, colours = colour_set
    cache = tmp_path / "run" / "data_stats.safetensors"
    assert load_or_compute_stats(ds, cache, workers=0, progress=False, max_images=2).images == 2
    assert DataStats.load(cache).sample == 2
    every = load_or_compute_stats(ds, cache, workers=0, progress=False)
    assert every.images == 6 and DataStats.load(cache).sample == 0
    torch.testing.assert_close(every.mean_image[0, 0], torch.tensor(colours.mean(0)).float())
    # The same sample again, or one of at least the set's size (every image), is found; so is a file written
    # before the sample was recorded (its metadata without it), as it was then.
    monkeypatch.setattr(stats_module, "compute_stats", lambda *a, **k: pytest.fail("recomputed"))
    for asked in (None, 6, 100):
        assert load_or_compute_stats(ds, cache, max_images=asked).images == 6
    older = DataStats.load(cache)
    older.sample = None
    older.save(cache)
    assert DataStats.load(cache).sample is None and load_or_compute_stats(ds, cache, max_images=3).images == 6

def _fingerprint_as_written(ds) -> str:
    # The cache's key as caches written before hold it: version, size, then "relative path<TAB>label" lines.
    text = f"v1 size={ds.size}\n" + "".join(f"{p.relative_to(ds.split.root)}\t{label}\n"
                                            for p, label in ds.split.samples)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("root", ["absolute", "relative", "dot"])
def test_the_fingerprint_is_the_file_lists_hash_wherever_the_data_was_given(tmp_path, monkeypatch, root):
    write_image_folders(tmp_path / "data", {"a": [(1, 2, 3)] * 3, "b b": [(4, 5, 6)] * 2}, splits=("train",))
    given = {"absolute": tmp_path / "data", "relative": "data", "dot": "."}[root]
    monkeypatch.chdir(tmp_path / "data" if root == "dot" else tmp_path)
    ds = FixedSizeImages(discover(given, splits=("train",)).splits["train"])
    assert fingerprint(ds) == _fingerprint_as_written(ds)
    assert fingerprint(ds) == fingerprint(ds)   # asked again: the same, from the record
    ds.split.samples.pop()                      # another list: computed anew
    assert fingerprint(ds) == _fingerprint_as_written(ds)


def test_shared_out_over_processes_the_sums_give_one_process_statistics(colour_set):
    # Three processes, played one after another: each sums every third image, and the "all-reduce" adds
    # the other two's sums, as torch.distributed would; every one ends with the numpy statistics.
    ds, colours = colour_set
    parts = {}

    def keep(rank):
        def all_sum(t):
            parts[rank] = t.clone()
            return t
        return all_sum

    for rank in (1, 2):
        compute_stats(ds, batch_size=2, workers=0, progress=False, rank=rank, world=3, all_sum=keep(rank))
    s = compute_stats(ds, batch_size=2, workers=0, progress=False, rank=0, world=3,
                      all_sum=lambda t: t + parts[1] + parts[2])
    assert s.images == 6
    torch.testing.assert_close(s.mean_image, torch.tensor(colours.mean(0)).float().expand(256, 256, 3))
    np.testing.assert_allclose(s.channel_std.numpy(), colours.std(0), rtol=1e-5)
    vals = np.linalg.eigvalsh(np.cov(colours.T / 255.0, bias=True))[::-1]
    np.testing.assert_allclose(s.eigvals.numpy(), vals, rtol=1e-5, atol=1e-7)


def test_stats_images_where_no_pass_runs_or_the_store_brings_its_statistics_is_refused(tmp_path, monkeypatch):
    # A statistics pass over N images happens only where the run computes statistics from image files: not
    # with ImageNet's fixed normalisation and no PCA noise, nor on a prepared store (prepare's, over all).
    import alexnet.train as train_module
    from alexnet.data.prepare import prepare
    from conftest import run_main

    colours = {cls: [(40 * i, 200 - 30 * i, 90 + 10 * i) for i in range(4)] for cls in ("a", "b", "c")}
    data = write_image_folders(tmp_path / "data", colours, size=(40, 40))
    prepare(data, tmp_path / "prep", workers=0, progress=False)
    monkeypatch.setattr(train_module, "compute_stats", lambda *a, **k: pytest.fail("a pass ran"))
    common = ["train", "--preset", "demo", "--epochs", 2, "--batch-size", 4, "--workers", 0]
    for flags, said in [
        (["--data", data, "--normalization", "imagenet", "--pca-noise", "none"],
         "--stats-images 5 sets the images of the statistics pass, and this run makes none (--normalization "
         "imagenet is fixed and --pca-noise is none); leave --stats-images out\n"),
        (["--data", tmp_path / "prep"],
         f"--stats-images 5 sets the images of the statistics pass, and {tmp_path / 'prep'} is a prepared store: "
         f"its statistics are prepare's, over all its 12 training images, and no pass runs; leave"),
    ]:
        r = run_main(*common, *flags, "--stats-images", 5, "--out", tmp_path / "run")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"alexnet train: error: {said}"), r.stderr
        assert not (tmp_path / "run").exists()
    # Where a pass runs over the image folders it acts; 0 (all) or as many as the store holds is what prepare did.
    from alexnet.config import resolve
    from alexnet.data.sources import open_data
    from alexnet.train import _refuse_unread_settings
    for where, n in [(data, 5), (tmp_path / "prep", 0), (tmp_path / "prep", 12)]:
        config = resolve("demo", {"data": str(where), "stats_images": n})
        _refuse_unread_settings(config, open_data(where), None, {"stats_images": n})



def test_a_retry_with_another_stats_images_takes_its_own_pass(tmp_path):
    # RUN/data_stats.safetensors of an attempt that stopped before its first checkpoint: a fresh start with
    # other --stats-images computes its own; with the same, it takes the file.
    from alexnet.config import resolve
    from alexnet.data.sources import open_data
    from alexnet.distributed import Dist
    from alexnet.train import _statistics

    colours = {cls: [(40 * i, 200 - 30 * i, 90 + 10 * i) for i in range(3)] for cls in ("a", "b")}
    train_set = open_data(write_image_folders(tmp_path / "data", colours, size=(40, 40))).splits["train"]
    for n, images in [(2, 2), (0, 6), (2, 2), (2, 2)]:
        config = resolve("demo", {"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "workers": 0,
                                  "stats_images": n})
        assert _statistics(config, train_set, Dist()).images == images
        assert DataStats.load(tmp_path / "run" / "data_stats.safetensors").images == images

def test_the_mean_image_keeps_each_pixel_where_it_is(tmp_path):
    # Flat colours cannot tell a mirrored or transposed mean image: red ramps along the columns, green down
    # the rows, blue differs per image. Written at the fixed 256x256 size, PNG decodes to these exact values.
    from PIL import Image

    ramp = np.arange(256, dtype=np.uint8)
    arrays = []
    for cls, blues in {"a": (0, 90), "b": (200,)}.items():
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i, blue in enumerate(blues):
            a = np.empty((256, 256, 3), dtype=np.uint8)
            a[..., 0] = (ramp[None, :].astype(np.int64) + 40 * i) % 256
            a[..., 1] = ramp[::-1, None] // (len(arrays) + 1)
            a[..., 2] = blue
            Image.fromarray(a).save(tmp_path / "data" / "train" / cls / f"{i:03d}.png")
            arrays.append(a)
    ds = FixedSizeImages(discover(tmp_path / "data", splits=("train",)).splits["train"])
    s = compute_stats(ds, batch_size=2, workers=0, progress=False)
    decoded = np.stack([np.asarray(Image.open(ds.path(i)).convert("RGB"), dtype=np.float64) for i in range(len(ds))])
    np.testing.assert_array_equal(decoded, np.stack(arrays))   # the files, in the set's order
    assert s.images == 3
    np.testing.assert_allclose(s.mean_image.numpy(), decoded.mean(0), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(s.channel_mean.numpy(), decoded.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(s.channel_std.numpy(), decoded.std((0, 1, 2)), rtol=1e-5)
