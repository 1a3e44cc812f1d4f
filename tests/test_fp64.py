"""`train --precision fp64`: the float64 reference run that the distributed tests compare (conftest.SAME_RUN)."""

import json

import numpy as np
import pytest
import torch

from alexnet.config import resolve
from alexnet.evaluate import evaluate_checkpoint
from alexnet.train import train
from conftest import write_image_folders


def run(data, out, precision):
    # 4 images in one batch of 4: one step an epoch, so float32 has no steps in which to drift.
    return train(resolve("paper", dict(data=str(data), out=str(out), epochs=2, batch_size=4, lr=0.01, dropout=0.0,
                                       workers=0, precision=precision, log_every=1)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rng = np.random.default_rng(3)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2)] for c in ("red", "blue")}
    root = tmp_path_factory.mktemp("fp64")
    data = write_image_folders(root / "data", colours, size=(40, 30))
    return {p: (run(data, root / p, p), root / p) for p in ("fp32", "fp64")}, data


def test_weights_momentum_and_checkpoints_are_float64(runs):
    folder = runs[0]["fp64"][1]
    saved = torch.load(folder / "last.pt", weights_only=True)
    assert {t.dtype for t in saved["model"].values()} == {torch.float64}
    assert {s["momentum_buffer"].dtype for s in saved["optimizer"]["state"].values()} == {torch.float64}
    assert {t.dtype for t in torch.load(folder / "best.pt", weights_only=True)["model"].values()} == {torch.float64}


def test_it_is_the_float32_run_computed_wider(runs):
    # The same network to start (initialised in float32, then widened), the same batches: two steps later
    # the weights differ by float32's rounding only, and do differ: the arithmetic was float64.
    fp32 = torch.load(runs[0]["fp32"][1] / "last.pt", weights_only=True)["model"]
    fp64 = torch.load(runs[0]["fp64"][1] / "last.pt", weights_only=True)["model"]
    assert fp32.keys() == fp64.keys()
    for k in fp32:
        torch.testing.assert_close(fp64[k].float(), fp32[k], rtol=1e-4, atol=1e-6, msg=k)
        if k.endswith("weight"):
            assert not torch.equal(fp64[k].float(), fp32[k]), k


def test_its_checkpoint_evaluates_as_the_run_measured_it(runs):
    (result, folder), data = runs[0]["fp64"], runs[1]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_top1"])
    got = evaluate_checkpoint(folder / "best.pt", data, workers=0, progress=False)
    assert got["top1"] == pytest.approx(best["val_top1"]) == pytest.approx(result["best_top1"])
    assert got["loss"] == pytest.approx(best["val_loss"], rel=1e-5)   # the weights, evaluated in float32


def test_its_loss_is_summed_in_float64():
    # The step summed its parts' losses into a float32 zero: metrics.jsonl's train_loss of a 2-process and a
    # 1-process fp64 run differed in the 8th digit where their weights agreed to 1e-15.
    from alexnet import AlexNet
    from alexnet.data.transforms import Draws, Normalize, Preprocessing
    from alexnet.step import TrainStep, sgd

    cpu = torch.device("cpu")
    net = AlexNet("paper", num_classes=2).double()
    prep = Preprocessing(227, Normalize(torch.full((256, 256, 3), 118.0)), None)
    step = TrainStep(net, sgd(net, 0.01, 0.9, 0.0, cpu), prep, cpu, None, 2, accumulate=2)
    images = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = Draws.from_generator(2, 256, 256, 227, torch.Generator().manual_seed(1))
    assert step.forward_backward(images, torch.tensor([0, 1]), draws, 0.01).dtype == torch.float64
