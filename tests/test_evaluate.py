"""Evaluation: 1 and 10 views against numbers worked out by hand, the CLI on a trained checkpoint, DDP."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from alexnet import distributed
from alexnet.config import resolve
from alexnet.data.folders import SkippedFiles
from alexnet.data.transforms import Normalize
from alexnet.evaluate import evaluate
from alexnet.train import train
from conftest import evaluate_on_one_and_two
from conftest import run_main
from conftest import write_image_folders

# ---- a model whose every output can be worked out on paper ----

# logits = M @ [r, g, 1], with r and g the fractions of pure-red and pure-green pixels in the view.
M = [[18.0, 0.0, 1.0],
     [0.0, 18.0, 0.8],
     [0.0, 0.0, 0.0],
     [0.0, 0.0, 2.0],
     [0.0, 0.0, 1.5],
     [0.0, 0.0, 0.5]]


class ColourScores(nn.Module):
    def forward(self, x):                                   # (N, 3, S, S), 0-255 (mean 0, no std)
        r = (x[:, 0] == 255).float().mean((1, 2))
        g = (x[:, 1] == 255).float().mean((1, 2))
        return torch.stack([r, g, torch.ones_like(r)], 1) @ torch.tensor(M).T


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def logits(r, g):
    return [row[0] * r + row[1] * g + row[2] for row in M]


def images():
    """256x256: A has red rows 0-31 (label 0), B green rows 224-255 (label 1), C is black (label 2)."""
    x = torch.zeros(3, 256, 256, 3, dtype=torch.uint8)
    x[0, :32, :, 0] = 255
    x[1, 224:, :, 1] = 255
    return x


class Unreadable:
    def path(self, index):
        return f"sample {index}"


def loader():
    x = images()
    # Two batches, the second with an unreadable sample (label -1), as the data loaders give them.
    return [(x[:2], torch.tensor([0, 1]), torch.tensor([0, 1]), ["", ""]),
            (torch.cat([x[2:], torch.zeros(1, 256, 256, 3, dtype=torch.uint8)]), torch.tensor([2, -1]),
             torch.tensor([2, 3]), ["", "broken"])]


def by_hand(per_image_probs, labels):
    top1 = top5 = loss = 0.0
    for p, y in zip(per_image_probs, labels):
        ranked = sorted(range(len(p)), key=lambda c: -p[c])
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
        loss += -math.log(p[y])
    n = len(labels)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n}


def run(crops):
    return evaluate(ColourScores(), loader(), SkippedFiles(Unreadable()), 192, Normalize(torch.zeros(3)),
                    distributed.Dist(), crops=crops)


def test_one_view_gives_the_hand_computed_numbers():
    # The centre 192 crop (rows 32-223) misses A's red rows and B's green rows: all three images give
    # softmax(M[:, 2]), whose order is classes 3, 4, 0, 1, 5, 2. Top-1: none right; top-5: A and B, not C.
    p = softmax(logits(0, 0))
    expected = by_hand([p, p, p], [0, 1, 2])
    assert (expected["top1"], expected["top5"]) == (0, 2 / 3)
    m = run(crops=1)
    assert (m["images"], m["skipped"]) == (3, 1)
    assert m["top1"] == expected["top1"] and m["top5"] == pytest.approx(expected["top5"])
    assert m["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_top5_counts_a_label_ranked_fifth_and_not_one_ranked_sixth():
    # Two black images: both give softmax(M[:, 2]), ranked 3, 4, 0, 1, 5, 2. Labelled 5 (5th, a top-5 hit)
    # and 2 (6th, a miss): top-5 is 1/2, where a top-4 would give 0 and a top-6 1.
    p = softmax(logits(0, 0))
    assert sorted(range(6), key=lambda c: -p[c]) == [3, 4, 0, 1, 5, 2]
    expected = by_hand([p, p], [5, 2])
    assert (expected["top1"], expected["top5"]) == (0, 1 / 2)
    black = [(torch.zeros(2, 256, 256, 3, dtype=torch.uint8), torch.tensor([5, 2]), torch.tensor([0, 1]), ["", ""])]
    m = evaluate(ColourScores(), black, SkippedFiles(Unreadable()), 192, Normalize(torch.zeros(3)),
                 distributed.Dist(), crops=1)
    assert (m["images"], m["skipped"]) == (2, 0)
    assert m["top1"] == expected["top1"] and m["top5"] == expected["top5"]
    assert m["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_ten_views_average_the_softmax_of_the_papers_views():
    # 192 crops of a 256 image start at row 0 (top-left, top-right), 64 (bottom corners) or 32 (centre);
    # each of the 5 comes twice (with its mirror image). A's 32 red rows are in the 4 views from row 0,
    # 32/192 = 1/6 of each; B's green rows in the 4 from row 64. Both move enough probability to their
    # own class to win; C stays last.
    none = softmax(logits(0, 0))
    a = [0.4 * u + 0.6 * v for u, v in zip(softmax(logits(1 / 6, 0)), none)]
    b = [0.4 * u + 0.6 * v for u, v in zip(softmax(logits(0, 1 / 6)), none)]
    expected = by_hand([a, b, none], [0, 1, 2])
    assert (expected["top1"], expected["top5"]) == (2 / 3, 2 / 3)
    m = run(crops=10)
    assert (m["images"], m["skipped"]) == (3, 1)
    assert m["top1"] == pytest.approx(expected["top1"]) and m["top5"] == pytest.approx(expected["top5"])
    assert m["loss"] == pytest.approx(expected["loss"], rel=1e-6)


class SureScores(ColourScores):   # the same scores 100 times over: a network sure of itself, right or wrong
    def forward(self, x):
        return 100 * super().forward(x)


@pytest.mark.parametrize("crops", [1, 10])
def test_the_loss_of_a_network_sure_of_a_wrong_class_is_its_cross_entropy_not_a_floor(crops):
    # C's class (2) scores 200 below the best: its probability, e^-200, is under float32's smallest (1e-45),
    # and a floor of 1e-12 made its loss 27.6 instead of 200.
    sure = [[100 * v for v in logits(r, g)] for r, g in ((0, 0), (1 / 6, 0), (0, 1 / 6))]
    def softmax64(z):
        top = max(z)
        e = [math.exp(v - top) for v in z]
        return [v / sum(e) for v in e]
    none, red, green = map(softmax64, sure)
    if crops == 1:
        expected = by_hand([none, none, none], [0, 1, 2])
    else:
        a, b = ([0.4 * u + 0.6 * v for u, v in zip(p, none)] for p in (red, green))
        expected = by_hand([a, b, none], [0, 1, 2])
    assert expected["loss"] > 60
    m = evaluate(SureScores(), loader(), SkippedFiles(Unreadable()), 192, Normalize(torch.zeros(3)),
                 distributed.Dist(), crops=crops)
    assert m["loss"] == pytest.approx(expected["loss"], rel=1e-6)


# ---- the command line on a trained checkpoint ----

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One paper-network epoch on 2 classes; 5 val images, so 2 processes get unequal shards (3 and 2)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_image_folders(root / "data", {"cat": [(200, 40, 40), (180, 60, 20), (220, 90, 70)],
                                               "dog": [(30, 60, 200), (50, 90, 170)]})
    train(resolve("paper", dict(data=str(data), out=str(root / "run"), epochs=1, batch_size=4, workers=0,
                                precision="fp32")))
    return data, root / "run"


def test_cli_evaluate_of_a_trained_checkpoint_matches_the_runs_own_validation(run_dir):
    data, run = run_dir
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", data, "--workers", 0, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (got["images"], got["crops"], got["skipped"]) == (5, 1, 0)
    assert got["top1"] == pytest.approx(logged["val_top1"]) and got["top5"] == pytest.approx(logged["val_top5"])
    assert got["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)

    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", data, "--workers", 0, "--crops", 10)
    assert r.returncode == 0, r.stderr
    assert "5 images, 10 views" in r.stdout and "top-1 accuracy" in r.stdout and "error" in r.stdout
    assert "top-5 accuracy 100.00%   error   0.00%   (the network knows 2 classes: all of them are in its top 5)" \
        in r.stdout


def test_a_prepared_store_reports_the_files_prepare_left_out_as_its_folder_does(run_dir, tmp_path):
    from alexnet.data.prepare import prepare

    data, run = run_dir
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    (folder / "val" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    prepare(folder, tmp_path / "store", workers=0, progress=False)
    said = {}
    for source in (folder, tmp_path / "store"):
        r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", source, "--workers", 0, "--json")
        assert r.returncode == 0, r.stderr
        said[source.name] = {k: v for k, v in json.loads(r.stdout).items() if k != "seconds"}
    assert said["store"] == said["data"] and (said["store"]["images"], said["store"]["skipped"]) == (5, 1)


@pytest.mark.processes
def test_two_processes_give_the_single_process_numbers(run_dir):
    data, run = run_dir
    a, b = evaluate_on_one_and_two("--checkpoint", run / "best.pt", "--data", data, "--workers", 0, "--crops", 10)
    assert (b["images"], b["top1"], b["top5"], b["skipped"]) == (a["images"], a["top1"], a["top5"], a["skipped"])
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize("views", ["1", "dense"])
def test_no_readable_image_is_an_error_not_an_accuracy(run_dir, tmp_path, views):
    _, run = run_dir
    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat" / "a.jpg").write_bytes(b"hello")
    (tmp_path / "val" / "cat" / "b.jpg").write_bytes(b"")
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", tmp_path, "--workers", 0, "--json",
                 "--views", views)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().splitlines()[-1].endswith("no readable image in " + str(tmp_path / "val") +
                                                      ": every file was skipped"), r.stderr


def test_file_names_with_control_characters_are_said_in_one_harmless_line(run_dir, tmp_path):
    data, run = run_dir
    data = shutil.copytree(data, tmp_path / "data")
    (data / "val" / "dog" / "bad\nname.jpg").write_bytes(b"")
    (data / "val" / "dog" / "\x1b[31mred.jpg").write_bytes(b"x")
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", data, "--workers", 0)
    warnings = [line for line in r.stderr.splitlines() if "skipping unreadable image" in line]
    assert r.returncode == 0 and len(warnings) == 2 and "\x1b" not in r.stderr, r.stderr
    assert any(line.endswith("bad\\nname.jpg: an empty file (0 bytes)") for line in warnings), warnings
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", tmp_path / "no\nsuch\x1b[2J")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no\\nsuch\\x1b[2J" in r.stderr, r.stderr


def test_a_subset_of_the_classes_is_matched_by_folder_name(run_dir, tmp_path):
    data, run = run_dir
    shutil.copytree(data / "val" / "dog", tmp_path / "val" / "dog")
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", tmp_path, "--workers", 0, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 2

    shutil.copytree(data / "val" / "dog", tmp_path / "val" / "wolf")
    r = run_main("evaluate", "--checkpoint", run / "best.pt", "--data", tmp_path, "--workers", 0)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "class folders the network has no output for: wolf" in r.stderr
