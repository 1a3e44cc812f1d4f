"""Where in an image the network sees its class: the fully-convolutional score map over the image.

The network slides over the whole image at one scale (shorter side 384 by default) in one pass
(fully_convolutional.py); position (i, j) of the map scores the ``input_size`` window whose top-left
corner is (32 i, 32 j). Each panel shows the image with, over it, the softmax probability of one class at
every position, as a 32x32 tile centred on the window it scores: the tiles cover the image but for a
border of about half a window, which no window is centred in. The class is the image's top class (the
highest probability averaged over positions, as dense evaluation ranks classes at one scale without
mirroring); when the image's folder names a class (DATA/val/<class>/x.jpg) and that is not the top class,
a second panel shows the true class's map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize as ColourScale
from matplotlib.figure import Figure

from alexnet.data.decode import UndecodableImage
from alexnet.dense import MAX_SCALE, load_scaled, score_maps
from alexnet.errors import UserError
from alexnet.fully_convolutional import STRIDE
from alexnet.predict import as_path, as_paths
from alexnet.viz.figure import axes_at, new_figure, save, shorten
from alexnet.viz.predictions import true_class
from alexnet.weights import LoadedModel

SCALE = 384                         # the image's shorter side: 5x5 positions or more for either variant
COLUMNS = 4                         # panels a row at most
CELL = (300, 320)                   # pixels per panel: its title, the image, the file name
IMAGE_BOX = 260                     # the image's longer side inside a cell
MARGIN = 10
COLOURBAR = 50                      # the strip under the panels holding the probability scale
MIN_WIDTH = 420                     # the scale's caption is 360 pixels wide: one panel alone is narrower
COLOURS, ALPHA = "jet", 0.45        # alpha: the image must stay readable under the map
NAME_LIMIT = 28

Failure = tuple[Path | str, str]    # an unreadable file and why


@dataclass
class ScoreMap:
    """One image at the chosen scale and its class probabilities at every position of the score map."""
    path: Path
    image: torch.Tensor             # uint8 (H, W, 3), H and W input_size + 32 k
    probs: torch.Tensor             # float32 (K, h, w): a softmax at each position
    input_size: int
    truth: int | None               # the class its folder names, if any

    @property
    def mean(self) -> torch.Tensor:
        """(K,) the probabilities averaged over positions."""
        return self.probs.mean((1, 2))

    @property
    def top(self) -> int:
        return int(self.mean.argmax())


def check_scale(scale: int, input_size: int) -> None:
    if scale < input_size:
        raise UserError(f"--scale {scale} is under the network's input of {input_size} pixels: the score map "
                        f"needs a shorter side of at least {input_size}")
    if scale > MAX_SCALE:
        raise UserError(f"--scale {scale} is over {MAX_SCALE} pixels, the largest dense views take")


def probability_maps(fcn: torch.nn.Module, image: torch.Tensor, loaded: LoadedModel,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> (K, h, w) softmax over classes at each position, on the CPU."""
    return score_maps(fcn, image[None].to(device), loaded.norm).softmax(1)[0].cpu()


def score_map_of(loaded: LoadedModel, fcn: torch.nn.Module, path: Path | str, scale: int = SCALE,
                 device: torch.device | str = "cpu") -> ScoreMap:
    """The score map of the image at ``path``; UndecodableImage when it cannot be read."""
    path = as_path(path)
    if isinstance(path, str):       # a URL (predict.expand keeps them as strings)
        raise UndecodableImage("a URL: nothing is fetched from the network; download the image and give its path")
    if path.is_dir():
        raise UndecodableImage("no image files in this folder")
    small = loaded.small   # how training saw images under 256 pixels
    image = load_scaled(path, [scale], fcn.input_size, small)[0]
    return ScoreMap(path, image, probability_maps(fcn, image, loaded, device), fcn.input_size,
                    true_class(loaded, path))


def score_maps_of(loaded: LoadedModel, paths: Iterable[Path | str] | Path | str, scale: int = SCALE,
                  device: torch.device | str = "cpu") -> tuple[list[ScoreMap], list[Failure]]:
    """(the maps of the readable images, (path, reason) for each of the others), both in order."""
    fcn = loaded.model.to_fully_convolutional().to(device).eval()
    check_scale(scale, fcn.input_size)
    maps, failed = [], []
    for path in as_paths(paths):
        try:
            maps.append(score_map_of(loaded, fcn, path, scale, device))
        except UndecodableImage as e:   # also a missing file: open_rgb says which
            failed.append((path, str(e)))
        except OSError as e:
            failed.append((path, f"{type(e).__name__}: {e}"))
    return maps, failed


def panels(loaded: LoadedModel, maps: list[ScoreMap]) -> list[tuple[ScoreMap, int, str]]:
    """(map, class, title) for each panel: every image's top class, then its true class unless that is the top."""
    out = []
    for m in maps:
        mean = m.mean
        out.append((m, m.top, f"{shorten(loaded.names[m.top], NAME_LIMIT)} {mean[m.top]:.2f}"))
        if m.truth is not None and m.truth != m.top:
            out.append((m, m.truth, f"true: {shorten(loaded.names[m.truth], NAME_LIMIT - 6)} {mean[m.truth]:.2f}"))
    return out


def figure_size(count: int) -> tuple[int, int]:
    """The picture's (width, height) in pixels for ``count`` panels."""
    columns, rows = min(count, COLUMNS), math.ceil(count / COLUMNS)
    return max(MIN_WIDTH, 2 * MARGIN + columns * CELL[0]), 2 * MARGIN + rows * CELL[1] + COLOURBAR


def map_extent(input_size: int, h: int, w: int) -> tuple[float, float, float, float]:
    """imshow's (left, right, bottom, top) in image pixels for an (h, w) map: position (i, j) a STRIDE-wide
    tile centred on its window's centre (32 i + input/2, 32 j + input/2), so the tiles meet edge to edge."""
    first = input_size / 2 - STRIDE / 2
    return first, first + w * STRIDE, first + h * STRIDE, first


def draw_scoremaps(loaded: LoadedModel, paths: Iterable[Path | str] | Path | str, out: str | Path, scale: int = SCALE,
                   device: torch.device | str = "cpu") -> tuple[Path | None, list[ScoreMap], list[Failure]]:
    """Draw the score map of every readable image of ``paths``; returns (the file written, or None when no
    image could be read; the maps drawn; (path, reason) for each unreadable one)."""
    maps, failed = score_maps_of(loaded, paths, scale, device)
    return (draw(loaded, maps, out) if maps else None), maps, failed


def draw(loaded: LoadedModel, maps: list[ScoreMap], out: str | Path, alpha: float = ALPHA) -> Path:
    """The panels of ``maps`` in a grid, the probability scale under them, written to ``out``."""
    return save(figure(loaded, maps, alpha), out)


def figure(loaded: LoadedModel, maps: list[ScoreMap], alpha: float = ALPHA) -> Figure:
    """The picture ``draw`` writes."""
    shown = panels(loaded, maps)
    width, height = figure_size(len(shown))
    fig = new_figure(width, height)
    left = (width - min(len(shown), COLUMNS) * CELL[0]) / 2   # MARGIN, or centred over the scale in a wider figure
    for n, (m, cls, title) in enumerate(shown):
        row, col = divmod(n, COLUMNS)
        _draw_panel(fig, m, cls, title, left + col * CELL[0], MARGIN + row * CELL[1], alpha)
    bar = axes_at(fig, width / 2 - 150, height - MARGIN - COLOURBAR + 8, 300, 12)
    fig.colorbar(ScalarMappable(ColourScale(0, 1), colormaps[COLOURS]), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    bar.set_xlabel(f"probability of the class at each position (window {maps[0].input_size}, stride {STRIDE})",
                   fontsize=8, labelpad=2)
    return fig


def _draw_panel(fig, m: ScoreMap, cls: int, title: str, left: float, top: float, alpha: float) -> None:
    height, width = m.image.shape[:2]
    fit = IMAGE_BOX / max(height, width)     # the axes keep the image's shape: tiles stay square
    w, h = width * fit, height * fit
    ax = axes_at(fig, left + (CELL[0] - w) / 2, top + 24, w, h)      # top-aligned: a row's titles line up
    # extent in pixel edges (not imshow's default of pixel centres) so the map's extent lines up with it.
    ax.imshow(np.asarray(m.image), extent=(0, width, height, 0), interpolation="bilinear")
    probs = m.probs[cls].numpy()
    ax.imshow(probs, extent=map_extent(m.input_size, *probs.shape), cmap=COLOURS, vmin=0, vmax=1, alpha=alpha,
              interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, fontweight="bold", color="black" if cls == m.top else "tab:red", pad=3)
    # The folder too: it names the true class, and images of several classes often share file names.
    ax.set_xlabel(shorten(f"{m.path.parent.name}/{m.path.name}", 40), fontsize=8, color="0.35", labelpad=3)
