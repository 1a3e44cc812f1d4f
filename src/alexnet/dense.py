"""Dense evaluation: the whole image, at several scales, through the fully-convolutional network.

The paper tests on 10 crops of a 256x256 square; Sermanet et al. (2014) and Simonyan & Zisserman (2015)
instead slide the network over the whole image at several sizes in one pass each (fully_convolutional.py)
and average. Here each image is scaled so that its shorter side is each of ``scales``, and it and its
mirror image give a map of class scores; the softmax at every position is averaged over positions,
mirrors and scales.

Images of one size go through the network together. Each side is trimmed, centred, to the largest
``input_size + 32 k`` it holds (under 32 pixels, which the map's positions do not use whole anyway): so
images of similar shapes share a size and a batch, and no padding, which would change the scores near
the border, is ever added. Normalisation subtracts the mean colour (a mean image's average over its
pixels: the mean image itself is 256x256 and has no value at other sizes) and divides by the std.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from alexnet.data.decode import UndecodableImage, open_rgb
from alexnet.data.imageset import ImageSet
from alexnet.data.transforms import Normalize
from alexnet.errors import UserError
from alexnet.fully_convolutional import fitted_side
from alexnet.precision import autocast

SCALES = (256, 320, 384)


def parse_scales(text: str | Sequence[int], input_size: int) -> tuple[int, ...]:
    """"256,320,384" -> (256, 320, 384); each at least the network's input size, none repeated."""
    try:
        scales = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UserError(f"--scales takes shorter-side lengths separated by commas, e.g. 256,320,384; got {text!r}")
    if not scales or min(scales) < input_size or len(set(scales)) < len(scales):
        raise UserError(f"--scales must be distinct sides of at least {input_size} pixels (the network's input), "
                        f"got {text if isinstance(text, str) else ','.join(map(str, text))}")
    return scales


def scaled(img: Image.Image, scale: int, input_size: int) -> torch.Tensor:
    """``img`` with its shorter side ``scale``, each side trimmed (centred) to ``input_size + 32 k``:
    uint8 (H, W, 3), resampled once from only the pixels kept (as decode.resize_center does)."""
    w, h = img.size
    factor = scale / min(w, h)
    full_w, full_h = max(scale, round(w * factor)), max(scale, round(h * factor))
    out_w, out_h = fitted_side(full_w, input_size), fitted_side(full_h, input_size)
    # Whole pixels of the full resize, centred as torchvision's center_crop rounds, and the source
    # rectangle they come from.
    left, top = round((full_w - out_w) / 2), round((full_h - out_h) / 2)
    fx, fy = full_w / w, full_h / h
    box = (left / fx, top / fy, (left + out_w) / fx, (top + out_h) / fy)
    return torch.from_numpy(np.asarray(img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)).copy())


def load_scaled(path: Path, scales: Sequence[int], input_size: int, small: str = "upscale") -> list[torch.Tensor]:
    """The image at ``path`` at each of ``scales`` (see scaled); UndecodableImage if it cannot be read.
    With ``small`` "pad", an image whose shorter side is under 256 is first centred on a mean-coloured
    canvas 256 on each side (decode.pad_small), as training saw it."""
    img = open_rgb(path, min_side=max(scales))
    if small == "pad":
        from alexnet.data.decode import pad_small

        img = pad_small(img)
    return [scaled(img, s, input_size) for s in scales]


class DenseImages(Dataset):
    """An ImageSet's samples as whole images at several scales, decoded from their source files.

    Item i: (list of uint8 (H_s, W_s, 3), one per scale; label; i; error), label -1 and the reason when
    the file cannot be read (SkippedFiles drops it, as for the fixed images).
    """

    def __init__(self, images: ImageSet, scales: Sequence[int], input_size: int, small: str = "upscale") -> None:
        self.images, self.scales, self.input_size, self.small = images, tuple(scales), input_size, small
        if len(images) and not _readable(images.path(0)):
            raise UserError(f"dense evaluation reads whole images from their source files, and "
                            f"{images.path(0)} is not there (a prepared store keeps only the centre 256x256 of "
                            f"each); give --data the image folders or archives it was prepared from")

    def __len__(self) -> int:
        return len(self.images)

    def path(self, index: int) -> Path:
        return self.images.path(index)

    def __getitem__(self, index: int):
        path, label = self.images.split.samples[index]
        try:
            return load_scaled(path, self.scales, self.input_size, self.small), label, index, ""
        except UndecodableImage as e:
            return [], -1, index, str(e)
        except OSError as e:  # vanished or unreadable: reported and skipped, as FixedSizeImages does
            return [], -1, index, f"{type(e).__name__}: {e}"

    @staticmethod
    def collate(items: list) -> tuple[list[list[torch.Tensor]], torch.Tensor, torch.Tensor, list[str]]:
        views, labels, indices, errors = zip(*items)
        return list(views), torch.tensor(labels), torch.tensor(indices), list(errors)


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def mean_colour(norm: Normalize) -> torch.Tensor:
    """(3,) the colour subtracted from every pixel of a dense view."""
    return norm.mean.mean((0, 1)) if norm.per_pixel else norm.mean


def normalized(images: torch.Tensor, norm: Normalize) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) minus the mean colour, over the std; channels_last."""
    x = images.float() - mean_colour(norm).to(images.device)
    if norm.std is not None:
        x /= norm.std.to(images.device)
    return x.permute(0, 3, 1, 2)


@torch.no_grad()
def score_maps(fcn: torch.nn.Module, images: torch.Tensor, norm: Normalize,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) of one size, on the network's device -> float32 class scores (N, K, h, w)."""
    with autocast(images.device, dtype):
        return fcn(normalized(images, norm)).float()


@torch.no_grad()
def dense_probabilities(fcn: torch.nn.Module, views: list[list[torch.Tensor]], norm: Normalize,
                        device: torch.device, dtype: torch.dtype | None = None,
                        batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, K) of N images, ``views[n]`` holding image n at each scale: the softmax at
    every position of the score map, averaged over positions, the image and its mirror, and scales."""
    scales = len(views[0])
    probs = torch.zeros(len(views), fcn.num_classes, dtype=torch.float32, device=device)
    for s in range(scales):
        by_size = defaultdict(list)
        for n, image in enumerate(views):
            by_size[tuple(image[s].shape)].append(n)
        for members in by_size.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                images = torch.stack([views[n][s] for n in chunk]).to(device, non_blocking=True)
                mirrored = images.flip(2)
                maps = score_maps(fcn, torch.cat([images, mirrored]), norm, dtype)   # (2B, K, h, w)
                p = maps.softmax(1).mean((2, 3))
                probs[torch.tensor(chunk, device=device)] += (p[:len(chunk)] + p[len(chunk):]) / (2 * scales)
    return probs
