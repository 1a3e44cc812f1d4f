"""Export: safetensors that every --checkpoint accepts, and ONNX models that compute what PyTorch does."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.export import export
from alexnet.model import AlexNet
from alexnet.weights import load_model
from conftest import run_main
from test_weights import make_checkpoint


def test_cli_export_to_safetensors_predicts_as_the_checkpoint_does(tmp_path):
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "best.pt", normalization="mean-image", names=("a cat", "a dog"))
    r = run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors")   # format from the suffix
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{tmp_path / 'w.safetensors'}: safetensors, paper network, 2 classes, "
                                f"227x227 input, mean-image normalization")
    Image.new("RGB", (320, 280), (90, 140, 200)).save(tmp_path / "x.png")
    a = run_main("predict", "--checkpoint", ckpt, tmp_path / "x.png", "--json")
    b = run_main("predict", "--checkpoint", tmp_path / "w.safetensors", tmp_path / "x.png", "--json")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_a_flipped_bit_in_an_export_is_refused_not_loaded_as_other_weights(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "w.safetensors"
    assert run_main("export", "--checkpoint", ckpt, "--out", out).returncode == 0
    good = out.read_bytes()
    header = 8 + int.from_bytes(good[:8], "little")
    for offset in (header, header + (len(good) - header) // 2, len(good) - 1):   # first, middle and last tensor bytes
        damaged = bytearray(good)
        damaged[offset] ^= 0x10
        out.write_bytes(bytes(damaged))
        r = run_main("predict", "--checkpoint", out, tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "is damaged" in r.stderr and "(CRC-32 mismatch); export it again" in r.stderr, r.stderr
    out.write_bytes(good)
    assert load_model(out).classes == load_model(ckpt).classes


def test_an_export_over_its_own_input_is_refused_and_last_pt_claims_no_accuracy(tmp_path):
    ckpt = make_checkpoint(tmp_path / "last.pt", changes={"epoch": 5, "best": {"top1": 0.75, "epoch": 3}})
    before = ckpt.read_bytes()
    r = run_main("export", "--checkpoint", ckpt, "--out", ckpt, "--format", "safetensors")
    assert r.returncode == 2 and "is the --checkpoint this command reads" in r.stderr and ckpt.read_bytes() == before
    # Epoch 5's weights are not the epoch-3 ones whose accuracy the run measured as its best.
    assert run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors").returncode == 0
    assert load_model(tmp_path / "w.safetensors").metrics == {}
    best = make_checkpoint(tmp_path / "best.pt")
    assert load_model(best).metrics == {"val_top1": 0.75, "epoch": 3}


def test_an_export_replaces_an_earlier_export_and_never_another_file(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    (tmp_path / "config.yaml").write_text("epochs: 90\n")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")   # as torch.onnx's files begin
    for out, fmt in ((other, "safetensors"), (tmp_path / "config.yaml", "onnx"), (tmp_path / "m.onnx", "safetensors")):
        before = out.read_bytes()
        r = run_main("export", "--checkpoint", ckpt, "--out", out, "--format", fmt)
        assert r.returncode == 2 and "exists and is not" in r.stderr and out.read_bytes() == before, r.stderr
    for _ in range(2):   # the second replaces the first's file
        assert run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors").returncode == 0
    # torchvision's weights too: a dataset's classes.txt given as --out by a slip stays as it was
    torch.save(AlexNet("owt", num_classes=1000).state_dict(), tmp_path / "tv.pth")
    r = run_main("import-torchvision", "--weights", tmp_path / "tv.pth", "--out", tmp_path / "config.yaml")
    assert r.returncode == 2 and (tmp_path / "config.yaml").read_text() == "epochs: 90\n", r.stderr
    r = run_main("import-torchvision", "--weights", tmp_path / "tv.pth", "--out", tmp_path / "w.safetensors",
                 "--classes", tmp_path)
    assert r.returncode == 2 and "--classes takes a text file" in r.stderr, r.stderr
    r = run_main("export", "--checkpoint", ckpt, "--out", "")   # an unset variable: not the current folder
    assert r.returncode == 2 and "is empty" in r.stderr, r.stderr


def test_a_full_disk_under_safetensors_is_one_line_and_the_earlier_export_stays(tmp_path, monkeypatch):
    import alexnet.weights

    ckpt = make_checkpoint(tmp_path / "best.pt")
    assert run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors").returncode == 0
    before = (tmp_path / "w.safetensors").read_bytes()

    def full_disk(tensors, filename, metadata=None):   # part of a file, then the disk is full
        Path(filename).write_bytes(b"part of a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(alexnet.weights, "save_safetensors", full_disk)
    r = run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors")
    said = f"alexnet export: error: could not write {tmp_path / 'w.safetensors'}: no space left on the device ("
    assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "the previous file is unchanged" in r.stderr
    assert (tmp_path / "w.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "w.safetensors"]


def test_export_needs_a_format_it_knows(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")  # the format is checked before the file is read
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "w.bin")]) == 2
    assert "cannot tell the format from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "w.bin"), "--format", "tflite"])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_onnx_model_matches_pytorch(variant, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ckpt = make_checkpoint(tmp_path / "best.pt", variant=variant, classes=("cat", "dog", "fox"))
    export(ckpt, "onnx", tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.onnx"]  # weights inside, no .data

    loaded = load_model(ckpt)
    size = loaded.crop
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 60  # a batch of 3, not 2
    with torch.no_grad():
        expected = loaded.model(x)
    # Exporting traces on fake tensors; none of them may leak into later eager calls (the LRN's cache).
    assert type(expected) is torch.Tensor
    expected = expected.numpy()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": x.numpy()})
    assert got.shape == (3, 3)
    diff = np.abs(got - expected).max()
    assert diff <= 1e-4 * max(1.0, np.abs(expected).max()), diff

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["variant"] == variant and json.loads(meta["classes"]) == ["cat", "dog", "fox"]
    prep = json.loads(meta["preprocessing"])
    assert prep["crop"] == size and prep["normalization"] == "channel"
    assert prep["mean"] == pytest.approx(loaded.norm.mean.tolist())
    assert prep["std"] == pytest.approx(loaded.norm.std.tolist())


# ---- ONNX with image input: predict's preprocessing inside the graph ----

def _readme_input(path):
    """The image-input model's input as the README makes it, with PIL alone (no alexnet code): shorter
    side to 256 (bilinear), centre 256x256, uint8 (256, 256, 3) RGB."""
    from PIL import Image, ImageOps

    img = Image.open(path)
    img.draft(None, (256, 256))   # as predict decodes a JPEG: at the smallest DCT scale that keeps 256
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(img.resize((256, 256), Image.Resampling.BILINEAR, box=box))


def _photos(folder):
    """Noisy gradients in different colours (so that a network tells them apart), in shapes that take each
    branch of the resize: wider, taller, square, smaller than 256 (upsampled), and a JPEG large enough
    to be decoded at half scale."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 60), (30, 60, 220), (230, 230, 230), (120, 90, 40)]
    sizes = [(320, 260), (240, 400), (256, 256), (150, 120), (640, 560)]
    paths = []
    for i, ((w, h), colour) in enumerate(zip(sizes, colours)):
        ramp = np.linspace(-60, 60, w)[None, :, None] + np.linspace(-30, 30, h)[:, None, None] * [1, -1, 0.5]
        pixels = np.clip(np.array(colour) + ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / (f"{i}.jpg" if w > 512 else f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module", params=[("paper", "mean-image"), ("owt", "channel")], ids=lambda p: p[1])
def image_onnx(request, tmp_path_factory):
    """(checkpoint, .onnx with image input, what `alexnet export` printed), exported through the CLI."""
    import contextlib
    import io

    pytest.importorskip("onnxscript")
    variant, normalization = request.param
    folder = tmp_path_factory.mktemp(normalization)
    torch.manual_seed(0)
    net = AlexNet(variant, num_classes=3, init="pytorch")
    with torch.no_grad():
        # Freshly initialised logits are ~0.1 and alike for every image; larger ones make the tolerance
        # below mean something and the top-1 differ between images.
        net.classifier[-1].weight *= 100
    ckpt = make_checkpoint(folder / "best.pt", variant=variant, normalization=normalization,
                           classes=("cat", "dog", "fox"), net=net)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", "--checkpoint", str(ckpt), "--out", str(folder / "m.onnx"), "--image-input"])
    assert code == 0
    return ckpt, folder / "m.onnx", out.getvalue()


def test_onnx_image_input_reproduces_predict(image_onnx, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from alexnet.data.decode import load_fixed
    from alexnet.data.transforms import center_view
    from alexnet.predict import predict

    ckpt, model_file, printed = image_onnx
    loaded = load_model(ckpt)
    crop, kind = loaded.crop, loaded.normalization
    assert printed.strip() == (f"{model_file}: onnx, {loaded.variant} network, 3 classes, uint8 256x256x3 image "
                               f"input, centre {crop}x{crop} crop and {kind} normalization inside")
    if kind == "mean-image":  # the point of the option: a mean that varies pixel by pixel
        assert loaded.norm.per_pixel and loaded.norm.mean.std() > 10
    paths = _photos(tmp_path)
    images = np.stack([_readme_input(p) for p in paths])                # batch 5: not the traced 2
    assert np.array_equal(images, np.stack([load_fixed(p).numpy() for p in paths]))

    # What `alexnet predict` computes: its probabilities, and the logits of its preprocessing.
    predicted = list(predict(loaded, paths, topk=3))
    expected_probs = np.zeros((len(paths), 3))
    for row, prediction in enumerate(predicted):
        for index, p in prediction.top:
            expected_probs[row, index] = p
    with torch.no_grad():
        expected = loaded.model(center_view(torch.from_numpy(images), crop, loaded.norm)).numpy()

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == \
           [("images", "tensor(uint8)", ["batch", 256, 256, 3])]
    logits, probs = session.run(["logits", "probabilities"], {"images": images})
    scale = np.abs(expected).max()  # the logits' own size: a fixed 1e-4 would hide errors in small logits
    assert np.abs(logits - expected).max() <= 1e-4 * scale, (np.abs(logits - expected).max(), scale)
    assert np.abs(probs - expected_probs).max() <= 1e-4, np.abs(probs - expected_probs).max()
    assert logits.argmax(1).tolist() == [prediction.top[0][0] for prediction in predicted]
    (one,) = session.run(["logits"], {"images": images[1:2]})
    assert np.abs(one[0] - logits[1]).max() <= 1e-5 * scale

    meta = {p.key: p.value for p in onnx.load(str(model_file), load_external_data=False).metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog", "fox"] and meta["input"].startswith(
        "images: uint8 (N, 256, 256, 3) RGB")
    assert json.loads(meta["preprocessing"])["crop"] == crop


def test_onnx_image_input_refuses_other_inputs(image_onnx):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(image_onnx[1]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"Unexpected input data type.*tensor\(float\).*tensor\(uint8\)"):
        session.run(None, {"images": np.zeros((1, 256, 256, 3), np.float32)})   # already scaled to float
    for shape in [(1, 3, 256, 256), (1, 227, 227, 3), (256, 256, 3)]:           # NCHW, a crop, no batch
        with pytest.raises(Exception, match="[Ii]nvalid (rank|dimensions) for input: images"):
            session.run(None, {"images": np.zeros(shape, np.uint8)})


def test_image_input_is_an_onnx_option(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")  # refused before the file is read
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "w.safetensors"), "--image-input"]) == 2
    err = capsys.readouterr().err
    assert "image input (--image-input) is an ONNX option" in err and err.count("\n") == 1


def test_the_library_writers_replace_only_what_they_wrote(tmp_path):
    # export() and save_weights() in Python refuse as the commands do: a photo, a run's last.pt, a config
    # given as the output by a slip stays as it was; an earlier export of the same kind is replaced.
    from alexnet.export import export_onnx
    from alexnet.errors import UserError
    from alexnet.weights import save_weights

    ckpt = make_checkpoint(tmp_path / "best.pt")
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    last = make_checkpoint(tmp_path / "last.pt", seed=1)
    loaded = load_model(ckpt)
    # "pytorch" in their first bytes, which was taken for an ONNX file from torch.onnx (and replaced)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pytorch-lightning==2.4\nnumpy\n")
    torch.save({"w": torch.zeros(3)}, tmp_path / "pytorch_model.bin")
    for out, write in ((photo, lambda o: save_weights(loaded, o)), (last, lambda o: export(ckpt, "safetensors", o)),
                       (photo, lambda o: export_onnx(loaded, o)), (last, lambda o: export(ckpt, "onnx", o)),
                       (requirements, lambda o: export_onnx(loaded, o)),
                       (tmp_path / "pytorch_model.bin", lambda o: export_onnx(loaded, o))):
        before = out.read_bytes()
        with pytest.raises(UserError, match="exists and is not"):
            write(out)
        assert out.read_bytes() == before
    for _ in range(2):
        save_weights(loaded, tmp_path / "w.safetensors")
    assert torch.equal(load_model(tmp_path / "w.safetensors").model.state_dict()["features.0.weight"],
                       loaded.model.state_dict()["features.0.weight"])


def test_a_failed_onnx_write_is_one_line_as_a_safetensors_one_is(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    ckpt = make_checkpoint(tmp_path / "best.pt")
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    r = run_main("export", "--checkpoint", ckpt, "--out", tmp_path / "notes.txt" / "m.onnx")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr == f"alexnet export: error: {tmp_path / 'notes.txt'} is a file, not a folder\n", r.stderr
    assert ".tmp" not in r.stderr   # the temporary file is no name the user gave

    earlier = tmp_path / "m.onnx"
    earlier.write_bytes(b"\x08\x07\x12\x07pytorch")   # an earlier export, as torch.onnx's files begin

    def full_disk(self, destination, **kwargs):   # part of a file, then the disk is full
        Path(destination).write_bytes(b"part of a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full_disk)
    r = run_main("export", "--checkpoint", ckpt, "--out", earlier)
    said = f"alexnet export: error: could not write {earlier}: no space left on the device (it needs about 2"
    assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "the previous file is unchanged" in r.stderr
    assert earlier.read_bytes() == b"\x08\x07\x12\x07pytorch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "m.onnx", "notes.txt"]


def test_an_onnx_export_from_a_folder_named_in_another_encoding_is_written(tmp_path):
    # The source (the checkpoint's path) went into the metadata as surrogates, which the ONNX writer cannot
    # encode: "could not write sur.onnx (Error calling serialize_model_into ...)". The safetensors export
    # writes such bytes as \xe9; so does the ONNX one now. A tiny network stands in for AlexNet (seconds less).
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from torch import nn

    from alexnet.data.transforms import Normalize
    from alexnet.export import export_onnx
    from alexnet.weights import LoadedModel

    folder = tmp_path / os.fsdecode(b"lat\xe9")
    folder.mkdir()
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.variant = "paper"
    loaded = LoadedModel(net, ["cat", "dog"], ["cat", "dog"], 8, "channel", Normalize.create("imagenet"),
                         source=str(folder / "best.pt"))
    export_onnx(loaded, folder / "sur.onnx")
    meta = {p.key: p.value for p in onnx.load_from_string((folder / "sur.onnx").read_bytes()).metadata_props}
    assert meta["source"] == f"{tmp_path}/lat\\xe9/best.pt" and meta["variant"] == "paper"
    assert sorted(p.name for p in folder.iterdir()) == ["sur.onnx"]
