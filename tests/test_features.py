"""Features: any layer's activations, batched, equal to a full forward pass's; the `features` command."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.decode import load_fixed
from alexnet.data.transforms import center_view
from alexnet.features import activations, extract_features, split_images
from alexnet.weights import load_model
from conftest import run_main
from conftest import write_image_folders
from test_weights import make_checkpoint

CLASSES = ("ant", "bee", "cow")


def noise_folders(root, per_class=3, seed=0):
    """Random-noise images (features far apart, unlike flat colours), 3 classes, train and val."""
    rng = np.random.default_rng(seed)
    write_image_folders(root, {c: [(0, 0, 0)] * per_class for c in CLASSES})
    for path in sorted(root.rglob("*.png")):
        Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def owt(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    ckpt = make_checkpoint(root / "owt.pt", variant="owt", classes=CLASSES)
    return ckpt, noise_folders(root / "data")


def hooked(model, x, layer):
    """``layer``'s output in a plain forward pass, copied before any in-place ReLU after it runs."""
    seen = {}
    def keep(module, inputs, output):       # returns None: a returned value would replace the output
        seen["out"] = output.clone()

    handle = model.layer(layer).register_forward_hook(keep)
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return seen["out"].flatten(1), logits


@pytest.mark.parametrize("layer", ["conv1", "pool5", "fc6", "fc7", "relu7", "fc8"])
def test_activations_equal_the_full_forward_pass(owt, layer):
    ckpt, data = owt
    loaded = load_model(ckpt)
    images = torch.stack([load_fixed(p) for p in sorted((data / "val").rglob("*.png"))[:3]])
    x = center_view(images, loaded.crop, loaded.norm)
    expected, logits = hooked(loaded.model, x, layer)
    got = activations(loaded.model, x, layer)
    assert got.shape == expected.shape and got.dim() == 2
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    if layer == "fc8":
        assert torch.allclose(got, logits, atol=1e-5)
    if layer == "fc7":
        assert (got < 0).any()          # taken before relu7, not after it


def test_batches_and_workers_do_not_change_the_features(owt):
    ckpt, data = owt
    loaded = load_model(ckpt)
    images = split_images(data, "val")
    one = extract_features(loaded, images, batch_size=1, workers=0, progress=False)
    many = extract_features(loaded, images, batch_size=4, workers=1, progress=False)
    assert one.features.shape == (9, 4096) and one.layer == "relu7"
    assert one.paths == many.paths == [p for p, _ in images.split.samples]
    assert one.labels.tolist() == many.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.allclose(one.features, many.features, atol=1e-5)
    assert (one.features >= 0).all()    # relu7: after the ReLU


def test_features_command_writes_npz_and_skips_unreadable_images(owt, tmp_path, monkeypatch):
    ckpt, data = owt
    (data / "train" / "bee" / "zz_broken.png").write_bytes(b"not a png")
    try:
        out = tmp_path / "f.npz"
        # --data as a user in its parent folder types it
        monkeypatch.chdir(data.parent)
        r = run_main("features", "--checkpoint", ckpt, "--data", data.name, "--split", "train", "--layer", "pool5",
                     "--out", out, "--batch-size", 4, "--workers", 0)
    finally:
        (data / "train" / "bee" / "zz_broken.png").unlink()
    assert r.returncode == 0, r.stderr
    assert "9 images, 1 unreadable skipped, 9216 values each" in r.stdout
    assert "zz_broken.png" in r.stderr and "Traceback" not in r.stderr
    with np.load(out) as f:
        assert f["features"].shape == (9, 256 * 6 * 6) and f["features"].dtype == np.float32
        assert f["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert list(f["classes"]) == list(CLASSES) and str(f["layer"]) == "pool5"
        assert "zz_broken.png" not in " ".join(f["paths"])
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in f["paths"])   # from any folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]     # no temporary file left


@pytest.mark.parametrize("args,fragment", [
    (["--layer", "fc9"], "has no layer 'fc9'"),
    (["--split", "test"], "has no test/ folder"),
    (["--split", ""], "'' is not a split"),
    (["--split", ".."], "'..' is not a split"),
])
def test_bad_feature_requests_exit_2_with_one_line(owt, tmp_path, capsys, args, fragment):
    ckpt, data = owt
    assert main(["features", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "f.npz"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_out_never_replaces_a_file_that_holds_no_features(owt, tmp_path, capsys):
    # --out naming the checkpoint by a slip (or any file of the user's) is refused before any work;
    # features written earlier are replaced.
    ckpt, data = owt
    kept = tmp_path / "net.pt"
    shutil.copy(ckpt, kept)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    array = tmp_path / "mine.npy"
    np.save(array, np.arange(3))
    cut = tmp_path / "cut.npz"   # an archive cut short: a zip header and no directory
    np.savez(cut, features=np.zeros((50, 100)), labels=np.zeros(50), layer=np.array("relu7"))
    cut.write_bytes(cut.read_bytes()[:2000])
    for out in (kept, notes, array, cut, tmp_path):
        before = None if out.is_dir() else out.read_bytes()
        assert main(["features", "--checkpoint", str(kept), "--data", str(data), "--out", str(out),
                     "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert any(m in err for m in ("holds no features", "is a folder", "is the --checkpoint this command reads")), err
        assert before is None or out.read_bytes() == before
    out = tmp_path / "f.npz"
    for _ in range(2):
        assert main(["features", "--checkpoint", str(kept), "--data", str(data), "--out", str(out),
                     "--layer", "pool5", "--workers", "0"]) == 0
    with np.load(out) as f:
        assert str(f["layer"]) == "pool5"


def test_activations_check_their_input_as_the_network_does(owt):
    # One image without its batch axis came back from conv1 as 96 "images" of 3025 values; a 224 input to
    # the paper network failed inside fc6. Both now say what model(x) says.
    model = load_model(owt[0]).model
    paper = __import__("alexnet.model", fromlist=["AlexNet"]).AlexNet("paper", num_classes=3).eval()
    with pytest.raises(ValueError, match="for one image use x\\[None\\]"):
        activations(model, torch.zeros(3, 224, 224), "conv1")
    with pytest.raises(ValueError, match="the paper network needs 227x227 input"):
        activations(paper, torch.zeros(1, 3, 224, 224), "fc6")
    assert activations(paper, torch.zeros(1, 3, 224, 224), "pool5").shape == (1, 256 * 5 * 5)   # what it is
    with pytest.raises(TypeError, match="floating-point images"):
        activations(model, torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "conv1")
