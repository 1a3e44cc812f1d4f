"""Images with their top-5 classes as bars, the true class marked when known: the paper's Figure 4, left.

Each image is shown as the network saw it (the centre crop of the fixed 256x256 image). An image's true
class is known when its folder is named after one of the network's classes (DATA/val/<class>/x.jpg);
its bar is then red, and a true class outside the top 5 is named under the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from alexnet.data.decode import UndecodableImage, load_fixed
from alexnet.choices import SCALES
from alexnet.predict import Prediction, predict
from alexnet.viz.figure import axes_at, center_crop, new_figure, save, shorten, show_image
from alexnet.weights import LoadedModel

COLUMNS = 4                         # images a row at most
CELL = (300, 420)                   # pixels per image: the image, its label, then the bars
IMAGE_SIDE = 200
BARS = (20, 250, 260, 150)          # the bars' left, top, width, height inside a cell
MARGIN = 10
NAME_LIMIT = 30                     # characters of a class name on a bar
TRUE, OTHER = "tab:red", "tab:blue"


def figure_size(count: int) -> tuple[int, int]:
    """The picture's (width, height) in pixels for ``count`` images."""
    columns, rows = min(count, COLUMNS), math.ceil(count / COLUMNS)
    return 2 * MARGIN + columns * CELL[0], 2 * MARGIN + rows * CELL[1]


def true_class(loaded: LoadedModel, path: Path) -> int | None:
    """The network's index of the class named by ``path``'s folder, or None when no class is."""
    try:
        return loaded.classes.index(path.parent.name)
    except ValueError:
        return None


def draw_predictions(loaded: LoadedModel, paths: Iterable[Path | str] | Path | str, out: str | Path, topk: int = 5,
                     crops: int | str = 1, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                     scales: str | Sequence[int] = SCALES) -> tuple[Path | None, list[Prediction]]:
    """Draw every readable image of ``paths`` with its top-k (as ``predict`` computes it for ``crops``,
    ``dtype`` and ``scales``); returns (the file written, or None when no image could be read, and the
    predictions that failed, each with its reason)."""
    shown: list[tuple[Prediction, torch.Tensor]] = []
    failed: list[Prediction] = []
    for result in predict(loaded, paths, topk=topk, crops=crops, device=device, dtype=dtype, scales=scales):
        if not result.error:
            try:
                shown.append((result, center_crop(load_fixed(result.path, small=loaded.small), loaded.crop)))
                continue
            except (UndecodableImage, OSError) as e:  # changed since predict read it
                result = Prediction(result.path, [], str(e))
        failed.append(result)
    if not shown:
        return None, failed
    fig = new_figure(*figure_size(len(shown)))
    for n, (result, image) in enumerate(shown):
        row, col = divmod(n, COLUMNS)
        _draw_cell(fig, loaded, result, image, MARGIN + col * CELL[0], MARGIN + row * CELL[1], topk)
    return save(fig, out), failed


def _draw_cell(fig, loaded: LoadedModel, result: Prediction, image: torch.Tensor, left: float, top: float,
               topk: int) -> None:
    truth = true_class(loaded, result.path)
    ax = axes_at(fig, left + (CELL[0] - IMAGE_SIDE) / 2, top + 14, IMAGE_SIDE, IMAGE_SIDE)
    show_image(ax, image)
    ax.set_title(shorten(result.path.name, 40), fontsize=8, color="0.35", pad=3)
    if truth is not None:
        ranks = [i for i, _ in result.top]
        missed = "" if truth in ranks else f" (not in top {len(ranks)})"
        ax.set_xlabel(shorten(loaded.names[truth], NAME_LIMIT) + missed, fontsize=9, fontweight="bold",
                      color=TRUE if missed else "black", labelpad=3)
    bars = axes_at(fig, left + BARS[0], top + BARS[1], BARS[2], BARS[3])
    slots = max(topk, len(result.top))
    y = list(range(len(result.top)))
    probs = [p for _, p in result.top]
    colours = [TRUE if i == truth else OTHER for i, _ in result.top]
    bars.barh(y, probs, height=0.8, color=colours, alpha=0.35)
    for yi, (i, p) in zip(y, result.top):
        weight = "bold" if i == truth else "normal"
        bars.text(0.01, yi, shorten(loaded.names[i], NAME_LIMIT), va="center", ha="left", fontsize=8,
                  fontweight=weight)
        bars.text(0.99, yi, f"{100 * p:.1f}%", va="center", ha="right", fontsize=8, color="0.3")
    bars.set_xlim(0, 1)
    bars.set_ylim(slots - 0.5, -0.5)        # most probable on top
    bars.set_xticks([])
    bars.set_yticks([])
    for side in ("top", "right", "bottom"):
        bars.spines[side].set_visible(False)
