"""Dense evaluation: scaling, the averaged probabilities against the original network on pool5's windows,
evaluate and predict with --views dense, exact under 2-process DDP, and its errors."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import AlexNet
from alexnet.data.transforms import Normalize
from alexnet.dense import dense_probabilities, load_scaled, scaled
from alexnet.weights import LoadedModel, save_weights
from conftest import evaluate_on_one_and_two, run_main

# (width, height): landscape, portrait, square, a panorama; sides from 90 to 700 pixels.
SIZES = [(300, 200), (180, 260), (256, 256), (700, 240), (90, 120)]


def noise_image(path, size, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 10 + 1, size[0] // 10 + 1, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """val/<a|b|c>/ with images of the SIZES, and a safetensors network for 3 classes."""
    root = tmp_path_factory.mktemp("dense")
    for c, cls in enumerate("abc"):
        (root / "val" / cls).mkdir(parents=True)
        for i, size in enumerate(SIZES[c:] + SIZES[:c]):
            noise_image(root / "val" / cls / f"{i}.png", size, 10 * c + i)
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=3, init="kaiming").eval()
    norm = Normalize(torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 60.0, 60.0]))
    loaded = LoadedModel(model, ["a", "b", "c"], ["a", "b", "c"], 227, "channel", norm)
    save_weights(loaded, root / "net.safetensors")
    return root, loaded


def test_an_image_is_scaled_to_its_shorter_side_and_trimmed_to_whole_strides():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    # 300x200 at 384: 576x384, trimmed to 227 + 32k: 547 wide (k=10), 355 high (k=4).
    x = scaled(img, 384, 227)
    assert tuple(x.shape) == (355, 547, 3) and x.dtype == torch.uint8
    # The same pixels as resizing the whole image and cropping its centre, within resampling noise.
    whole = np.asarray(img.resize((576, 384), Image.Resampling.BILINEAR)).astype(int)
    top, left = (384 - 355) // 2, (576 - 547) // 2
    diff = np.abs(x.numpy().astype(int) - whole[top:top + 355, left:left + 547])
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 12
    # owt's native side is 224: 224 + 32k.
    assert tuple(scaled(img, 256, 224).shape) == (256, 384, 3)
    assert tuple(scaled(img, 256, 227).shape) == (227, 355, 3)


def test_a_panorama_keeps_its_centre_at_four_times_the_scale():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 2000, 3), dtype=np.uint8))
    x = scaled(img, 256, 227)
    # 5120x256 in full; at most 4 x 256 = 1024 wide, trimmed to 227 + 32k: 995 x 227, from the centre.
    assert tuple(x.shape) == (227, 995, 3)
    whole = np.asarray(img.resize((5120, 256), Image.Resampling.BILINEAR)).astype(int)
    top, left = round((256 - 227) / 2), round((1024 - 995) / 2) + (5120 - 1024) // 2
    assert np.abs(x.numpy().astype(int) - whole[top:top + 227, left:left + 995]).max() <= 1
    strip = Image.new("RGB", (1, 5000), (10, 20, 30))   # 1 x 5000: not 256 x 1,280,000
    assert tuple(scaled(strip, 256, 227).shape) == (995, 227, 3)


def by_windows(model, image, norm):
    """The mean softmax over the original network applied to each 6x6 window of pool5: the definition of
    the dense score, without the fully-convolutional network."""
    x = ((image.float() - norm.mean) / norm.std).permute(2, 0, 1)[None]
    pool5 = model.features(x)
    h, w = pool5.shape[-2:]
    windows = torch.cat([pool5[:, :, i:i + 6, j:j + 6] for i in range(h - 5) for j in range(w - 5)])
    # All windows in one batch: the classifier's 58M weights read once, not once a window.
    return model.classifier(torch.flatten(windows, 1)).softmax(1).mean(0)


def test_dense_probabilities_are_the_mean_softmax_over_windows_mirrors_and_scales(folders):
    root, loaded = folders
    scales = (256, 320)
    paths = sorted((root / "val").rglob("*.png"))[:6]
    views = [load_scaled(p, scales, 227) for p in paths]
    got = dense_probabilities(loaded.model.to_fully_convolutional().eval(), views, loaded.norm,
                              torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        expected = torch.stack([
            sum(by_windows(loaded.model, x, loaded.norm) + by_windows(loaded.model, x.flip(1), loaded.norm)
                for x in image) / (2 * len(scales)) for image in views])
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert torch.allclose(got.sum(1), torch.ones(len(paths)), atol=1e-5)


def test_evaluate_and_predict_agree_on_dense_views(folders):
    root, _ = folders
    net = root / "net.safetensors"
    r = run_main("evaluate", "--checkpoint", net, "--data", root, "--workers", 0, "--views", "dense",
            "--scales", "256,320", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert (m["images"], m["crops"], m["scales"], m["skipped"]) == (15, "dense", [256, 320], 0)

    paths = sorted((root / "val").rglob("*.png"))
    r = run_main("predict", "--checkpoint", net, "--views", "dense", "--scales", "256,320", "--json", "--topk", 3,
            *paths)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    truth = [p.parent.name for p in paths]
    top1 = sum(row["predictions"][0]["class"] == t for row, t in zip(rows, truth)) / len(paths)
    assert m["top1"] == pytest.approx(top1)
    loss = -np.mean([np.log(next(x["probability"] for x in row["predictions"] if x["class"] == t))
                     for row, t in zip(rows, truth)])
    assert m["loss"] == pytest.approx(loss, rel=1e-4)

    r = run_main("evaluate", "--checkpoint", net, "--data", root, "--workers", 0, "--views", "dense", "--scales", "256")
    assert r.returncode == 0 and "15 images, dense at scale 256" in r.stdout and "ms per image" in r.stdout


@pytest.mark.processes
def test_two_processes_give_the_single_process_dense_numbers(folders):
    root, _ = folders
    a, b = evaluate_on_one_and_two("--checkpoint", root / "net.safetensors", "--data", root, "--workers", 0,
                                   "--views", "dense", "--scales", "256,288")
    assert (b["images"], b["top1"], b["top5"], b["skipped"]) == (a["images"], a["top1"], a["top5"], a["skipped"])
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_an_unreadable_image_is_skipped_and_counted(folders, tmp_path):
    root, _ = folders
    for cls in "ab":
        (tmp_path / "val" / cls).mkdir(parents=True)
        noise_image(tmp_path / "val" / cls / "0.png", (260, 240), 7)
    (tmp_path / "val" / "b" / "1.png").write_bytes(b"not a png")
    r = run_main("evaluate", "--checkpoint", root / "net.safetensors", "--data", tmp_path, "--workers", 0,
            "--views", "dense", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert (m["images"], m["skipped"], m["scales"]) == (2, 1, [256, 320, 384])
    assert "1.png" in r.stderr


def test_a_prepared_store_without_its_source_files_is_one_line(folders, tmp_path):
    root, _ = folders
    import shutil

    src = tmp_path / "src"
    shutil.copytree(root / "val", src / "val")
    shutil.copytree(root / "val", src / "train")
    r = run_main("prepare", "--data", src, "--out", tmp_path / "prep", "--workers", 0)
    assert r.returncode == 0, r.stderr
    args = ["evaluate", "--checkpoint", root / "net.safetensors", "--data", tmp_path / "prep", "--workers", 0,
            "--views", "dense", "--scales", "256", "--json"]
    r = run_main(*args)
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 15, r.stderr   # read from the sources
    shutil.rmtree(src)
    r = run_main(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "source files" in r.stderr and "prepared" in r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--views", "dense", "--scales", "200"], "of 227 (the network's input) to 2048 pixels"),
    (["--views", "dense", "--scales", "256,100000"], "of 227 (the network's input) to 2048 pixels"),
    (["--views", "dense", "--scales", "256,x"], "separated by commas"),
    (["--views", "dense", "--scales", "256,256"], "distinct"),
    (["--scales", "256"], "--scales is for --views dense"),
    (["--views", "dense", "--precision", "int8"], "float network"),
    (["--views", "5"], "expected 1, 10 or dense"),
])
def test_bad_dense_settings_are_one_line(folders, flags, message):
    root, _ = folders
    for command in (["evaluate", "--data", root], ["predict", root / "val" / "a" / "0.png"]):
        r = run_main(*command, "--checkpoint", root / "net.safetensors", *flags)
        assert r.returncode == 2 and message in r.stderr, (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 or "usage:" in r.stderr


def test_an_owt_file_with_a_smaller_crop_is_sized_by_the_networks_input(folders, tmp_path):
    # A file whose owt network was trained at crop 160 (load_model takes any from 63): its dense views were sized
    # by the crop, so that --scales 180, or trimming to 160 + 32 k, fed the fully-convolutional network less
    # than its 224 (a traceback, exit 1). Dense views do not depend on the crop: the same numbers as at 224.
    root, _ = folders
    torch.manual_seed(1)
    model = AlexNet("owt", num_classes=3).eval()
    norm = Normalize.create("imagenet")
    for crop in (160, 224):
        save_weights(LoadedModel(model, ["a", "b", "c"], ["a", "b", "c"], crop, "imagenet", norm),
                     tmp_path / f"owt{crop}.safetensors")
    got = {}
    for crop in (160, 224):
        r = run_main("evaluate", "--checkpoint", tmp_path / f"owt{crop}.safetensors", "--data", root, "--workers", 0,
                     "--views", "dense", "--scales", "230,300", "--json")
        assert r.returncode == 0, r.stderr
        got[crop] = json.loads(r.stdout)
        r = run_main("predict", "--checkpoint", tmp_path / f"owt{crop}.safetensors", "--views", "dense",
                     "--scales", "230,300", "--json", root / "val" / "a" / "0.png")
        assert r.returncode == 0, r.stderr
        got[crop, "predict"] = json.loads(r.stdout)
    assert got[160] == got[224] | {"seconds": got[160]["seconds"]} and got[160, "predict"] == got[224, "predict"]
    r = run_main("predict", "--checkpoint", tmp_path / "owt160.safetensors", "--views", "dense", "--scales", "180",
                 root / "val" / "a" / "0.png")
    assert r.returncode == 2 and "of 224 (the network's input)" in r.stderr, r.stderr


def test_a_float64_network_gives_dense_probabilities_in_float64(folders):
    # Its score maps were fed float32 images: "Input type (float) and bias type (double) should be the same".
    root, loaded = folders
    paths = sorted((root / "val").rglob("*.png"))[:3]
    views = [load_scaled(p, (256,), 227) for p in paths]
    fcn = loaded.model.to_fully_convolutional().eval()
    single = dense_probabilities(fcn, views, loaded.norm, torch.device("cpu"))
    double = dense_probabilities(copy.deepcopy(fcn).double(), views, loaded.norm, torch.device("cpu"))
    torch.testing.assert_close(double, single, rtol=0, atol=1e-5)


def test_predicting_and_extracting_features_leave_a_training_network_training(folders):
    # Both set the caller's network to eval mode and left it there: a fine-tuning loop that predicted between
    # steps went on without dropout. Their numbers are those of eval mode (dropout off) all the same.
    from alexnet.features import extract_features, split_images
    from alexnet.predict import predict

    root, loaded = folders
    paths = sorted((root / "val").rglob("*.png"))[:4]
    expected = [p.top for p in predict(loaded, paths)]
    features = extract_features(loaded, split_images(root, "val"), workers=0, progress=False).features
    loaded.model.train()
    try:
        assert [p.top for p in predict(loaded, paths)] == expected and loaded.model.training
        assert all(m.training for m in loaded.model.modules())
        again = extract_features(loaded, split_images(root, "val"), workers=0, progress=False).features
        assert torch.equal(again, features) and loaded.model.training
    finally:
        loaded.model.eval()
