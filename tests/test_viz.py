"""Pictures: each command writes a PNG of the expected size that is not blank; fc7 neighbours are exact."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.transforms import Normalize
from alexnet.features import extract_features, split_images
from alexnet.model import AlexNet
from alexnet.predict import predict
from alexnet.viz import curves, filters, neighbors, predictions
from alexnet.viz.figure import drawable
from alexnet.weights import LoadedModel, load_model
from conftest import run_cli as cli
from test_features import noise_folders
from test_weights import make_checkpoint

CLASSES, NAMES = ("ant", "bee", "cow"), ("an ant", "a bee", "a cow")


def assert_picture(path, size):
    """A valid PNG of ``size`` (width, height) pixels with something drawn on it."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        assert img.size == size
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10, "the picture is (nearly) blank"


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """One paper-network checkpoint (220 MB: the only one this file writes) and a small noise dataset."""
    root = tmp_path_factory.mktemp("viz")
    (root / "run").mkdir()
    ckpt = make_checkpoint(root / "run" / "best.pt", classes=CLASSES, names=NAMES)
    return ckpt, noise_folders(root / "data", per_class=4)


# ---- curves ----

def write_run(folder, lrs, schedule=None):
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "lr": lr, "train_loss": 2.3 / e, "val_loss": 2.4 / e, "val_top1": 1 - 0.9 / e,
             "val_top5": 1 - 0.5 / e, "images_per_sec": 30.0, "seconds": 40.0, "skipped": 0}
            for e, lr in enumerate(lrs, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if schedule:
        (folder / "config.yaml").write_text(f"schedule: {schedule}\nlr: {lrs[0]}\n")
    return folder


def cosine(epochs, base=0.01):
    return [base * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(1, epochs + 1)]


def test_lr_drops_are_plateau_and_step_drops_not_cosine_steps(tmp_path):
    step = [0.01] * 4 + [0.001] * 3 + [0.0001] * 2
    assert curves.lr_drops(curves.read_run(write_run(tmp_path / "step", step))) == \
        [(4, pytest.approx(10)), (7, pytest.approx(10))]
    # The last epochs of a cosine fall by more than 2x each, with no config.yaml to say it is a cosine.
    tail = cosine(10)
    assert tail[-1] < tail[-2] / 2
    assert curves.lr_drops(curves.read_run(write_run(tmp_path / "cos", tail))) == []
    assert curves.lr_drops(curves.read_run(write_run(tmp_path / "cos2", tail, "cosine"))) == []
    # Cosines of 2 and 3 epochs fall in their first pair of epochs with no flat stretch before it.
    for epochs in (2, 3):
        short = cosine(epochs)
        assert curves.lr_drops(curves.read_run(write_run(tmp_path / f"short{epochs}", short))) == []
    assert curves.lr_drops(curves.read_run(write_run(tmp_path / "warm", [0.01] + cosine(2)))) == []
    # A step schedule dividing by 10 every epoch is still read as drops.
    tens = [0.01, 0.001, 0.0001]
    assert [x for x, _ in curves.lr_drops(curves.read_run(write_run(tmp_path / "tens", tens)))] == [1, 2]
    # A plateau run says so in its config.yaml: every fall is a drop, however small its factor.
    halves = [0.01, 0.01, 0.005, 0.005, 0.004]
    assert [x for x, _ in curves.lr_drops(curves.read_run(write_run(tmp_path / "pl", halves, "plateau")))] == [2, 4]
    assert [x for x, _ in curves.lr_drops(curves.read_run(write_run(tmp_path / "guess", halves)))] == [2]


def test_curves_of_one_and_several_runs(tmp_path, capsys):
    a = write_run(tmp_path / "paper", [0.01] * 5 + [0.001] * 5, "plateau")
    b = write_run(tmp_path / "demo", cosine(8), "cosine")
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "lr": 0.0')          # a run still writing its next line
    assert main(["viz", "curves", "--run", str(a)]) == 0
    assert_picture(a / "curves.png", curves.SIZE)
    out = tmp_path / "both.png"
    capsys.readouterr()
    assert main(["viz", "curves", "--run", str(a), str(b / "metrics.jsonl"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_picture(out, curves.SIZE)
    assert len(curves.read_run(b).rows) == 8


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_epoch_axis_is_whole_epochs_even_for_one(tmp_path, monkeypatch, epochs):
    drawn = []
    monkeypatch.setattr(curves, "save", lambda fig, out: drawn.append(fig) or out)
    curves.draw_curves([curves.read_run(write_run(tmp_path / "run", [0.01] * epochs))], tmp_path / "c.png")
    for ax in drawn[0].axes:
        left, right = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if left <= t <= right]
        assert ticks and all(t == int(t) for t in ticks) and {1, epochs} <= set(ticks), ticks


def with_metrics(text):
    def make(folder):
        (folder / "metrics.jsonl").write_text(text)
        return folder
    return make


@pytest.mark.parametrize("make,fragment", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "has no metrics.jsonl"),
    (with_metrics(""), "holds no finished epoch"),
    (with_metrics('{"epoch": 1}\n'), "line 1: no number for lr"),
    (with_metrics("oops\n"), "line 1: not a JSON object"),
    (with_metrics('{"epoch": 1e308, "lr": 0.01, "train_loss": 1, "val_loss": 1, "val_top1": 0.5, "val_top5": 1}\n'),
     "line 1: epoch 1e+308 is not a whole number from 1 to 1,000,000"),
    (with_metrics('{"epoch": 1' + "0" * 400 + ', "lr": 0.01, "train_loss": 1, "val_loss": 1, "val_top1": 0.5, '
                  '"val_top5": 1}\n'), "line 1: epoch 1000"),
])
def test_curves_of_a_bad_run_exit_2_with_one_line(tmp_path, capsys, make, fragment):
    run = make(tmp_path)
    assert main(["viz", "curves", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "curves.png").exists()


# ---- filters ----

def test_filters_of_the_paper_network_beside_the_checkpoint(paper, capsys):
    ckpt, _ = paper
    assert main(["viz", "filters", "--checkpoint", str(ckpt)]) == 0
    assert capsys.readouterr().out.strip() == str(ckpt.parent / "filters.png")
    assert_picture(ckpt.parent / "filters.png", filters.figure_size(96, 11, 2))


def test_tower_1_fills_the_top_rows_and_tower_2_the_bottom():
    # Tower 1's kernels red, tower 2's blue, each with a ramp so its own range means something.
    ramp = np.linspace(0, 1, 11)[None, :, None, None] * np.ones((1, 11, 11, 1))
    kernels = np.concatenate([ramp * [1, 0, 0]] * 48 + [ramp * [0, 0, 1] * 5] * 48)
    image = filters.mosaic(filters.scale_each(kernels), towers=2)
    assert (image.shape[0], image.shape[1]) == filters._mosaic_size(96, 11, 2)
    redness = image[..., 0] - image[..., 2]          # white gaps: 0
    assert redness[: len(image) // 2].mean() > 0.3 and redness[len(image) // 2:].mean() < -0.3
    scaled = filters.scale_each(kernels)
    assert scaled.min() == 0 and scaled.max() == 1 and scaled[60].max() == 1   # each to its own range


def test_filters_of_the_owt_network_in_one_block(tmp_path):
    model = AlexNet("owt", num_classes=2, init="pytorch").eval()
    loaded = LoadedModel(model, ["a", "b"], ["a", "b"], 224, "imagenet", Normalize.create("imagenet"))
    out = filters.draw_filters(loaded, tmp_path / "owt.png")
    assert_picture(out, filters.figure_size(64, 11, 1))


def test_an_unreadable_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint at all")
    assert main(["viz", "filters", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a readable checkpoint" in err, err
    assert not (tmp_path / "filters.png").exists()


# ---- predictions ----

def test_predictions_draw_the_readable_images_and_name_the_others(paper, tmp_path, capsys):
    ckpt, data = paper
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "pred.png"
    r = cli("viz", "predictions", "--checkpoint", ckpt, data / "val" / "ant", data / "val" / "cow" / "000.png",
            tmp_path / "broken.jpg", tmp_path / "missing.png", "--out", out)
    assert r.returncode == 1
    assert r.stdout.strip() == str(out)
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in r.stderr
    assert errors[0].startswith(f"alexnet viz predictions: error: {tmp_path / 'broken.jpg'}: ")
    assert errors[1] == f"alexnet viz predictions: error: {tmp_path / 'missing.png'}: no such file or directory"
    assert_picture(out, predictions.figure_size(5))

    assert main(["viz", "predictions", "--checkpoint", str(ckpt), str(tmp_path / "broken.jpg"),
                 "--out", str(tmp_path / "none.png")]) == 2
    assert "nothing drawn" in capsys.readouterr().err and not (tmp_path / "none.png").exists()


def test_predictions_are_drawn_as_predict_computes_them_for_views_and_precision(paper, tmp_path, capsys,
                                                                                 monkeypatch):
    ckpt, data = paper
    asked = []
    real = predictions.predict

    def recorded(*args, **kwargs):
        results = list(real(*args, **kwargs))
        asked.append((kwargs, [r.top for r in results]))
        return iter(results)

    monkeypatch.setattr(predictions, "predict", recorded)
    image = data / "val" / "cow" / "000.png"
    for flags, crops, dtype in ((["--views", "10", "--precision", "bf16", "--device", "cpu"], 10, torch.bfloat16),
                                (["--crops", "dense", "--scales", "256", "--device", "cpu"], "dense", None)):
        assert main(["viz", "predictions", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "p.png"),
                     *flags]) == 0
        kwargs, drawn = asked[-1]
        assert kwargs["crops"] == crops and kwargs["dtype"] == dtype
        expected = list(predict(load_model(ckpt), [image], crops=crops, dtype=dtype, scales=kwargs["scales"]))
        assert drawn == [r.top for r in expected]
    assert main(["viz", "predictions", "--checkpoint", str(ckpt), str(image), "--scales", "256"]) == 2
    assert "--scales is for --views dense" in capsys.readouterr().err


def test_the_true_class_comes_from_the_folder_name(paper):
    ckpt, data = paper
    loaded = load_model(ckpt)
    assert predictions.true_class(loaded, data / "val" / "cow" / "000.png") == 2
    assert predictions.true_class(loaded, data / "000.png") is None
    assert predictions.figure_size(1) == (2 * predictions.MARGIN + predictions.CELL[0],
                                          2 * predictions.MARGIN + predictions.CELL[1])


# ---- neighbours ----

def brute_force(train, queries, k):
    d = torch.cdist(queries.double(), train.double())
    return np.argsort(d.numpy(), axis=1, kind="stable")[:, :k], np.sort(d.numpy(), axis=1)[:, :k]


@pytest.mark.parametrize("batch", [1, 7, 100])
def test_streaming_search_equals_brute_force(batch):
    rng = torch.Generator().manual_seed(0)
    train, queries = torch.randn(50, 4096, generator=rng), torch.randn(4, 4096, generator=rng)
    train[17] = train[3]                            # a tie: the lower index comes first
    batches = [(torch.arange(i, min(i + batch, 50)), train[i:i + batch]) for i in range(0, 50, batch)]
    d, i = neighbors.nearest(queries, batches, 6)
    expected_i, expected_d = brute_force(train, queries, 6)
    assert i.tolist() == expected_i.tolist()
    assert np.allclose(d.numpy(), expected_d, rtol=1e-12)
    d, i = neighbors.nearest(train[3:4], batches, 3)
    assert i[0, :2].tolist() == [3, 17] and d[0, :2].tolist() == [0, 0]


def test_neighbours_are_the_true_nearest_training_images(paper):
    ckpt, data = paper
    loaded = load_model(ckpt)
    found, names = neighbors.find_neighbours(loaded, data, queries=3, k=6, batch_size=5, workers=0,
                                             progress=False)
    assert names == list(CLASSES)
    train = extract_features(loaded, split_images(data, "train"), batch_size=12, workers=0, progress=False)
    val = split_images(data, "val")
    chosen = neighbors.query_indices(len(val), 3)
    assert [val.split.samples[i][0] for i in chosen] == [q.path for q in found]
    assert len({val.split.samples[i][1] for i in chosen}) == 3      # one query per class
    queries = extract_features(loaded, val.subset(chosen), batch_size=1, workers=0, progress=False)
    expected_i, expected_d = brute_force(train.features, queries.features, 6)
    for q, row_i, row_d in zip(found, expected_i, expected_d):
        assert [n.path for n in q.neighbours] == [train.paths[i] for i in row_i]
        assert [n.distance for n in q.neighbours] == pytest.approx(row_d.tolist(), rel=1e-4)
        assert [n.label for n in q.neighbours] == [int(train.labels[i]) for i in row_i]


def test_neighbour_tiles_come_from_the_data_even_when_a_stores_sources_are_gone(paper, tmp_path):
    # A prepared store holds the pixels: its source folders may be deleted (the reason to prepare), and
    # the tiles still show each image as the fixed preprocessing made it from its file.
    import shutil

    from alexnet.data.decode import load_fixed
    from alexnet.data.prepare import prepare

    ckpt, data = paper
    source = shutil.copytree(data, tmp_path / "source")
    prepare(source, tmp_path / "prep", workers=0, progress=False)
    loaded = load_model(ckpt)
    found, _ = neighbors.find_neighbours(loaded, source, queries=2, k=3, workers=0, progress=False)
    expected = {item.path: load_fixed(item.path) for q in found for item in (q, *q.neighbours)}
    shutil.rmtree(source)
    stored, _ = neighbors.find_neighbours(loaded, tmp_path / "prep", queries=2, k=3, workers=0, progress=False)
    items = [item for q in stored for item in (q, *q.neighbours)]   # a store names the files it was made from
    assert [item.path for item in items] == [item.path for q in found for item in (q, *q.neighbours)]
    for item in items:
        assert torch.equal(item.pixels, expected[item.path]), item.path


def test_neighbors_picture_beside_the_checkpoint(paper, capsys):
    ckpt, data = paper
    assert main(["viz", "neighbors", "--checkpoint", str(ckpt), "--data", str(data), "--queries", "2", "--k", "4",
                 "--workers", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(ckpt.parent / "neighbors.png")
    assert_picture(ckpt.parent / "neighbors.png", neighbors.figure_size(2, 4))


@pytest.mark.parametrize("k", [1, 2, 6, 20])
def test_the_neighbours_title_fits_the_picture_for_any_k(k):
    # As matplotlib lays the text out: a title wider than a narrow picture would be cut off at its edge.
    from alexnet.viz.figure import new_figure
    width, height = neighbors.figure_size(1, k, "fc7")
    fig = new_figure(width, height)
    renderer = fig.canvas.get_renderer()
    lines = neighbors._title(k, "fc7")
    assert (len(lines) == 1) == (k >= 6) and " ".join(lines).startswith("val image (left) and the")
    for text in lines:
        extent = fig.text(neighbors.MARGIN / width, 0.5, text, fontsize=11).get_window_extent(renderer)
        assert extent.x1 <= width - neighbors.MARGIN / 2, (k, text)


def test_a_picture_replaces_an_earlier_figure_but_never_a_file_of_the_users(paper, tmp_path, capsys):
    ckpt, data = paper
    photo = data / "val" / "cow" / "000.png"
    before = photo.read_bytes()
    for out in (photo, tmp_path / "notes.pdf"):   # the image being drawn, and a document
        if out != photo:
            out.write_bytes(b"%PDF-1.4 my notes")
        assert main(["viz", "predictions", "--checkpoint", str(ckpt), str(photo), "--out", str(out)]) == 2
        assert "exists and is not a picture drawn by alexnet viz" in capsys.readouterr().err
    assert photo.read_bytes() == before and (tmp_path / "notes.pdf").read_bytes() == b"%PDF-1.4 my notes"
    out = tmp_path / "filters.svg"
    for _ in range(2):   # the second run replaces the first's figure
        assert main(["viz", "filters", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    capsys.readouterr()


def test_viz_needs_a_picture_and_a_png_name(paper, tmp_path, capsys):
    ckpt, _ = paper
    with pytest.raises(SystemExit) as e:
        main(["viz"])
    assert e.value.code == 2 and "PICTURE" in capsys.readouterr().err
    for picture in ("curves", "filters", "predictions", "neighbors"):
        with pytest.raises(SystemExit) as e:
            main(["viz", picture, "--help"])
        assert e.value.code == 0 and f"usage: alexnet viz {picture}" in capsys.readouterr().out
    assert main(["viz", "curves", "--run", str(write_run(tmp_path / "r", [0.01])), "--out",
                 str(tmp_path / "c.txt")]) == 2
    assert "use a .png" in capsys.readouterr().err


@pytest.mark.parametrize("queries, k", [(0, 3), (2, 0), (2, True)])
def test_neighbours_refuse_a_count_that_is_not_one_or_more(paper, queries, k):
    # k=0 was "no readable image in .../train: every file was skipped", of data whose every file reads.
    ckpt, data = paper
    with pytest.raises(ValueError, match="must be a positive integer"):
        neighbors.find_neighbours(load_model(ckpt), data, queries=queries, k=k, workers=0, progress=False)


def test_names_matplotlib_cannot_draw_are_drawn_escaped(paper, tmp_path):
    # A Latin-1 file name or class folder (read as "caf\udce9") failed inside matplotlib with a traceback,
    # and a name with two "$" is a formula to it ("$\frac$" failed too).
    import os
    import shutil

    from alexnet.viz.scoremap import draw_scoremaps

    ckpt, data = paper
    loaded = load_model(ckpt)
    loaded.names[0] = os.fsdecode(b"caf\xe9 $\\frac$")
    odd = tmp_path / os.fsdecode(b"caf\xe9 $\\frac$ \x1b[31m.png")
    shutil.copy(data / "val" / "ant" / "000.png", odd)
    out, failed = predictions.draw_predictions(loaded, [odd], tmp_path / "p.png", topk=3)
    assert out == tmp_path / "p.png" and failed == []
    assert_picture(out, predictions.figure_size(1))
    out, _, failed = draw_scoremaps(loaded, [odd], tmp_path / "s.png", scale=256)
    assert out == tmp_path / "s.png" and failed == []
    found, names = neighbors.find_neighbours(loaded, data, queries=1, k=2, workers=0, progress=False)
    neighbors.draw_neighbours(found, [loaded.names[0], *names[1:]], tmp_path / "n.png", loaded.crop)
    run = write_run(tmp_path / os.fsdecode(b"run \xe9 $x$"), [0.01] * 3)
    assert main(["viz", "curves", "--run", str(run)]) == 0
    assert_picture(run / "curves.png", curves.SIZE)
    assert drawable("caf\udce9 $\\frac$\n") == "caf\\udce9 \\$\\frac\\$\\n"
