"""Dense evaluation: the whole image, at several scales, through the fully-convolutional network.

The paper tests on 10 crops of a 256x256 square; Sermanet et al. (2014) and Simonyan & Zisserman (2015)
instead slide the network over the whole image at several sizes in one pass each (fully_convolutional.py)
and average. Here each image is scaled so that its shorter side is each of ``scales``, and it and its
mirror image give a map of class scores; the softmax at every position is averaged over positions,
mirrors and scales.

Images of one size go through the network together. Each side is trimmed, centred, to the largest
``input_size + 32 k`` it holds: under 32 pixels, which add no position to the score map. So images of
similar shapes share a size and a batch (DenseBatches gathers them across loader batches), and no padding,
which would change the scores near the border, is ever added. Normalisation subtracts the mean colour (a mean image's average over its
pixels: the mean image itself is 256x256 and has no value at other sizes) and divides by the std.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from alexnet.data.decode import UndecodableImage, open_rgb
from alexnet.data.imageset import ImageSet
from alexnet.data.sources import open_split
from alexnet.data.transforms import Normalize
from alexnet.errors import UserError
from alexnet.fully_convolutional import fitted_side
from alexnet.precision import autocast, input_dtype, widen

# The longer side is kept to at most this many times the shorter (the centre of a wider panorama): a 1x5000
# strip at scale 256 would otherwise be 256 x 1,280,000 pixels, and its activations tens of gigabytes.
MAX_ASPECT = 4
# The largest shorter side taken: 2048 x up to 8192 pixels, whose conv1 activations (and their mirror's)
# are 0.8 GB in float32. A mistyped 100000 would ask for terabytes.
MAX_SCALE = 2048


def parse_scales(text: str | Sequence[int], input_size: int) -> tuple[int, ...]:
    """"256,320,384" -> (256, 320, 384); each at least the network's input size, none repeated."""
    try:
        scales = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UserError(f"--scales takes shorter-side lengths separated by commas, e.g. 256,320,384; got {text!r}")
    if not scales or min(scales) < input_size or max(scales) > MAX_SCALE or len(set(scales)) < len(scales):
        raise UserError(f"--scales must be distinct sides of {input_size} (the network's input) to {MAX_SCALE} "
                        f"pixels, got {text if isinstance(text, str) else ','.join(map(str, text))}")
    return scales


def scaled(img: Image.Image, scale: int, input_size: int) -> torch.Tensor:
    """``img`` with its shorter side ``scale``, each side trimmed (centred) to ``input_size + 32 k``, the
    longer to at most MAX_ASPECT x ``scale``: uint8 (H, W, 3), resampled once from only the pixels kept
    (as decode.resize_center does)."""
    w, h = img.size
    factor = scale / min(w, h)
    full_w, full_h = max(scale, round(w * factor)), max(scale, round(h * factor))
    longest = MAX_ASPECT * scale
    out_w, out_h = fitted_side(min(full_w, longest), input_size), fitted_side(min(full_h, longest), input_size)
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
        images = _whole_images(images)
        self.images, self.scales, self.input_size, self.small = images, tuple(scales), input_size, small
        if len(images) and not _readable(images.path(0)):
            raise UserError(f"dense evaluation reads whole images from their source files, and "
                            f"{images.path(0)} is not there (a prepared store keeps only the centre 256x256 of "
                            f"each); give --data the image folders or archives it was prepared from")

    def __len__(self) -> int:
        return len(self.images)

    def path(self, index: int) -> Path:
        return self.images.path(index)

    @property
    def split(self):
        return self.images.split

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


def _whole_images(images: ImageSet) -> ImageSet:
    """A prepared store's images as its source holds them, in the store's order: its files' paths are files
    of a folder, read as they are, or members of an archive (ImageNet's tars), which only the archive's
    index opens."""
    origin = getattr(images, "origin", None)
    if origin is None or not len(images) or _readable(images.path(0)):
        return images
    try:
        source = open_split(*origin, classes=images.classes)
    except UserError:
        return images   # gone or changed: said in one line by the caller
    where = {_name(source, i): i for i in range(len(source))}
    names = [_name(images, i) for i in range(len(images))]
    missing = next((name for name in names if name not in where), None)
    if missing is not None:
        raise UserError(f"{origin[0]} no longer holds {missing}, which {images.root} was prepared from; give "
                        f"--data what it holds now")
    return source.subset([where[name] for name in names])


def _name(images: ImageSet, i: int) -> str:
    return str(images.path(i).relative_to(images.split.root))


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
    norm = norm.on(images.device)
    x = images.float() - mean_colour(norm)
    if norm.std is not None:
        x /= norm.std
    return x.permute(0, 3, 1, 2)


@torch.no_grad()
def score_maps(fcn: torch.nn.Module, images: torch.Tensor, norm: Normalize,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) of one size, on the network's device -> class scores (N, K, h, w): float32, float64
    for a float64 network (as the 1- and 10-view paths take it)."""
    with autocast(images.device, dtype):
        return widen(fcn(normalized(images, norm).to(input_dtype(fcn))))


class DenseBatches:
    """Dense probabilities for a stream of images, each size's images gathered into full batches across
    the loader's batches: a CPU runs AlexNet 5-8x slower per image at batch 2 than at 32 (weights are
    re-laid out per call, measured on a Zen 4 CPU), and a loader batch of varied photos holds few of any
    one size. An image's probabilities come out once all its scales have been through the network.

        batches = DenseBatches(fcn, norm, device, dtype, batch_size)
        for views, labels in loader: for probs, labels in batches.add(views, labels): ...
        for probs, labels in batches.finish(): ...
    """

    def __init__(self, fcn: torch.nn.Module, norm: Normalize, device: torch.device,
                 dtype: torch.dtype | None = None, batch_size: int = 64) -> None:
        self.fcn, self.norm, self.device, self.dtype, self.batch_size = fcn, norm, device, dtype, batch_size
        self.waiting: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)   # size -> (slot, image)
        self.sums: dict[int, torch.Tensor] = {}       # slot -> summed softmax means so far
        self.scales: dict[int, int] = {}              # slot -> its number of scales
        self.left: dict[int, int] = {}                # slot -> scales still to run
        self.labels: dict[int, torch.Tensor] = {}
        self.next_slot = 0

    def add(self, views: list[list[torch.Tensor]], labels: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Queue images (each a list, one per scale) and their labels; yield (probs, labels) of finished ones."""
        for image, label in zip(views, labels):
            slot, self.next_slot = self.next_slot, self.next_slot + 1
            self.scales[slot] = self.left[slot] = len(image)
            self.labels[slot] = label
            for s, view in enumerate(image):
                queue = self.waiting[(s, *view.shape)]
                queue.append((slot, view))
                if len(queue) == self.batch_size:
                    yield from self._run(self.waiting.pop((s, *view.shape)))

    def finish(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Run what is still queued; yield the rest."""
        while self.waiting:
            yield from self._run(self.waiting.pop(next(iter(self.waiting))))

    def _run(self, queue: list[tuple[int, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        slots = [slot for slot, _ in queue]
        images = torch.stack([view for _, view in queue]).to(self.device, non_blocking=True)
        maps = score_maps(self.fcn, torch.cat([images, images.flip(2)]), self.norm, self.dtype)   # mirrors too
        p = maps.double().softmax(1).mean((2, 3))   # float64, for the loss (evaluate._probabilities)
        done = []
        for k, slot in enumerate(slots):
            pair = p[k] + p[k + len(slots)]
            self.sums[slot] = self.sums[slot] + pair if slot in self.sums else pair
            self.left[slot] -= 1
            if not self.left[slot]:
                done.append(slot)
        if done:
            # Each scale's pair (the image and its mirror) was summed: the mean is over 2 x scales.
            probs = torch.stack([self.sums.pop(slot) / (2 * self.scales.pop(slot)) for slot in done])
            labels = torch.stack([torch.as_tensor(self.labels.pop(slot)) for slot in done])
            for slot in done:
                del self.left[slot]
            yield probs, labels.to(self.device)


@torch.no_grad()
def dense_probabilities(fcn: torch.nn.Module, views: list[list[torch.Tensor]], norm: Normalize,
                        device: torch.device, dtype: torch.dtype | None = None,
                        batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, K) of N images, ``views[n]`` holding image n at each scale: the softmax at
    every position of the score map, averaged over positions, the image and its mirror, and scales."""
    batches = DenseBatches(fcn, norm, device, dtype, batch_size)
    labels = torch.arange(len(views))         # the images' own order, to put the results back in
    probs = torch.empty(len(views), fcn.num_classes, device=device)   # float32, as class_probabilities
    for p, order in [*batches.add(views, labels), *batches.finish()]:
        probs[order] = p.float()
    return probs
