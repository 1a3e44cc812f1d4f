"""Top-1 and top-5 accuracy with 1 view (the centre crop), the paper's 10 views, or dense evaluation
over whole images at several scales (dense.py), exact under DDP.

With 10 views, each image's class probabilities are the mean of the softmax over its views (paper
section 4.1), and its loss is the cross-entropy of that mean; dense views average the softmax over the
positions of the score map, mirrors and scales. Under torchrun every process evaluates
its own shard (no sample padded or repeated) and the sums are added up, so the numbers are those a
single process would give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from alexnet import distributed
from alexnet.choices import CALIBRATION_IMAGES, SCALES
from alexnet.dense import DenseBatches, DenseImages, parse_scales
from alexnet.data.folders import SkippedFiles
from alexnet.data.transforms import Normalize, center_view, ten_views
from alexnet.errors import UserError
from alexnet.precision import autocast, input_dtype


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off) for the block, then every part of it in the mode it was in: a
    caller's network that was training (fine-tuning, predicting between steps) goes on training."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def class_probabilities(model: nn.Module, images: torch.Tensor, size: int, norm: Normalize, crops: int = 1,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (N, 256, 256, 3) on the model's device -> (N, K) float32 probabilities, of the network in eval
    mode whatever mode it is in (and is left in)."""
    with eval_mode(model):
        return _probabilities(model, images, size, norm, crops, dtype).float()


def _probabilities(model: nn.Module, images: torch.Tensor, size: int, norm: Normalize, crops: int = 1,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """class_probabilities in float64: a network sure of a wrong class gives the right one less than float32
    holds (1e-45), and the loss is the log of it (a float32 softmax and a floor of 1e-12 held every image's
    loss at 27.6, whatever it was)."""
    if crops not in (1, 10):
        raise ValueError(f"crops must be 1 or 10, got {crops!r}")
    with autocast(images.device, dtype):
        if crops == 1:
            return model(center_view(images, size, norm).to(input_dtype(model))).double().softmax(1)
        views = ten_views(images, size, norm).to(input_dtype(model))   # (N, 10, 3, S, S)
        n = views.shape[0]
        logits = model(views.flatten(0, 1).contiguous(memory_format=torch.channels_last))
    return logits.double().softmax(1).reshape(n, 10, -1).mean(1)


VIEWS = (1, 10, "dense")


@torch.no_grad()
def evaluate(model: nn.Module, loader, skipped: SkippedFiles, size: int, norm: Normalize,
             dist: distributed.Dist, crops: int | str = 1, dtype: torch.dtype | None = None,
             progress: bool = False, batch_size: int = 64, stop: Callable[[], bool] | None = None) -> dict:
    """{"loss", "top1", "top5" (fractions), "images", "skipped"} over the loader's samples on all ranks.

    crops: 1, 10, or "dense" (then the loader gives DenseImages batches; batch_size caps the images of
    one size in a forward pass). stop: asked before each batch; where it says so on any rank, the pass is
    given up and the result is {"stopped": True} on every rank (no collective more than a whole pass)."""
    was_training = model.training
    model.eval()
    device = dist.device
    dense = DenseBatches(model.to_fully_convolutional().eval(), norm, device, dtype, batch_size) \
        if crops == "dense" else None
    sums = torch.zeros(4, dtype=torch.float64, device=device)   # loss, top-1 hits, top-5 hits, images
    skipped_before = skipped.this_epoch
    stopped = 0.0
    for images, labels, indices, errors in tqdm(loader, desc="evaluate", unit="batch", leave=False,
                                                disable=None if progress else True):
        if stop is not None and stop():
            stopped = 1.0
            break
        images, labels = skipped.keep(images, labels, indices, errors)
        if not len(labels):
            continue
        if dense is not None:
            for probs, done in dense.add(images, labels):
                sums += _tally(probs, done)
        else:
            probs = _probabilities(model, images.to(device, non_blocking=True), size, norm, crops, dtype)
            sums += _tally(probs, labels.to(device, non_blocking=True))
    for probs, done in dense.finish() if dense is not None and not stopped else ():
        sums += _tally(probs, done)
    model.train(was_training)
    skipped_here = torch.tensor([skipped.this_epoch - skipped_before, stopped], dtype=torch.float64, device=device)
    total = distributed.all_sum(dist, torch.cat([sums, skipped_here]))
    loss, top1, top5, n, bad, stopped = total.tolist()
    if stopped:
        return {"stopped": True}
    n_safe = max(n, 1.0)
    return {"loss": loss / n_safe, "top1": top1 / n_safe, "top5": top5 / n_safe, "images": int(n), "skipped": int(bad)}


def _tally(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(loss, top-1 hits, top-5 hits, images) of one batch, summed, float64."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    # float64 probabilities (_probabilities): the floor, 2e-308, is a loss of 708 an image, not reached unless a
    # logit leads the right class's by as much.
    floor = torch.finfo(probs.dtype).tiny
    return torch.stack([-probs.gather(1, labels[:, None]).clamp_min(floor).log().sum().double(),
                        hits[:, 0].sum().double(), hits.any(1).sum().double(),
                        probs.new_full((), len(labels), dtype=torch.float64)])


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, crops: int | str = 1, batch_size: int = 64,
                        workers: int | None = None, device: str = "auto", precision: str = "fp32",
                        calibration_images: int | None = None, progress: bool = True,
                        scales: str | tuple[int, ...] = SCALES, small: str | None = None) -> dict | None:
    """Accuracy of the network in ``checkpoint`` (training .pt or safetensors) on ``data``/val.

    crops: 1 (the centre crop), 10 (the paper's views) or "dense" (whole images at ``scales``, read from
    the source files: a prepared store's own pixels are only the centre 256x256). small: what to do with
    images under 256 (choices.SMALL; default: what the network was trained with); with 1 or 10 views a
    prepared store made otherwise is refused.

    precision "int8" evaluates the network quantized on the CPU ("auto" device means the CPU then),
    calibrated on ``calibration_images`` of ``data``/train. Under torchrun each process evaluates its own
    shard and the counts are summed, so the numbers are the single-process ones. Returns the metrics
    (plus "crops", "scales" when dense, and "seconds": the wall time of the evaluation loop) on rank 0,
    None on the other ranks.
    """
    import time

    from alexnet.data.loader import default_workers, eval_loader
    from alexnet.data.sources import open_split
    from alexnet.precision import autocast_dtype
    from alexnet.quantize import require_cpu
    from alexnet.weights import load_model

    if crops not in VIEWS:
        raise UserError(f"--views must be 1, 10 or dense, got {crops!r}")
    int8 = precision == "int8"
    if int8 and crops == "dense":
        raise UserError("--views dense needs the float network (its fc layers become convolutions); "
                        "use --precision fp32, bf16 or auto")
    dist = distributed.setup("cpu" if int8 and device == "auto" else device)
    try:
        if int8:
            require_cpu(dist.device)
        loaded = load_model(checkpoint)
        loaded.small = small or loaded.small
        # Dense views decode the source files themselves, whatever a prepared store did with small images.
        val = open_split(data, "val", classes=loaded.classes, small=None if crops == "dense" else loaded.small)
        left_out = val.unreadable   # by prepare: counted as skipped, as evaluating its source folder would
        dtype = None if int8 else autocast_dtype(precision, dist.device)
        extra = {"crops": crops, "classes": len(loaded.classes)}
        if crops == "dense":
            # Sized by the network's own input (the owt network's 224), not the file's crop, which may be smaller.
            extra["scales"] = parse_scales(scales, loaded.model.input_size)
            val = DenseImages(val, extra["scales"], loaded.model.input_size, loaded.small)
            workers = default_workers(val, dist.device, training=False) if workers is None else workers
            loader = eval_loader(val, batch_size, dist.rank, dist.world, workers, pin_memory=False,
                                 collate=DenseImages.collate)
        else:
            feed = val.for_device(dist.device)
            workers = default_workers(feed, dist.device, training=False) if workers is None else workers
            loader = eval_loader(feed, batch_size, dist.rank, dist.world, workers,
                                 pin_memory=dist.device.type == "cuda")
        if int8:
            model, extra["calibrated"] = int8_model(loaded, data, calibration_images, batch_size, workers)
        else:
            model = loaded.model.to(dist.device)
        start = time.perf_counter()
        metrics = evaluate(model, loader, SkippedFiles(val), loaded.crop, loaded.norm, dist, crops=crops,
                           dtype=dtype, progress=progress and dist.main, batch_size=batch_size)
        extra["seconds"] = time.perf_counter() - start
        metrics["skipped"] += left_out
        if metrics["images"] == 0:   # every file skipped (each named above): no accuracy to report
            raise UserError(f"no readable image in {val.split.root}: every file was skipped")
        return metrics | extra if dist.main else None
    finally:
        distributed.teardown(dist)


def int8_model(loaded, data: str | Path, images: int | None = None, batch_size: int = 64, workers: int = 2):
    """``loaded``'s network quantized to int8, calibrated on ``images`` of ``data``/train spread evenly over
    it (the same ones every run and on every process): never on val, whose accuracy is being measured.
    Returns the network and how many images it was calibrated on (all of train where it has fewer; the
    unreadable ones, skipped with a warning, not counted)."""
    from alexnet.data.loader import eval_loader
    from alexnet.data.sources import open_split
    from alexnet.quantize import quantize_loaded, spread

    train = open_split(data, "train", classes=loaded.classes, small=loaded.small)
    subset = train.subset(spread(len(train), images or CALIBRATION_IMAGES))
    skipped = SkippedFiles(subset)
    loader = eval_loader(subset, batch_size, 0, 1, workers, pin_memory=False)
    used = 0

    def readable():
        nonlocal used
        for batch in loader:
            images = skipped.keep(*batch)[0]
            used += len(images)
            yield images

    return quantize_loaded(loaded, readable()), used
