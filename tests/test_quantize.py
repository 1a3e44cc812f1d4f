"""int8 inference: the quantized network gives the float network's logits within what 8-bit rounding allows,
leaves the caller's network alone, refuses a GPU, and `evaluate`/`predict --precision int8` agree with fp32.

Why the tolerance (not tuned on any CPU): x86's int8 kernels keep activations in 7 bits (reduce_range, so
that AVX2's 16-bit pair sums cannot overflow) and weights in 8. A rounding to steps of range/127 has an
RMS error of range / (127 sqrt 12) = 0.23% of the tensor's range. conv1-conv5, fc6 and fc7 each round their
weights and their outputs: 14 roundings, independent, so they add in quadrature to sqrt(14) 0.23% = 0.85% of
the range. Activation ranges (what the histogram observer keeps) are about 4x the activations' RMS, so the
logits move by about 3.4% of their spread on average: the tests allow twice that, 8%, and 30% for the worst
of 160 logits. The same rounding happens in AVX2 and AVX-512 kernels; only the order of integer sums, which
is exact, differs. A network calibrated on inputs 100x too small breaks both bounds (checked below), so
they can fail.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.decode import load_fixed
from alexnet.data.transforms import Normalize, center_view
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.quantize import quantize_int8, require_cpu
from conftest import run_main
from test_weights import make_checkpoint

MEAN_TOLERANCE, MAX_TOLERANCE = 0.08, 0.30     # of the float logits' standard deviation; see the docstring


def random_net(variant, seed=0, num_classes=10):
    torch.manual_seed(seed)
    return AlexNet(variant, num_classes=num_classes, init="kaiming").eval()


def inputs(n, size, seed):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def logit_errors(model, int8, x):
    """(mean, max) |int8 - float| logit error over x, in units of the float logits' standard deviation."""
    with torch.inference_mode():
        a, b = model(x), int8(x)
    assert b.shape == a.shape and b.dtype == torch.float32
    d = (a - b).abs() / a.std()
    return d.mean().item(), d.max().item(), (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_int8_logits_match_float_within_the_rounding_of_8_bits(variant):
    model = random_net(variant)
    size = model.input_size
    int8 = quantize_int8(model, [inputs(4, size, seed) for seed in (1, 2)])
    x = inputs(16, size, 3)
    mean, worst, agree = logit_errors(model, int8, x)
    assert mean < MEAN_TOLERANCE and worst < MAX_TOLERANCE, (mean, worst)
    # Random inputs to a random network leave some top-2 margins inside the error; most stay clear of it.
    assert agree >= 0.75
    # channels_last input (as evaluate's 10 views are) gives the same logits.
    with torch.inference_mode():
        assert torch.allclose(int8(x.contiguous(memory_format=torch.channels_last)), int8(x), atol=1e-4)


def test_tolerance_catches_a_badly_calibrated_network():
    model = random_net("paper")
    size = model.input_size
    int8 = quantize_int8(model, [inputs(4, size, 1) / 100])   # ranges 100x too narrow: everything clips
    mean, worst, _ = logit_errors(model, int8, inputs(16, size, 3))
    assert mean > MEAN_TOLERANCE and worst > MAX_TOLERANCE


def test_the_callers_network_is_left_as_it_was():
    model = random_net("paper")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    x = inputs(2, model.input_size, 5)
    with torch.inference_mode():
        expected = model(x)
    quantize_int8(model, [inputs(2, model.input_size, 1)])
    assert not model.training
    assert [type(m) for m in model.modules()] == modules                   # no observers or fused modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(x), expected)


def test_a_gpu_is_refused_in_one_line(capsys, monkeypatch, cli_data):
    with pytest.raises(UserError, match="CPU only") as e:
        require_cpu(torch.device("cuda"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="CPU only"):       # a network that is not on the CPU, whatever device
        quantize_int8(AlexNet("paper", num_classes=2).to("meta"), [])
    if torch.cuda.is_available():
        with pytest.raises(UserError, match="CPU only"):
            quantize_int8(AlexNet("paper", num_classes=2).cuda(), [])

    # The command line, as on a machine with CUDA: one line on stderr, exit status 2.
    import alexnet.device
    import alexnet.distributed   # before the patch: imported under it, it would keep the fake for later tests

    monkeypatch.setattr(alexnet.device, "pick_device", lambda setting="auto", local_rank=0: torch.device("cuda"))
    ckpt, data = cli_data
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "val"), "--precision", "int8",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CPU only" in err


# ---- the command line on a tiny dataset ----

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    """A paper network that tells 4 classes apart, and 4 images per class in train and val (a colour of
    the class's own under noise). Its conv and fc6-fc7 layers are random; fc8 is fitted to the training
    images' fc7 features by least squares, a linear probe, so that its top-1 on val is well above chance
    with real margins: what int8 must keep."""
    root = tmp_path_factory.mktemp("quantize")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(CLASSES):
            (root / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                colour = np.array([60 + 120 * (c % 2), 60 + 120 * (c // 2), 120])
                noise = rng.normal(0, 40, (48, 64, 3))
                pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "data" / split / cls / f"{i}.png")
    net = random_net("paper", num_classes=len(CLASSES))
    files = sorted((root / "data" / "train").rglob("*.png"))
    x = center_view(torch.stack([load_fixed(p) for p in files]), net.input_size, Normalize.create("imagenet"))
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in files])
    with torch.no_grad():
        fc7 = net.classifier[:-1](torch.flatten(net.features(x), 1))
        design = torch.cat([fc7, torch.ones(len(fc7), 1)], 1).double()
        target = 4.0 * torch.nn.functional.one_hot(labels, len(CLASSES)).double()
        fit = torch.linalg.pinv(design) @ target
        net.classifier[-1].weight.copy_(fit[:-1].T)
        net.classifier[-1].bias.copy_(fit[-1])
    ckpt = make_checkpoint(root / "net.pt", classes=CLASSES, net=net)
    return ckpt, root / "data"


def test_cli_evaluate_int8_gives_the_fp32_accuracy(cli_data):
    ckpt, data = cli_data
    runs = {p: run_main("evaluate", "--checkpoint", ckpt, "--data", data, "--workers", 0, "--json", "--precision", p,
                        *(["--calibration-images", 8] if p == "int8" else [])) for p in ("fp32", "int8")}
    for r in runs.values():
        assert r.returncode == 0, r.stderr
    r = run_main("evaluate", "--checkpoint", ckpt, "--data", data, "--precision", "fp32", "--calibration-images", 8)
    assert r.returncode == 2 and "--calibration-images is for --precision int8" in r.stderr, r.stderr
    fp32, int8 = (json.loads(runs[p].stdout) for p in ("fp32", "int8"))
    assert int8["images"] == fp32["images"] == 16 and fp32["top1"] >= 0.75    # the probe separates the classes
    assert abs(int8["top1"] - fp32["top1"]) <= 1 / 16 + 1e-9 and abs(int8["top5"] - fp32["top5"]) <= 1 / 16 + 1e-9
    assert int8["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    # What was evaluated is said: int8, and calibrated on how many images (all of train where it has fewer).
    assert int8["calibrated"] == 8 and "calibrated" not in fp32
    r = run_main("evaluate", "--checkpoint", ckpt, "--data", data, "--workers", 0, "--precision", "int8",
                 "--calibration-images", 1000)
    train = sum(1 for f in (data / "train").rglob("*") if f.is_file())
    assert r.returncode == 0 and f", int8 (calibrated on {train} training images)" in r.stdout.splitlines()[0], r.stdout


def test_the_calibration_count_is_of_the_images_read(cli_data, tmp_path):
    # Two unreadable training files were counted ("calibrated on 12" of 10 read).
    import shutil

    ckpt, data = cli_data
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    first = sorted(p for p in (copy / "train").iterdir() if p.is_dir())[0]
    (first / "empty.png").write_bytes(b"")
    (first / "text.png").write_text("not an image")
    train = sum(1 for f in (copy / "train").rglob("*") if f.is_file())
    r = run_main("evaluate", "--checkpoint", ckpt, "--data", copy, "--workers", 0, "--precision", "int8", "--json",
                 "--calibration-images", 1000)
    assert r.returncode == 0 and json.loads(r.stdout)["calibrated"] == train - 2, r.stdout + r.stderr
    for f in (copy / "train").rglob("*.png"):
        f.write_bytes(b"")
    r = run_main("evaluate", "--checkpoint", ckpt, "--data", copy, "--workers", 0, "--precision", "int8")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("no readable image to calibrate on")


def test_cli_evaluate_int8_calibrates_on_train_never_on_val(cli_data, tmp_path):
    ckpt, data = cli_data
    (tmp_path / "val").symlink_to(data / "val")
    r = run_main("evaluate", "--checkpoint", ckpt, "--data", tmp_path, "--workers", 0, "--precision", "int8")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "train" in r.stderr


def test_cli_predict_int8_gives_the_fp32_probabilities(cli_data):
    ckpt, data = cli_data
    images = data / "val"
    runs = {p: run_main("predict", "--checkpoint", ckpt, images, "--json", "--topk", 4, "--precision", p,
                   *(("--calibrate", data / "train") if p == "int8" else ())) for p in ("fp32", "int8")}
    for r in runs.values():
        assert r.returncode == 0, r.stderr
    fp32, int8 = ([json.loads(line) for line in runs[p].stdout.splitlines()] for p in ("fp32", "int8"))
    assert [r["path"] for r in int8] == [r["path"] for r in fp32] and len(fp32) == 16
    top = [a["predictions"][0]["class"] == b["predictions"][0]["class"] for a, b in zip(fp32, int8)]
    assert sum(top) >= 15
    for a, b in zip(fp32, int8):
        pa = {q["class"]: q["probability"] for q in a["predictions"]}
        pb = {q["class"]: q["probability"] for q in b["predictions"]}
        assert pb == pytest.approx(pa, abs=0.05)

    # Without --calibrate it calibrates on the images it predicts; --calibrate alone is refused.
    r = run_main("predict", "--checkpoint", ckpt, images / "a", "--precision", "int8")
    assert r.returncode == 0, r.stderr
    r = run_main("predict", "--checkpoint", ckpt, images / "a", "--calibrate", data / "train")
    assert r.returncode == 2 and "--calibrate is for --precision int8" in r.stderr


def test_int8_numbers_do_not_depend_on_the_batch_size(cli_data, monkeypatch):
    # --batch-size is a speed setting: evaluate's calibration at 1 image a batch and predict's at 5 (the same
    # 16 training images, decoded alike; batches of 3 in the calibration itself, so that both are split and
    # joined) give the same network.
    import alexnet.quantize
    from alexnet import evaluate, predict
    from alexnet.weights import load_model

    monkeypatch.setattr(alexnet.quantize, "CALIBRATION_BATCH", 3, raising=False)
    ckpt, data = cli_data
    loaded = load_model(ckpt)
    a, used = evaluate.int8_model(loaded, data, 16, batch_size=1, workers=0)
    b = predict.int8_model(loaded, sorted((data / "train").rglob("*.png")), 16, batch_size=5)
    x = center_view(torch.stack([load_fixed(p) for p in sorted((data / "val").rglob("*.png"))]), loaded.crop,
                    loaded.norm)
    with torch.inference_mode():
        assert used == 16 and torch.equal(a(x), b(x))
