"""Top-k classes of single images, by name, with probabilities.

Each image goes through the fixed preprocessing training used (shorter side to 256, centre 256x256)
and the network's own normalisation, then 1 view (the centre crop) or the paper's 10 views; or, dense,
the whole image at several scales through the fully-convolutional network (dense.py). A file that
cannot be read is reported in its place and the rest are still predicted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.choices import CALIBRATION_IMAGES, SCALES
from alexnet.data.decode import UndecodableImage, load_fixed
from alexnet.data.folders import image_files
from alexnet.dense import dense_probabilities, load_scaled, parse_scales
from alexnet.errors import printable
from alexnet.evaluate import class_probabilities
from alexnet.model import check_positive_int
from alexnet.weights import LoadedModel


@dataclass
class Prediction:
    path: Path
    top: list[tuple[int, float]]        # (class index, probability), most probable first
    error: str = ""                     # why the file could not be predicted; top is then empty


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def expand(inputs: Iterable[str | Path]) -> list[Path | str]:
    """Files as given; a directory becomes its image files (recursively, sorted). A URL stays the string
    it was (as a Path its "//" would fold), to be reported as not fetched."""
    paths: list[Path | str] = []
    for item in inputs:
        if isinstance(item, str) and _URL.match(item):
            paths.append(item)
            continue
        item = Path(item)
        if item.is_dir():
            unreadable: list[tuple[Path, str]] = []
            found = image_files(item, unreadable=unreadable)
            # An empty folder, or one that cannot be read (or a folder in it), is kept as itself, so that it is
            # reported ("permission denied") rather than silently skipped.
            paths += sorted(found + [folder for folder, _ in unreadable]) or [item]
        else:
            paths.append(item)
    return paths


def predict(loaded: LoadedModel, paths: Iterable[Path | str] | Path | str, topk: int = 5, crops: int | str = 1,
            batch_size: int = 32, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
            model: nn.Module | None = None, scales: str | Sequence[int] = SCALES) -> Iterator[Prediction]:
    """One Prediction per path, in order; decoding and the forward pass run a batch at a time.

    paths: image files, as Path or str (one alone is one file); a str with a scheme ("https://...") is a
    URL, reported as not fetched; a folder is reported, not expanded (``expand`` lists its images).
    crops: 1, 10 or "dense" (whole images at ``scales``); dtype: autocast to it (None: fp32); model: a
    stand-in for loaded.model (its int8 copy, say). A wrong topk is a ValueError here, at the call, not at
    the first image."""
    k = check_positive_int(topk, "topk")
    batch_size = check_positive_int(batch_size, "batch_size")
    if crops not in (1, 10, "dense"):
        raise ValueError(f"crops must be 1, 10 or 'dense', got {crops!r}")
    if crops == "dense" and not hasattr(loaded.model if model is None else model, "to_fully_convolutional"):
        raise ValueError("crops='dense' runs the network made fully convolutional, which an int8 network has "
                         "no form of; use 1 or 10 views with it, or dense views in fp32 or bf16")
    return _predict(loaded, as_paths(paths), min(k, len(loaded.classes)), crops, batch_size, device, dtype, model,
                    scales)


def _predict(loaded: LoadedModel, paths: Iterable[Path | str], k: int, crops: int | str, batch_size: int,
             device: torch.device | str, dtype: torch.dtype | None, model: nn.Module | None,
             scales: str | Sequence[int]) -> Iterator[Prediction]:
    model = (loaded.model if model is None else model).to(device)   # left in its mode: class_probabilities
    batch: list[tuple[Path, torch.Tensor | list[torch.Tensor] | str]] = []
    if crops == "dense":
        fcn = model.to_fully_convolutional().eval()
        scales = parse_scales(scales, fcn.input_size)   # the network's input, not the file's crop (see evaluate)

    def load(path: Path | str) -> torch.Tensor | list[torch.Tensor] | str:
        if crops != "dense":
            return _load(path, lambda p: load_fixed(p, small=loaded.small))
        return _load(path, lambda p: load_scaled(p, scales, fcn.input_size, loaded.small))

    def probabilities(good: list) -> torch.Tensor:
        if crops == "dense":
            return dense_probabilities(fcn, good, loaded.norm, torch.device(device), dtype, batch_size)
        return class_probabilities(model, torch.stack(good).to(device), loaded.crop, loaded.norm, crops, dtype)

    def flush() -> Iterator[Prediction]:
        good = [image for _, image in batch if not isinstance(image, str)]
        if good:
            values, indices = probabilities(good).topk(k, dim=1)
            rows = iter(zip(indices.tolist(), values.tolist(), strict=True))
        for path, image in batch:
            if not isinstance(image, str):
                idx, p = next(rows)
                yield Prediction(path, list(zip(idx, p, strict=True)))
            else:
                yield Prediction(path, [], image)
        batch.clear()

    for path in paths:   # as_paths made them Paths (URLs strings)
        batch.append((path, load(path)))
        if len(batch) == batch_size:
            yield from flush()
    yield from flush()


def setup(loaded: LoadedModel, device: str = "auto", precision: str = "fp32", calibration: Sequence[Path] = (),
          calibration_images: int | None = None,
          batch_size: int = 32) -> tuple[torch.device, torch.dtype | None, nn.Module | None]:
    """(device, autocast dtype, model or None for loaded.model) for a --device and --precision setting.

    int8 runs on the CPU ("auto" means the CPU then), on the network quantized with ``calibration``."""
    from alexnet.config import INFERENCE_PRECISIONS
    from alexnet.device import pick_device
    from alexnet.precision import autocast_dtype
    from alexnet.quantize import require_cpu

    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    if precision != "int8":
        dev = pick_device(device)
        return dev, autocast_dtype(precision, dev), None
    dev = pick_device("cpu" if device == "auto" else device)
    require_cpu(dev)
    return dev, None, int8_model(loaded, list(calibration), calibration_images, batch_size)


def int8_model(loaded: LoadedModel, paths: list[Path], images: int | None = None, batch_size: int = 32):
    """``loaded``'s network quantized to int8, calibrated on up to ``images`` of ``paths`` spread evenly over
    them; unreadable ones are left out (predict reports them where they are predicted)."""
    from alexnet.quantize import quantize_loaded, spread

    chosen = [paths[i] for i in spread(len(paths), images or CALIBRATION_IMAGES)]

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(chosen), batch_size):
            good = [x for p in chosen[start:start + batch_size]
                    if isinstance(x := _load(p, lambda f: load_fixed(f, small=loaded.small)), torch.Tensor)]
            if good:
                yield torch.stack(good)

    return quantize_loaded(loaded, batches())


def as_path(item: Path | str) -> Path | str:
    """A Path, or a URL left as the string it was (as a Path its "//" would fold)."""
    return item if isinstance(item, str) and _URL.match(item) else Path(item)


def as_paths(paths: Iterable[Path | str] | Path | str) -> list[Path | str]:
    """Image paths as the functions that take them read them: each a Path, a URL left a string; one path
    alone is one file (not, as a string is iterated, one "file" per character)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [as_path(p) for p in paths]


def _load(path: Path | str, read):
    """``read(path)`` (the fixed 256x256 uint8 image, say), or the reason it cannot be had."""
    path = as_path(path)
    if isinstance(path, str):
        return "a URL: nothing is fetched from the network; download the image and give its path"
    if path.is_dir():
        # expand() keeps only an empty or unreadable folder as itself; one given here directly may hold images.
        unreadable: list[tuple[Path, str]] = []
        if not image_files(path, unreadable=unreadable):
            if unreadable and unreadable[0][0] == path:
                return unreadable[0][1]   # "permission denied"
            return "no image files in this folder"
        return "a folder: give its image files (alexnet.predict.expand lists a folder's images)"
    try:
        return read(path)
    except UndecodableImage as e:  # also a missing or unreadable file: open_rgb says which
        return str(e)


def as_dict(loaded: LoadedModel, prediction: Prediction) -> dict:
    """{"path", "predictions": [{"class", "name", "probability"}, ...]}: one JSON line per image; with
    "error" too (and no predictions) for an image that could not be predicted."""
    row = {"path": str(prediction.path),
           "predictions": [{"class": loaded.classes[i], "name": loaded.names[i], "probability": p}
                           for i, p in prediction.top]}
    if prediction.error:
        row["error"] = prediction.error
    return row


def format_prediction(loaded: LoadedModel, prediction: Prediction) -> str:
    """A readable block: the path, then one ranked line per class (or the reason there are none)."""
    lines = [printable(str(prediction.path))]
    if prediction.error:
        return "\n".join(lines + [f"  error: {printable(prediction.error)}"])
    width = max(len(_label(loaded, i)) for i, _ in prediction.top)
    for rank, (i, p) in enumerate(prediction.top, 1):
        lines.append(f"  {rank}. {_label(loaded, i):<{width}}  {100 * p:6.2f}%")
    return "\n".join(lines)


def _label(loaded: LoadedModel, index: int) -> str:
    name, folder = printable(loaded.names[index]), printable(loaded.classes[index])
    return name if name == folder else f"{name} ({folder})"


