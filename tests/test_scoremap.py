"""viz scoremap: the probabilities drawn are the fully-convolutional network's, each tile sits on the window it
scores, a true class other than the top one gets its own panel, and unreadable files are named."""

import matplotlib.text
import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.transforms import Normalize
from alexnet.fully_convolutional import STRIDE
from alexnet.model import AlexNet
from alexnet.viz import scoremap
from alexnet.weights import LoadedModel
from test_viz import CLASSES, NAMES, assert_picture
from test_weights import make_checkpoint


def write_image(path, size=(300, 400), seed=0):
    """A noise image of ``size`` (width, height) with a flat yellow quarter, as PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2, : size[0] // 2] = (255, 200, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def owt():
    """An in-memory owt network (no file to write): for what does not go through the command line."""
    torch.manual_seed(0)
    model = AlexNet("owt", num_classes=3, init="pytorch").eval()
    return LoadedModel(model, list(CLASSES), list(NAMES), 224, "imagenet", Normalize.create("imagenet"))


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoremap")
    (root / "run").mkdir()
    return make_checkpoint(root / "run" / "best.pt", classes=CLASSES, names=NAMES)


def test_probabilities_are_the_softmax_of_the_fully_convolutional_scores(owt, tmp_path):
    maps, failed = scoremap.score_maps_of(owt, [write_image(tmp_path / "a.png")], scale=256)
    assert failed == [] and len(maps) == 1
    m = maps[0]
    # 300x400 at shorter side 256 is 256x341; the height is trimmed to 224 + 3 * 32.
    assert tuple(m.image.shape) == (320, 256, 3)
    fcn = owt.model.to_fully_convolutional().eval()
    x = ((m.image.float() - owt.norm.mean) / owt.norm.std).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = fcn(x).softmax(1)[0]
    assert tuple(m.probs.shape) == (3, *fcn.map_size(320, 256)) == (3, 4, 2)
    torch.testing.assert_close(m.probs, expected, rtol=1e-4, atol=1e-6)
    assert m.top == int(expected.mean((1, 2)).argmax()) and m.truth is None


def test_each_tile_is_centred_on_the_window_it_scores(owt):
    fcn = owt.model.to_fully_convolutional()
    h, w = 3, 5
    left, right, bottom, top = scoremap.map_extent(fcn.input_size, h, w)
    assert (right - left, bottom - top) == (w * STRIDE, h * STRIDE)          # tiles of STRIDE, edge to edge
    for i in range(h):
        for j in range(w):
            t, lft, b, r = fcn.window(i, j)
            assert (top + (i + 0.5) * STRIDE, left + (j + 0.5) * STRIDE) == ((t + b) / 2, (lft + r) / 2)


def test_a_true_class_other_than_the_top_gets_a_second_panel(owt, tmp_path):
    # The same pixels under each class folder: one of them is the top class, so two get a "true:" panel.
    paths = [write_image(tmp_path / cls / "x.png") for cls in CLASSES] + [write_image(tmp_path / "misc" / "y.png")]
    out, maps, failed = scoremap.draw_scoremaps(owt, paths, tmp_path / "map.png", scale=320)
    assert failed == [] and [m.truth for m in maps] == [0, 1, 2, None]
    titles = [title for _, _, title in scoremap.panels(owt, maps)]
    assert len(titles) == 4 + 2 and sum(t.startswith("true: ") for t in titles) == 2
    top = maps[0].top
    assert titles[0] == f"{NAMES[top]} {maps[0].mean[top]:.2f}"
    assert_picture(out, scoremap.figure_size(6))

    # The overlay is drawn: without it (alpha 0) the panels show only the images.
    plain = scoremap.draw(owt, maps, tmp_path / "plain.png", alpha=0)
    with Image.open(out) as a, Image.open(plain) as b:
        diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    assert (diff.max(2) > 30).mean() > 0.05


def test_scoremap_beside_the_checkpoint_names_the_unreadable_files(paper, tmp_path, capsys):
    good = [write_image(tmp_path / "bee" / "x.png", (400, 300)), write_image(tmp_path / "z.png", seed=1)]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["viz", "scoremap", "--checkpoint", str(paper), *map(str, good), str(tmp_path / "broken.jpg"),
                 str(tmp_path / "missing.png"), "--scale", "300", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    out = paper.parent / "scoremap.png"
    assert captured.out.strip() == str(out)
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert errors[0].startswith(f"alexnet viz scoremap: error: {tmp_path / 'broken.jpg'}: ")
    assert errors[1].startswith(f"alexnet viz scoremap: error: {tmp_path / 'missing.png'}: ")
    with Image.open(out) as img:
        size = img.size
    assert size in (scoremap.figure_size(2), scoremap.figure_size(3))    # "bee" may be the top class
    assert_picture(out, size)


@pytest.mark.parametrize("args, fragment", [
    (["{broken}", "{missing}"], "nothing drawn: {broken}: "),
    (["{image}", "--scale", "200"], "--scale 200 is under the network's input of 227 pixels"),
    (["{image}", "--scale", "30000"], "--scale 30000 is over 2048 pixels"),
])
def test_nothing_to_draw_exits_2_with_one_line(paper, tmp_path, capsys, args, fragment):
    names = {"broken": tmp_path / "broken.jpg", "missing": tmp_path / "missing.png",
             "image": write_image(tmp_path / "a.png")}
    names["broken"].write_bytes(b"not an image")
    out = tmp_path / "none.png"
    argv = ["viz", "scoremap", "--checkpoint", str(paper), "--out", str(out)] + [a.format(**names) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment.format(**names) in err, err
    assert not out.exists()


def test_a_plain_string_is_a_path_and_one_alone_is_one_image(owt, tmp_path):
    # Every str was taken for a URL ("nothing is fetched from the network"), so glob.glob's names drew nothing.
    image = write_image(tmp_path / "red.png")
    for given in ([str(image)], str(image), [image]):
        maps, failed = scoremap.score_maps_of(owt, given, scale=256)
        assert failed == [] and [m.path for m in maps] == [image]
    maps, failed = scoremap.score_maps_of(owt, ["https://example.com/red.png"], scale=256)
    assert maps == [] and failed[0][1].startswith("a URL: nothing is fetched")


def test_a_pdf_over_64_kb_is_replaced_by_the_same_command_again(owt, tmp_path):
    # matplotlib names itself in a PDF's /Producer, written at its end: a large PDF says so only there.
    maps, _ = scoremap.score_maps_of(owt, [write_image(tmp_path / "a.png")], scale=256)
    out = scoremap.draw(owt, maps, tmp_path / "map.pdf")
    first = out.read_bytes()
    assert first.startswith(b"%PDF") and len(first) > 64 * 1024 and b"Matplotlib" not in first[:64 * 1024]
    assert scoremap.draw(owt, maps, out, alpha=0) == out and out.read_bytes() != first


@pytest.mark.parametrize("count", [1, 2, 5])
def test_every_caption_fits_the_picture_however_few_the_panels(owt, tmp_path, count):
    # As matplotlib lays the text out: the scale's caption, wider than one panel, was cut off at both ends.
    maps, _ = scoremap.score_maps_of(owt, [write_image(tmp_path / f"{n}.png", seed=n) for n in range(count)],
                                     scale=224)
    fig = scoremap.figure(owt, maps)
    width, height = scoremap.figure_size(len(maps))
    assert tuple(fig.get_size_inches() * fig.dpi) == (width, height)
    fig.canvas.draw()   # where axis labels go is settled in drawing
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    assert any(t.get_text().startswith("probability of the class") for t in texts)
    for t in texts:
        box = t.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height, (count, t.get_text())
