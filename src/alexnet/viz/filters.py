"""The conv1 kernels as colour tiles, one tower above the other: the paper's Figure 3.

In the paper the 48 kernels of GPU 1 (top) came out largely colour-agnostic and the 48 of GPU 2
(bottom) largely colour-specific, in every run: the towers only meet at conv3, so each specialises.
Here the towers are channels 0-47 and 48-95 (conv2's groups=2 split conv1's outputs there). Each
kernel is scaled to its own range, since their magnitudes differ too much for one common scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet.viz.figure import axes_at, new_figure, save
from alexnet.weights import LoadedModel

COLUMNS = 16
SCALE = 4           # screen pixels per kernel pixel: an 11x11 kernel becomes a 44x44 tile
GAP = 4             # pixels between tiles
TOWER_GAP = 16      # extra pixels between the towers
MARGIN = (120, 50, 16, 16)      # left (tower labels), top (title), right, bottom, in pixels


def conv1_kernels(loaded: LoadedModel) -> tuple[np.ndarray, int]:
    """conv1's weights as (K, k, k, 3) float images, and the number of towers (2 for paper, 1 for owt)."""
    weight = loaded.model.layer("conv1").weight.detach().float().cpu()      # (K, 3, k, k)
    return weight.permute(0, 2, 3, 1).numpy(), 2 if loaded.variant == "paper" else 1


def scale_each(kernels: np.ndarray) -> np.ndarray:
    """Each kernel mapped to [0, 1] by its own min and max (a constant kernel becomes mid-grey)."""
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (kernels - low) / np.where(span > 0, span, 1), 0.5)


def mosaic(tiles: np.ndarray, towers: int) -> np.ndarray:
    """(K, k, k, 3) in [0, 1] -> one white-spaced (H, W, 3) image, COLUMNS tiles a row, towers stacked."""
    count, k = tiles.shape[0], tiles.shape[1]
    side = k * SCALE
    rows_per_tower = -(-count // towers // COLUMNS)
    height, width = _mosaic_size(count, k, towers)
    image = np.ones((height, width, 3))
    per_tower = count // towers
    for i, tile in enumerate(tiles):
        tower, j = divmod(i, per_tower)
        row, col = divmod(j, COLUMNS)
        top = GAP + tower * (rows_per_tower * (side + GAP) + TOWER_GAP) + row * (side + GAP)
        left = GAP + col * (side + GAP)
        image[top:top + side, left:left + side] = tile.repeat(SCALE, 0).repeat(SCALE, 1)
    return image


def _mosaic_size(count: int, k: int, towers: int) -> tuple[int, int]:
    side = k * SCALE
    rows_per_tower = -(-count // towers // COLUMNS)
    height = GAP + towers * rows_per_tower * (side + GAP) + (towers - 1) * TOWER_GAP
    return height, GAP + COLUMNS * (side + GAP)


def figure_size(count: int, k: int, towers: int) -> tuple[int, int]:
    """The picture's (width, height) in pixels for ``count`` k x k kernels."""
    height, width = _mosaic_size(count, k, towers)
    left, top, right, bottom = MARGIN
    return left + width + right, top + height + bottom


def draw_filters(loaded: LoadedModel, out: str | Path, title: str = "") -> Path:
    """The picture of ``loaded``'s conv1 kernels; returns the file written."""
    kernels, towers = conv1_kernels(loaded)
    count, k = kernels.shape[0], kernels.shape[1]
    image = mosaic(scale_each(kernels), towers)
    fig = new_figure(*figure_size(count, k, towers))
    left, top = MARGIN[0], MARGIN[1]
    ax = axes_at(fig, left, top, image.shape[1], image.shape[0])
    ax.imshow(image, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    fig.text(0.5, 1 - 18 / fig.bbox.height, title or f"conv1: {count} kernels of {k}x{k}x3, each scaled to its own range",
             ha="center", va="center", fontsize=11)
    if towers == 2:
        tower_height = (image.shape[0] - TOWER_GAP) / 2
        for tower, words in enumerate(("tower 1\n(GPU 1)", "tower 2\n(GPU 2)")):
            centre = top + tower * (tower_height + TOWER_GAP) + tower_height / 2
            fig.text(left / 2 / fig.bbox.width, 1 - centre / fig.bbox.height, words, ha="center", va="center",
                     fontsize=10)
    return save(fig, out)

