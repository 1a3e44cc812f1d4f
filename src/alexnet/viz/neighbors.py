"""Val images and the training images nearest to them in fc7 space: the paper's Figure 4, right.

The paper (section 6.1): two images are similar to the network when their last-hidden-layer (fc7,
4096-d) activation vectors are close in Euclidean distance, even when their pixels are not. The search
streams over the training set a batch at a time, keeping each query's k best, so memory stays
(queries x k) whatever the size of the set.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet.data.decode import UndecodableImage, load_fixed
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import ImageSet
from alexnet.data.sources import open_data
from alexnet.errors import UserError
from alexnet.features import AS_TRAINED, DEFAULT_LAYER, check_layer, extract_features, iter_features
from alexnet.model import check_positive_int
from alexnet.viz.figure import axes_at, center_crop, new_figure, save, shorten, show_image
from alexnet.weights import LoadedModel

QUERIES, K = 5, 6                   # the paper's figure: 5 test images, 6 training images each
TILE, LABEL, GAP, MARGIN = 150, 34, 8, 10      # pixels: image side, caption under it, between tiles
QUERY_GAP = 24                      # extra pixels between the query column and its neighbours
TITLE = 30                          # pixels per line of the title
TITLE_CHAR = 8                      # a wide character of it (11 pt at 100 dpi), to wrap it before it is cut off
SAME, DIFFERENT = "tab:green", "tab:red"


@dataclass
class Neighbour:
    path: Path
    label: int
    distance: float
    pixels: torch.Tensor | None = None   # the fixed 256x256 image as the data holds it (None: read path)


@dataclass
class Query:
    path: Path
    label: int
    neighbours: list[Neighbour]
    pixels: torch.Tensor | None = None


def nearest(queries: torch.Tensor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows nearest each query over all ``batches`` of (indices, (B, D) rows), exact.

    Returns (distances, indices), both (Q, k') with k' = min(k, rows seen), nearest first; equal
    distances keep the lower index first. Distances are computed in float64 without the matmul shortcut
    (|a|^2 + |b|^2 - 2ab loses the small differences between close 4096-d vectors).
    """
    q = queries.double()
    best_d = torch.empty(len(q), 0, dtype=torch.float64)
    best_i = torch.empty(len(q), 0, dtype=torch.long)
    for indices, rows in batches:
        d = torch.cdist(q, rows.double(), compute_mode="donot_use_mm_for_euclid_dist")
        all_d = torch.cat([best_d, d], 1)
        all_i = torch.cat([best_i, indices.long().expand(len(q), -1)], 1)
        # Stable sort on (distance) after ordering ties by index: the result is the same batch size or not.
        by_index = all_i.argsort(dim=1, stable=True)
        all_d, all_i = all_d.gather(1, by_index), all_i.gather(1, by_index)
        order = all_d.argsort(dim=1, stable=True)[:, :k]
        best_d, best_i = all_d.gather(1, order), all_i.gather(1, order)
    return best_d, best_i


def query_indices(count: int, queries: int) -> list[int]:
    """``queries`` samples spread evenly over a split sorted by class, so they show different classes."""
    queries = min(queries, count)
    return [(2 * i + 1) * count // (2 * queries) for i in range(queries)]


def find_neighbours(loaded: LoadedModel, data: str | Path, queries: int = QUERIES, k: int = K,
                    layer: str = DEFAULT_LAYER, **kwargs) -> tuple[list[Query], list[str]]:
    """For ``queries`` images of DATA/val, the ``k`` DATA/train images nearest in ``layer``'s activations.

    Returns the queries and the data's readable class names; kwargs go to iter_features (batch_size,
    workers, device, dtype, progress).
    """
    check_positive_int(queries, "queries")
    check_positive_int(k, "k")
    check_layer(loaded, layer)
    # Any kind of data (data/sources.py); tiles are drawn from the source files.
    source = open_data(data, small=loaded.small, fixed=AS_TRAINED)
    val, train, names = source.splits["val"], source.splits["train"], source.names
    chosen = val.subset(query_indices(len(val), queries))
    query = extract_features(loaded, chosen, layer, **(kwargs | {"progress": False}))
    skipped = SkippedFiles(train)
    batches = iter_features(loaded, train, layer, skipped=skipped, desc=f"{layer} features of train/", **kwargs)
    distances, indices = nearest(query.features, batches, k)
    if indices.shape[1] == 0:
        raise UserError(f"no readable image in {train.split.root}: every file was skipped")
    samples = train.split.samples
    # Tiles show the pixels the network saw, from the data itself: a prepared store's own, whose source
    # files may be gone (the usual reason to prepare), a member of a tar archive, or a decoded file.
    near = sorted(set(indices.flatten().tolist()))
    near_pixels = dict(zip(near, fixed_pixels(train, near)))
    query_pixels = dict(zip((path for path, _ in chosen.split.samples), fixed_pixels(chosen, range(len(chosen)))))
    found = [Query(path, int(label), [Neighbour(samples[i][0], samples[i][1], d, near_pixels[i])
                                      for i, d in zip(row_i.tolist(), row_d.tolist())], query_pixels.get(path))
             for path, label, row_i, row_d in zip(query.paths, query.labels, indices, distances)]
    return found, names


def fixed_pixels(images: ImageSet, indices: Iterable[int]) -> list[torch.Tensor | None]:
    """These samples' fixed 256x256 uint8 images as ``images`` gives them to the network; None where
    unreadable."""
    indices = list(indices)
    if not indices:
        return []
    batch, labels, _, _ = images.for_device(torch.device("cpu")).__getitems__(indices)
    pixels = batch.to(torch.device("cpu"))
    return [pixels[j] if labels[j] >= 0 else None for j in range(len(indices))]


def figure_size(queries: int, k: int, layer: str = DEFAULT_LAYER) -> tuple[int, int]:
    """The picture's (width, height) in pixels for ``queries`` rows of 1 + ``k`` images."""
    width = 2 * MARGIN + (1 + k) * TILE + k * GAP + QUERY_GAP
    height = 2 * MARGIN + len(_title(k, layer)) * TITLE + queries * (TILE + LABEL) + (queries - 1) * GAP
    return width, height


def _title(k: int, layer: str) -> list[str]:
    """The title's lines: one where the row of tiles is wide enough, more (not cut off) for a small ``k``."""
    text = f"val image (left) and the {k} training images nearest in {layer} space (Euclidean distance)"
    width = 2 * MARGIN + (1 + k) * TILE + k * GAP + QUERY_GAP - 2 * MARGIN
    return textwrap.wrap(text, width=max(20, width // TITLE_CHAR))


def draw_neighbours(found: list[Query], names: list[str], out: str | Path, crop: int, layer: str = DEFAULT_LAYER,
                    small: str = "upscale") -> Path:
    """Each query (left) beside its neighbours, nearest first; a caption is green when the class matches.
    ``small``: what the network's training did with images under 256 (choices.SMALL), to show them so."""
    k = max(len(q.neighbours) for q in found)
    fig = new_figure(*figure_size(len(found), k, layer))
    title = _title(k, layer)
    for line, text in enumerate(title):
        fig.text(MARGIN / fig.bbox.width, 1 - (MARGIN + (line + 0.5) * TITLE) / fig.bbox.height, text,
                 va="center", fontsize=11)
    for row, q in enumerate(found):
        top = MARGIN + len(title) * TITLE + row * (TILE + LABEL + GAP)
        _tile(fig, q, crop, MARGIN, top, f"{shorten(names[q.label], 22)}", "black", small, bold=True)
        for col, n in enumerate(q.neighbours):
            left = MARGIN + (col + 1) * (TILE + GAP) + QUERY_GAP
            colour = SAME if n.label == q.label else DIFFERENT
            _tile(fig, n, crop, left, top, f"{shorten(names[n.label], 16)}  d={n.distance:.3g}", colour, small)
    return save(fig, out)


def _tile(fig, item: Query | Neighbour, crop: int, left: float, top: float, caption: str, colour: str,
          small: str = "upscale", bold: bool = False) -> None:
    ax = axes_at(fig, left, top, TILE, TILE)
    try:
        pixels = item.pixels if item.pixels is not None else load_fixed(item.path, small=small)
        show_image(ax, center_crop(pixels, crop))
    except (UndecodableImage, OSError):  # read a moment ago for its features; leave the tile blank
        show_image(ax, torch.full((crop, crop, 3), 255, dtype=torch.uint8))
    ax.set_xlabel(caption, fontsize=8, color=colour, fontweight="bold" if bold else "normal", labelpad=3)
