"""--small pad: images under 256 placed unscaled on a mean-coloured canvas, recorded in prepared stores, runs
and weights files, and a mismatch between a store and a run refused in one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from alexnet import AlexNet
from alexnet.config import resolve
from alexnet.data.decode import PAD_FILL, load_fixed, resize_center
from alexnet.data.sources import open_split
from alexnet.data.transforms import Normalize
from alexnet.errors import UserError
from alexnet.evaluate import class_probabilities
from alexnet.export import _metadata
from alexnet.predict import predict
from alexnet.train import train
from alexnet.weights import LoadedModel, load_model
from conftest import run_main as cli
from conftest import write_image_folders


def noise(path, width, height, seed=0, **save):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_100x60_image_sits_unscaled_at_the_centre_with_mean_coloured_borders(tmp_path):
    src = noise(tmp_path / "small.png", 100, 60)
    x = load_fixed(tmp_path / "small.png", small="pad").numpy()
    top, left = (256 - 60) // 2, (256 - 100) // 2
    assert x.shape == (256, 256, 3)
    assert np.array_equal(x[top:top + 60, left:left + 100], src)
    border = np.ones((256, 256), bool)
    border[top:top + 60, left:left + 100] = False
    assert (x[border] == PAD_FILL).all() and PAD_FILL == tuple(round(255 * m) for m in (0.485, 0.456, 0.406))
    # The default is the paper's rule, unchanged: the central 60x60 scaled up to 256x256.
    up = load_fixed(tmp_path / "small.png").numpy()
    assert np.array_equal(up, np.asarray(resize_center(Image.open(tmp_path / "small.png").convert("RGB"))))


def test_only_the_short_side_is_padded_and_large_images_are_untouched(tmp_path):
    src = noise(tmp_path / "tall.png", 100, 400)
    x = load_fixed(tmp_path / "tall.png", small="pad").numpy()
    assert np.array_equal(x[:, 78:178], src[72:328]) and (x[:, :78] == PAD_FILL).all()
    noise(tmp_path / "big.png", 300, 260)
    assert torch.equal(load_fixed(tmp_path / "big.png", small="pad"), load_fixed(tmp_path / "big.png"))
    # A small JPEG is decoded whole (no reduced DCT scale) before it is placed.
    jpeg = noise(tmp_path / "small.jpg", 120, 90, quality=95)
    assert np.array_equal(load_fixed(tmp_path / "small.jpg", small="pad").numpy()[83:173, 68:188], jpeg)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return write_image_folders(root / "data", {"cat": [(200, 40, 40), (180, 60, 20), (220, 90, 70)],
                                               "dog": [(30, 60, 200), (50, 90, 170), (40, 70, 210)]}, size=(100, 60))


@pytest.fixture(scope="module")
def stores(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    for small in ("pad", "upscale"):
        r = cli("prepare", "--data", folders, "--out", root / small, "--workers", 0, "--small", small)
        assert r.returncode == 0, r.stderr
    return root


def test_prepare_records_the_setting_and_stores_padded_images(folders, stores):
    meta = json.loads((stores / "pad" / "alexnet-prepared.json").read_text())
    assert meta["small"] == "pad"
    val = open_split(stores / "pad", "val")
    images, _, _, _ = val.__getitems__([0])
    assert val.small == "pad" and torch.equal(images[0], load_fixed(val.path(0), small="pad"))
    assert (images[0][0, 0] == torch.tensor(PAD_FILL, dtype=torch.uint8)).all()
    # Asked again with the other setting, into the same folder: refused, the store unchanged.
    r = cli("prepare", "--data", folders, "--out", stores / "pad", "--workers", 0)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--small pad" in r.stderr and "--small upscale" in r.stderr


@pytest.fixture(scope="module")
def pad_run(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(resolve("paper", dict(data=str(stores / "pad"), out=str(out), epochs=1, batch_size=3, workers=0,
                                precision="fp32", small="pad")))
    return out


def test_a_run_records_its_setting_and_its_network_carries_it(pad_run, tmp_path):
    assert yaml.safe_load((pad_run / "config.yaml").read_text())["small"] == "pad"
    assert load_model(pad_run / "best.pt").small == "pad"
    r = cli("export", "--checkpoint", pad_run / "best.pt", "--format", "safetensors",
            "--out", tmp_path / "w.safetensors")
    assert r.returncode == 0, r.stderr
    assert load_model(tmp_path / "w.safetensors").small == "pad"
    # torch.hub's model and an image-input ONNX file's contract say so too (the graph itself cannot pad).
    hub = torch.hub.load(str(Path(__file__).parents[1]), "alexnet", source="local", weights=str(pad_run / "best.pt"))
    assert hub.preprocessing["small"] == "pad"
    assert "padded with (124, 116, 104)" in _metadata(load_model(pad_run / "best.pt"), image_input=True)["input"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_store_and_a_run_that_disagree_are_one_line(stores, pad_run, tmp_path, command):
    if command == "train":   # a pad store, and the default (upscale) run
        r = cli("train", "--preset", "demo", "--data", stores / "pad", "--out", tmp_path / "r", "--epochs", 1)
    else:                    # a pad network on an upscale store
        r = cli("evaluate", "--checkpoint", pad_run / "best.pt", "--data", stores / "upscale", "--workers", 0)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    held, asked = ("pad", "upscale") if command == "train" else ("upscale", "pad")
    # The one flag that reads the store as it is comes first (training on it then is pad_run's own recipe).
    assert f"holds images prepared with --small {held}, and this run uses --small {asked}; give --small {held} to " \
           f"use them as they are, or prepare the data again with --small {asked} (into another folder), or give " \
           f"the image folders themselves" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
    if command == "evaluate":
        r = cli("evaluate", "--checkpoint", pad_run / "best.pt", "--data", stores / "upscale", "--workers", 0,
                "--small", "upscale", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["images"] == 6, r.stderr
        # Dense views read the source files, so the store's setting does not matter.
        r = cli("evaluate", "--checkpoint", pad_run / "best.pt", "--data", stores / "upscale", "--workers", 0,
                "--views", "dense", "--scales", "256", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["images"] == 6, r.stderr


def test_evaluate_and_predict_see_images_as_the_network_was_trained(folders, stores, pad_run):
    on_store = cli("evaluate", "--checkpoint", pad_run / "best.pt", "--data", stores / "pad", "--workers", 0, "--json")
    on_files = cli("evaluate", "--checkpoint", pad_run / "best.pt", "--data", folders, "--workers", 0, "--json")
    assert on_store.returncode == on_files.returncode == 0, on_store.stderr + on_files.stderr
    a, b = json.loads(on_store.stdout), json.loads(on_files.stdout)
    assert a["top1"] == b["top1"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)



def test_features_from_python_see_images_as_the_network_was_trained(folders, stores, pad_run):
    # The README's extract_features(load_model(F), split_images(DATA, "train")) opened the folders with the
    # default (upscale) and gave other features than `alexnet features` for a pad network, silently.
    from alexnet.features import extract_features, split_images

    loaded = load_model(pad_run / "best.pt")
    as_readme = extract_features(loaded, split_images(folders, "train"), "pool5", workers=0, progress=False)
    padded = extract_features(loaded, open_split(stores / "pad", "train"), "pool5", workers=0, progress=False)
    torch.testing.assert_close(as_readme.features, padded.features, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match=r"--small upscale, and this run uses --small pad \(as the network was "
                                        r"trained\); prepare the data again with --small pad"):
        extract_features(loaded, open_split(stores / "upscale", "train"), workers=0, progress=False)


def test_a_run_whose_setting_is_not_small_s_to_change_is_not_told_to_give_it(stores, pad_run, tmp_path):
    # Fine-tuning keeps the setting of its weights, and refuses a --small that asks for another.
    with pytest.raises(UserError, match=r"--small upscale, and this run uses --small pad \(as --weights .*best.pt was "
                                        r"trained: fine-tuning keeps it\); prepare the data again with --small pad"):
        train(resolve("demo", dict(data=str(stores / "upscale"), out=str(tmp_path / "ft"), weights=str(pad_run /
                                   "best.pt"), epochs=1, batch_size=3, workers=0, precision="fp32")))
    assert not (tmp_path / "ft").exists()
    # A resumed run keeps the setting it was started with, and refuses a --small that asks for another.
    from alexnet.train import _open_data

    config = resolve("demo", dict(data=str(stores / "pad"), out=str(tmp_path / "r")))
    with pytest.raises(UserError, match=r"--small pad, and this run uses --small upscale \(as .*r was started: a "
                                        r"resumed run keeps it\); prepare the data again with --small upscale"):
        _open_data(config, None, resumed=True)


def test_predict_pads_for_a_network_trained_so(tmp_path):
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=4, init="kaiming").eval()
    norm = Normalize(torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 60.0, 60.0]))
    loaded = LoadedModel(model, list("abcd"), list("abcd"), 227, "channel", norm, small="pad")
    noise(tmp_path / "x.png", 100, 60)
    with torch.no_grad():
        expected = {small: class_probabilities(model, load_fixed(tmp_path / "x.png", small=small)[None], 227, norm)[0]
                    for small in ("pad", "upscale")}
    assert not torch.allclose(expected["pad"], expected["upscale"], rtol=1e-3)
    for small in ("pad", "upscale"):
        loaded.small = small
        got = next(predict(loaded, [tmp_path / "x.png"], topk=4))
        assert [i for i, _ in got.top] == expected[small].argsort(descending=True).tolist()
        assert [p for _, p in got.top] == pytest.approx(expected[small].sort(descending=True).values.tolist(),
                                                        rel=1e-5)


def test_dense_views_pad_a_small_image_before_scaling_it(tmp_path):
    from alexnet.dense import load_scaled

    src = noise(tmp_path / "x.png", 100, 60)
    at256, at320 = load_scaled(tmp_path / "x.png", (256, 320), 227, small="pad")
    # The 256x256 canvas, trimmed to 227x227 (14 pixels off the top and left): the image unscaled inside.
    assert tuple(at256.shape) == (227, 227, 3) and np.array_equal(at256.numpy()[84:144, 64:164], src)
    assert (at256[0, 0] == torch.tensor(PAD_FILL, dtype=torch.uint8)).all()
    assert tuple(at320.shape) == (291, 291, 3)   # the canvas scaled to 320, trimmed to 227 + 2 x 32
    assert tuple(load_scaled(tmp_path / "x.png", (256,), 227)[0].shape) == (227, 419, 3)   # upscaled: 427x256
