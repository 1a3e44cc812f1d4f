"""Prediction: top-k names and probabilities, bad files among good ones, and torchvision's own top-5."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from alexnet.data.decode import _reason
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.predict import as_dict, expand, format_prediction, predict, setup
from alexnet.weights import import_torchvision, load_model
from conftest import run_cli as cli
from conftest import deny, run_main
from test_weights import make_checkpoint

CLASSES, NAMES = ["a", "b", "c", "d"], ["apple", "banana", "cherry", "date"]
FC8_BIAS = [0.0, 1.0, 2.0, 3.0]


@pytest.fixture(scope="module")
def fixed_outputs(tmp_path_factory):
    """A network whose fc8 ignores its input: every image gets softmax(FC8_BIAS)."""
    root = tmp_path_factory.mktemp("predict")
    model = AlexNet("owt", num_classes=4)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.tensor(FC8_BIAS))
    ckpt = make_checkpoint(root / "fixed.pt", variant="owt", classes=CLASSES, names=NAMES, net=model)
    images = root / "images"
    images.mkdir()
    for name, colour in (("b.png", (10, 200, 30)), ("a.png", (200, 10, 30))):
        Image.new("RGB", (300, 260), colour).save(images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return ckpt, images


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_top_k_gives_class_names_and_probabilities(fixed_outputs):
    ckpt, images = fixed_outputs
    r = run_main("predict", "--checkpoint", ckpt, images / "a.png", "--topk", 3, "--json")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    got = json.loads(line)
    p = softmax(FC8_BIAS)
    assert got["path"] == str(images / "a.png")
    assert [(q["class"], q["name"]) for q in got["predictions"]] == [("d", "date"), ("c", "cherry"), ("b", "banana")]
    assert [q["probability"] for q in got["predictions"]] == pytest.approx([p[3], p[2], p[1]], abs=1e-6)

    r = run_main("predict", "--checkpoint", ckpt, images / "a.png", "--topk", 9)   # more than there are classes
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(images / "a.png") and len(lines) == 5
    assert lines[1].split() == ["1.", "date", "(d)", f"{100 * p[3]:.2f}%"]
    assert lines[4].split() == ["4.", "apple", "(a)", f"{100 * p[0]:.2f}%"]


def test_ten_views_and_batches_give_the_same_answers(fixed_outputs):
    ckpt, images = fixed_outputs
    loaded = load_model(ckpt)
    paths = expand([images])
    one = list(predict(loaded, paths, topk=2, crops=1, batch_size=1))
    ten = list(predict(loaded, paths, topk=2, crops=10, batch_size=8))
    assert [r.path for r in one] == [r.path for r in ten] == paths
    for a, b in zip(one, ten):
        assert a.error == b.error
        assert [i for i, _ in a.top] == [i for i, _ in b.top]
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-6)


def test_an_unreadable_file_is_named_and_the_others_are_still_predicted(fixed_outputs, tmp_path):
    ckpt, images = fixed_outputs
    r = run_main("predict", "--checkpoint", ckpt, images, tmp_path / "missing.png", "--json")
    assert r.returncode == 1
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == [str(images / "a.png"),
                                                                           str(images / "b.png")]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in r.stderr
    assert errors[0].startswith(f"alexnet predict: error: {images / 'broken.jpg'}: ")
    assert errors[1] == f"alexnet predict: error: {tmp_path / 'missing.png'}: no such file or directory"
    # As text, a blank line parts two images' blocks; a file that failed first left one before the first.
    r = run_main("predict", "--checkpoint", ckpt, tmp_path / "missing.png", images / "a.png", images / "b.png")
    assert r.returncode == 1 and r.stdout.startswith(f"{images / 'a.png'}\n") and r.stdout.count("\n\n") == 1, r.stdout


def test_when_no_image_can_be_read_the_exit_status_is_2(fixed_outputs, tmp_path):
    ckpt, images = fixed_outputs
    r = run_main("predict", "--checkpoint", ckpt, tmp_path / "missing.png", images / "broken.jpg")
    assert r.returncode == 2 and r.stdout == ""
    errors = r.stderr.splitlines()
    assert errors[0] == f"alexnet predict: error: {tmp_path / 'missing.png'}: no such file or directory"
    assert errors[1].startswith(f"alexnet predict: error: {images / 'broken.jpg'}: ") and len(errors) == 2
    # the file system's words for the other errors it gives (as root, a file without permissions is read)
    assert _reason(PermissionError(13, "Permission denied"), images / "broken.jpg") == "permission denied"
    assert _reason(OSError("image file is truncated"), images / "broken.jpg") == "OSError: image file is truncated"


# ---- the Python API ----

def test_a_plain_string_is_a_path_and_only_a_string_with_a_scheme_is_a_url(fixed_outputs):
    ckpt, images = fixed_outputs
    loaded = load_model(ckpt)
    p = softmax(FC8_BIAS)
    given = [str(images / "a.png"), images / "a.png", "http://example.com/a.png", "file:///tmp/a.png"]
    got = list(predict(loaded, given, topk=2))
    assert [r.path for r in got] == [images / "a.png", images / "a.png", "http://example.com/a.png",
                                     "file:///tmp/a.png"]
    for r in got[:2]:
        assert r.error == "" and [i for i, _ in r.top] == [3, 2]
        assert [q for _, q in r.top] == pytest.approx([p[3], p[2]], abs=1e-6)
    assert all(r.top == [] and r.error.startswith("a URL: nothing is fetched") for r in got[2:])


def test_a_folder_given_to_predict_is_named_as_a_folder_not_as_empty(fixed_outputs, tmp_path):
    ckpt, images = fixed_outputs
    (tmp_path / "empty").mkdir()
    with_images, empty = predict(load_model(ckpt), [images, str(tmp_path / "empty")])
    assert with_images.top == [] and with_images.error == \
        "a folder: give its image files (alexnet.predict.expand lists a folder's images)"
    assert empty.top == [] and empty.error == "no image files in this folder"


def test_a_folder_that_cannot_be_read_is_predicted_as_permission_denied(fixed_outputs, tmp_path, monkeypatch):
    # It was "no image files in this folder", and a folder in one given left out without a word.
    ckpt, images = fixed_outputs
    given = tmp_path / "given"
    shutil.copytree(images, given / "sub")
    (given / "a.png").symlink_to(images / "a.png")
    deny(monkeypatch, tmp_path / "closed", given / "sub")
    (tmp_path / "closed").mkdir()
    paths = expand([tmp_path / "closed", given])
    assert paths == [tmp_path / "closed", given / "a.png", given / "sub"]
    got = list(predict(load_model(ckpt), paths))
    assert [r.error for r in got] == ["permission denied", "", "permission denied"]


def test_a_failed_prediction_formats_and_serialises_with_its_reason(fixed_outputs, tmp_path):
    ckpt, images = fixed_outputs
    loaded = load_model(ckpt)
    good, bad = predict(loaded, [images / "a.png", tmp_path / "missing.png"], topk=1)
    assert format_prediction(loaded, bad) == f"{tmp_path / 'missing.png'}\n  error: no such file or directory"
    assert as_dict(loaded, bad) == {"path": str(tmp_path / "missing.png"), "predictions": [],
                                    "error": "no such file or directory"}
    # A good one keeps its shape: no "error" key, one ranked line per class.
    assert as_dict(loaded, good) == {"path": str(images / "a.png"), "predictions": [
        {"class": "d", "name": "date", "probability": pytest.approx(softmax(FC8_BIAS)[3], abs=1e-6)}]}
    assert format_prediction(loaded, good).splitlines()[1].split()[:3] == ["1.", "date", "(d)"]


@pytest.mark.parametrize("topk", [0, -1, True, 2.5, "3"])
def test_a_topk_that_is_not_a_positive_integer_is_refused_at_the_call(fixed_outputs, topk):
    ckpt, images = fixed_outputs
    with pytest.raises(ValueError, match=f"^topk must be a positive integer, got {re.escape(repr(topk))}$"):
        predict(load_model(ckpt), [images / "a.png"], topk=topk)   # not iterated: the call itself refuses


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(batch_size=2.5), "batch_size must be a positive integer, got 2.5"),
    (dict(crops=5), "crops must be 1, 10 or 'dense', got 5"),
    (dict(crops="dense", model=nn.Sequential()), "an int8 network has no form of"),
])
def test_other_arguments_are_refused_at_the_call(fixed_outputs, kw, message):
    # batch_size 0 ran everything as one batch; dense views with the int8 network ended in an AttributeError.
    ckpt, images = fixed_outputs
    with pytest.raises(ValueError, match=re.escape(message)):
        predict(load_model(ckpt), [images / "a.png"], **kw)


def test_setup_refuses_an_unknown_precision_in_one_line(fixed_outputs):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, int8, got 'fp8'"):
        setup(load_model(fixed_outputs[0]), "auto", "fp8")


def test_characters_the_output_cannot_encode_are_escaped_not_a_traceback(fixed_outputs, tmp_path):
    # An ASCII locale without Python's UTF-8 mode (LC_ALL=C PYTHONUTF8=0): an image named café ended the
    # table in a UnicodeEncodeError, exit 1. Escaped, as unprintable characters in paths already are.
    ckpt, images = fixed_outputs
    image = tmp_path / "caf\u00e9 \u65e5.png"
    shutil.copy(images / "a.png", image)
    r = cli("predict", "--checkpoint", ckpt, image, "--topk", "1", env=os.environ | {"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "caf\\xe9 \\u65e5.png" in r.stdout and "date (d)" in r.stdout


def test_a_numpy_integer_topk_is_a_topk(fixed_outputs):
    ckpt, images = fixed_outputs
    (r,) = predict(load_model(ckpt), [images / "a.png"], topk=np.int64(3))
    assert [i for i, _ in r.top] == [3, 2, 1]


# ---- torchvision's weights ----

def smooth_image(width, height):
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = [127 + 120 * np.sin(xx / width * 6), 127 + 120 * np.cos(yy / height * 5),
           (xx + yy) * 127 / (width + height) + 60]
    return Image.fromarray(np.stack(rgb, -1).astype(np.uint8))


@pytest.fixture(scope="module")
def torchvision_model(tmp_path_factory):
    """torchvision's alexnet, saved as its ImageNet weights file is: a bare state_dict in a .pth.

    Fresh weights give nearly uniform outputs; scaling every layer's weights by 2.5 spreads them (top-1
    near 0.3) so that the top-5 depends on the image and a mismatch in preprocessing would show.
    """
    root = tmp_path_factory.mktemp("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(2.5)
    torch.save(model.state_dict(), root / "alexnet-owt-test.pth")
    return model, root


@pytest.mark.parametrize("size,atol", [
    ((320, 256), 1e-5),   # shorter side already 256: both pipelines see exactly the same 224x224 pixels
    ((400, 300), 2e-3),   # resized: torchvision scales to 341x256, we to 256x256 of the centre square
])
def test_imported_torchvision_weights_predict_torchvisions_top5(torchvision_model, size, atol):
    model, root = torchvision_model
    out = root / "imported.safetensors"
    if not out.exists():
        r = run_main("import-torchvision", "--weights", root / "alexnet-owt-test.pth", "--out", out)
        assert r.returncode == 0, r.stderr
        assert "1000 classes, 224x224 input, imagenet normalization" in r.stdout
    image = root / f"{size[0]}x{size[1]}.png"
    smooth_image(*size).save(image)

    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    with torch.no_grad():
        expected = model(weights.transforms()(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    values, indices = expected.topk(5)
    assert values[0] > 0.1  # outputs spread enough for the top-5 to mean something

    r = run_main("predict", "--checkpoint", out, image, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["predictions"]
    assert [q["name"] for q in got] == [weights.meta["categories"][i] for i in indices.tolist()]
    assert [q["probability"] for q in got] == pytest.approx(values.tolist(), abs=atol)


def test_a_classes_file_names_the_class_folders(torchvision_model, tmp_path, capsys):
    from torchvision.models import AlexNet_Weights

    _, root = torchvision_model
    mapping = tmp_path / "LOC_synset_mapping.txt"
    # As ImageNet's file has them: torchvision's name among the synonyms (most of them; not all in the real one).
    rows = [(f"n{i:08d}", f"{name}, synonym {i}" if i % 5 else f"other {i}")
            for i, name in enumerate(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])]
    mapping.write_text("".join(f"{folder} {name}\n" for folder, name in rows))
    loaded = import_torchvision(root / "alexnet-owt-test.pth", mapping)
    assert loaded.classes[:2] == ["n00000000", "n00000001"] and loaded.names[0] == "tench"
    assert loaded.metrics == {}  # not the published file, so no published accuracy
    assert "warning" not in capsys.readouterr().err
    # The same file sorted by name: every output would get another class's folder.
    mapping.write_text("".join(f"{folder} {name}\n" for folder, name in sorted(rows, key=lambda row: row[1])))
    import_torchvision(root / "alexnet-owt-test.pth", mapping)
    assert "disagrees with the weights' own names at 9" in capsys.readouterr().err
    mapping.write_text("n0 a\n")
    with pytest.raises(UserError, match="names 1 classes; the weights have 1000 outputs"):
        import_torchvision(root / "alexnet-owt-test.pth", mapping)


def test_an_empty_image_argument_is_refused_not_read_as_the_current_folder(fixed_outputs, tmp_path, monkeypatch):
    ckpt, images = fixed_outputs
    monkeypatch.chdir(images)   # a folder of images, which "" must not stand for
    r = run_main("predict", "--checkpoint", ckpt, images / "broken.jpg", "")
    assert r.returncode == 2 and r.stdout == "" and "is empty (an unset shell variable?)" in r.stderr, r.stderr


def test_urls_are_not_fetched_and_control_characters_are_not_printed_raw(fixed_outputs, tmp_path):
    ckpt, images = fixed_outputs
    model = AlexNet("owt", num_classes=4)
    names = ["red\x1b[31m", "green", "blue\x07", "grey"]
    hostile = make_checkpoint(tmp_path / "hostile.pt", variant="owt", classes=CLASSES, names=names, net=model)
    odd = tmp_path / "odd\x1bname.png"
    Image.new("RGB", (300, 260), (5, 5, 5)).save(odd)
    r = run_main("predict", "--checkpoint", hostile, "http://example.com/a.jpg", odd, images / "broken.jpg",
                 "--topk", "4")
    assert r.returncode == 1
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout
    assert "red\\x1b[31m" in r.stdout and "blue\\x07" in r.stdout and "odd\\x1bname.png" in r.stdout
    errors = r.stderr.strip().splitlines()
    assert errors[0] == ("alexnet predict: error: http://example.com/a.jpg: a URL: nothing is fetched from the "
                         "network; download the image and give its path")
    assert errors[1].startswith(f"alexnet predict: error: {images / 'broken.jpg'}: ") and len(errors) == 2


def test_one_path_alone_is_one_image_not_one_per_character(fixed_outputs, tmp_path):
    # predict(loaded, "a.png") iterated the string: 5 "files" named a, ., p, n, g, each missing.
    from alexnet.viz.predictions import draw_predictions

    ckpt, images = fixed_outputs
    loaded = load_model(ckpt)
    for given in (str(images / "a.png"), images / "a.png"):
        (got,) = list(predict(loaded, given, topk=1))
        assert got.path == images / "a.png" and got.error == "" and got.top[0][0] == 3
    out, failed = draw_predictions(loaded, str(images / "a.png"), tmp_path / "p.png")
    assert out == tmp_path / "p.png" and failed == []
