"""AlexNet features: the activations of any layer (fc7 by default) for every image of a split, batched.

Images are seen as at test time: the fixed 256x256 preprocessing, the centre crop and the network's
own normalisation from the checkpoint, through the same loader evaluation uses. The default layer is
relu7, fc7's output after its ReLU: the 4096-d "last hidden layer" whose Euclidean distances the paper
uses to find similar images (section 6.1), and what Caffe's fc7 blob holds (its ReLU works in place).

    from alexnet.features import extract_features, split_images
    from alexnet.weights import load_model
    loaded = load_model("runs/demo/best.pt")
    f = extract_features(loaded, split_images("data/demo", "val"))
    f.features  # (N, 4096) float32; f.labels, f.paths, f.classes say which image each row is

``iter_features`` yields the same rows a batch at a time, for splits whose features do not fit in memory
(ImageNet's train set at 4096 floats an image is 21 GB).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.choices import DEFAULT_LAYER
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import ImageSet
from alexnet.data.transforms import center_view
from alexnet.errors import UserError
from alexnet.evaluate import eval_mode
from alexnet.files import atomic_write
from alexnet.inputs import check_images, check_pool5
from alexnet.precision import autocast
from alexnet.progress import progress_bar
from alexnet.weights import LoadedModel

# Why features and neighbours read images as the network was trained: they have no --small to change it
# (ImageSet.with_small's message).
AS_TRAINED = "as the network was trained"


@dataclass
class Features:
    features: torch.Tensor          # (N, D) float32, one row per readable image
    labels: torch.Tensor            # (N,) int64, index into classes
    paths: list[Path]               # (N,)
    classes: list[str]              # the data's class folders (not the network's outputs)
    layer: str
    skipped: int = 0                # unreadable images, left out


def layer_names(loaded: LoadedModel) -> list[str]:
    return [name for name, _ in loaded.model.named_layers()]


def check_layer(loaded: LoadedModel, layer: str) -> None:
    if layer not in layer_names(loaded):
        raise UserError(f"the {loaded.variant} network has no layer {layer!r} "
                        f"(it has {', '.join(layer_names(loaded))})")


@torch.no_grad()
def activations(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Normalised images (N, 3, S, S) -> ``layer``'s output flattened to (N, D).

    The forward pass stops at ``layer``: later layers cost nothing, and fc7's output is taken before
    relu7's in-place ReLU could overwrite it.
    """
    check_images(x, model.variant)   # as model(x) does: one image without its batch axis is refused
    first_fc = model.classifier[0]
    for name, module in model.named_layers():
        if module is first_fc:
            if model.variant == "paper":
                check_pool5(x)
            x = torch.flatten(x, 1)
        x = module(x)
        if name == layer:
            return x.flatten(1).float()
    raise KeyError(f"no layer {layer!r} in the {model.variant} network")


def split_images(data: str | Path, split: str = "val", small: str | None = None) -> ImageSet:
    """DATA's ``split`` (any kind of data: data/sources.py), labelled by the data's own classes; with
    ``small``, its images under 256 treated as a network was trained (choices.SMALL)."""
    from alexnet.data.sources import open_split

    return open_split(data, split, small=small, fixed=AS_TRAINED)


@torch.no_grad()
def iter_features(loaded: LoadedModel, images: ImageSet, layer: str = DEFAULT_LAYER, batch_size: int = 64,
                  workers: int | None = None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                  progress: bool = True, skipped: SkippedFiles | None = None,
                  desc: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices into ``images``, (B, D) features on the CPU) a batch at a time; unreadable images are
    warned about once (``skipped`` counts them) and left out. ``workers`` None: loader.default_workers."""
    from alexnet.data.loader import default_workers, eval_loader

    check_layer(loaded, layer)
    images = images.with_small(loaded.small, AS_TRAINED)   # (a set opened without it upscales)
    device = torch.device(device)
    model = loaded.model.to(device)
    skipped = skipped or SkippedFiles(images)
    feed = images.for_device(device)
    loader = eval_loader(feed, batch_size, rank=0, world=1,
                         workers=default_workers(feed, device, training=False) if workers is None else workers,
                         pin_memory=device.type == "cuda")
    for batch, labels, indices, errors in progress_bar(loader, desc=desc or f"{layer} features", unit="batch",
                                                       show=progress, leave=False):
        keep = labels >= 0
        batch, _ = skipped.keep(batch, labels, indices, errors)
        if not len(batch):
            continue
        x = center_view(batch.to(device, non_blocking=True), loaded.crop, loaded.norm)
        with eval_mode(model), autocast(device, dtype):   # between batches the network is in the caller's mode
            feats = activations(model, x, layer).cpu()
        yield indices[keep], feats          # outside autocast: the caller's code must not run under it


def extract_features(loaded: LoadedModel, images: ImageSet, layer: str = DEFAULT_LAYER, **kwargs) -> Features:
    """Every readable image's ``layer`` activations in one (N, D) tensor; see iter_features for kwargs."""
    images = images.with_small(loaded.small, AS_TRAINED)
    skipped = SkippedFiles(images)
    rows, parts = [], []
    for indices, feats in iter_features(loaded, images, layer, skipped=skipped, **kwargs):
        rows.append(indices)
        parts.append(feats)
    if not rows:
        raise UserError(f"no readable image in {images.split.root}: every file was skipped")
    order = torch.cat(rows).tolist()
    samples = images.split.samples
    return Features(torch.cat(parts), torch.tensor([samples[i][1] for i in order]), [samples[i][0] for i in order],
                    list(images.split.classes), layer, skipped.this_epoch + images.unreadable)


def check_out(path: str | Path) -> None:
    """UserError unless ``path`` is free or holds features written here: a checkpoint, or any other file
    of the user's, given as --out by a slip is never replaced."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name for the features (.npz)")
    try:
        held = np.load(path, allow_pickle=False)   # an .npz archive; an .npy file gives an array
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):   # a cut-short .npz: whose, no one can say
        ours = False
    else:
        ours = {"features", "labels", "layer"} <= set(getattr(held, "files", ()))
        if hasattr(held, "close"):
            held.close()
    if not ours:
        raise UserError(f"{path} exists and holds no features; remove it or choose another --out")


def save_features(features: Features, path: str | Path) -> Path:
    """NumPy .npz (atomically): features (N, D) float32, labels (N,), paths (N,), classes, layer. An existing
    file is replaced only if it holds features too (check_out)."""
    path = Path(path)
    check_out(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(f, features=features.features.numpy(), labels=features.labels.numpy(),
                     paths=np.array([str(Path(p).absolute()) for p in features.paths]),   # usable from any folder
                     classes=np.array(features.classes),
                     layer=np.array(features.layer))
    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path
