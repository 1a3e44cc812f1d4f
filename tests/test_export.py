"""Export: safetensors that every --checkpoint accepts, and ONNX models that compute what PyTorch does."""

import json

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.export import export
from alexnet.weights import load_model
from conftest import run_cli as cli
from test_weights import make_checkpoint


def test_cli_export_to_safetensors_predicts_as_the_checkpoint_does(tmp_path):
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "best.pt", normalization="mean-image", names=("a cat", "a dog"))
    r = cli("export", "--checkpoint", ckpt, "--out", tmp_path / "w.safetensors")   # format from the suffix
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{tmp_path / 'w.safetensors'}: safetensors, paper network, 2 classes, "
                                f"227x227 input, mean-image normalization")
    Image.new("RGB", (320, 280), (90, 140, 200)).save(tmp_path / "x.png")
    a = cli("predict", "--checkpoint", ckpt, tmp_path / "x.png", "--json")
    b = cli("predict", "--checkpoint", tmp_path / "w.safetensors", tmp_path / "x.png", "--json")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


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
