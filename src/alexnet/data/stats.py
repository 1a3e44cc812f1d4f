"""Training-set statistics the paper's preprocessing needs, computed once and cached.

- The per-pixel mean image (paper section 2: "subtracting the mean activity over the training set from
  each pixel"): the mean of all fixed 256x256 training images, (256, 256, 3), in 0-255 units.
- The PCA of RGB pixel values (section 4.1): eigenpairs of the 3x3 covariance of every training pixel,
  on pixels scaled to [0, 1], the scale of the widely quoted ImageNet eigenvalues (0.2175, 0.0188,
  0.0045). The paper's noise term alpha * lambda is not scale-free, so the scale is part of the recipe.
- Per-channel mean and standard deviation (0-255 units), for torchvision's normalisation convention.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from alexnet.cores import usable_cores
from alexnet.data.folders import SkippedFiles
from alexnet.data.imageset import ImageSet
from alexnet.data.loader import Loader, leave_stop_signals_to_the_parent
from alexnet.errors import UserError
from alexnet.files import save_safetensors, utf8_name, write_or_say

# The cache's name, in a run folder and in a prepared store: beside weights, but holding none.
STATS_FILE = "data_stats.safetensors"
from alexnet.progress import progress_bar

STATS_VERSION = "1"
_CHUNK = 8   # images whose pixels are widened to float64 at once: 12 MB at 256x256


@dataclass
class DataStats:
    mean_image: torch.Tensor    # (H, W, 3) float32, 0-255
    channel_mean: torch.Tensor  # (3,) float32, 0-255
    channel_std: torch.Tensor   # (3,) float32, 0-255
    eigvals: torch.Tensor       # (3,) float32, descending, variances of [0, 1] pixels
    eigvecs: torch.Tensor       # (3, 3) float32, column i belongs to eigvals[i]
    images: int                 # how many images went into the statistics
    fingerprint: str            # which files they came from (see fingerprint())
    # The pass's sample: 0 for every image, else the --stats-images it was asked for; None where the file does
    # not say (written before it was recorded).
    sample: int | None = 0

    def save(self, path: Path) -> None:
        tensors = {k: getattr(self, k).contiguous() for k in
                   ("mean_image", "channel_mean", "channel_std", "eigvals", "eigvecs")}
        meta = {"version": STATS_VERSION, "images": str(self.images), "fingerprint": self.fingerprint}
        if self.sample is not None:
            meta["sample"] = str(self.sample)
        write_or_say(path, lambda tmp: save_safetensors(tensors, tmp, metadata=meta),
                     need=sum(t.numel() * t.element_size() for t in tensors.values()))

    @classmethod
    def load(cls, path: Path) -> DataStats:
        from safetensors import safe_open

        with utf8_name(path) as name, safe_open(name, framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        sample = meta.get("sample")
        return cls(**t, images=int(meta.get("images", 0)), fingerprint=meta.get("fingerprint", ""),
                   sample=int(sample) if sample is not None else None)


# A set's fingerprint, with what it was computed from: a run asks for it more than once (statistics, then the
# checkpoints' record), and ImageNet's 1.28M names take seconds each time.
_FINGERPRINTS: weakref.WeakKeyDictionary[ImageSet, tuple[tuple, str]] = weakref.WeakKeyDictionary()
_NAMES_AT_ONCE = 65536


def fingerprint(dataset: ImageSet) -> str:
    """Identifies the file list (relative paths and labels), the fixed size, what became of small images and,
    where a set's pixels differ from the decoded files' (a jpeg store's), how; not the pixels themselves."""
    split = dataset.split
    key = (dataset.size, dataset.pixels, dataset.small, id(split), id(split.samples), len(split.samples))
    known = _FINGERPRINTS.get(dataset)
    if known is not None and known[0] == key:
        return known[1]
    h = hashlib.sha256(f"v{STATS_VERSION} size={dataset.size}\n".encode())
    if dataset.pixels:
        h.update(f"pixels={dataset.pixels}\n".encode())
    if dataset.small != "upscale":   # padded small images are other pixels (upscaled: as before --small)
        h.update(f"small={dataset.small}\n".encode())
    # Cutting the root's text off each path: Path.relative_to took 2.5 times as long (1.28M names).
    prefix = os.path.join(str(split.root), "")
    lines: list[str] = []
    for path, label in split.samples:
        name = str(path)
        name = name[len(prefix):] if name.startswith(prefix) else str(path.relative_to(split.root))
        lines.append(f"{name}\t{label}\n")
        if len(lines) == _NAMES_AT_ONCE:
            # surrogateescape: a name that is not UTF-8 (Latin-1 from an old archive) hashes as its bytes.
            h.update("".join(lines).encode("utf-8", "surrogateescape"))
            lines.clear()
    h.update("".join(lines).encode("utf-8", "surrogateescape"))
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[dataset] = (key, digest)
    return digest


def compute_stats(dataset: ImageSet, batch_size: int = 64, workers: int | None = None,
                  max_images: int | None = None, progress: bool = True, rank: int = 0, world: int = 1,
                  all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  skipped: SkippedFiles | None = None) -> DataStats:
    """One pass over ``dataset`` (or ``max_images`` of it, evenly spaced) with a progress bar.

    Shared out over processes: each of ``world`` takes every world-th image from ``rank`` on, and
    ``all_sum`` (a sum over the processes, float64) adds up their sums, so every process gets the
    statistics one process would compute, in 1/world of the time. ``skipped``: the record of unreadable
    files to warn through (training passes its own, so that each file is warned about once per run)."""
    everything = list(range(len(dataset)))
    sample = sample_of(dataset, max_images)
    if sample:
        everything = torch.linspace(0, len(everything) - 1, sample).round().long().unique().tolist()
    indices = everything[rank::world]
    workers = min(4, usable_cores()) if workers is None else workers
    loader = Loader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                    collate_fn=ImageSet.collate, worker_init_fn=leave_stop_signals_to_the_parent)
    skipped = skipped if skipped is not None else SkippedFiles(dataset)

    size = dataset.size
    # Sums of the uint8 values themselves, so exact: the image sum in int64, the RGB products in float64
    # (whole numbers, under 2^53 up to 2 million images). The pass over a raw store took 0.64 ms an image
    # instead of 0.82 summing float64 copies scaled to [0, 1] (1 thread, Xeon Emerald Rapids).
    image_sum = torch.zeros(size, size, 3, dtype=torch.int64)
    outer_sum = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for images, labels, idx, errors in progress_bar(loader, desc="mean image and RGB PCA", unit="batch",
                                                    show=progress, leave=False):
        images, _ = skipped.keep(images, labels, idx, errors)
        for part in images.split(_CHUNK):   # a whole batch in float64 would be 100 MB (64 images)
            image_sum += part.sum(0, dtype=torch.int64)
            pixels = part.reshape(-1, 3).double()
            outer_sum += pixels.T @ pixels
        count += len(images)
    if all_sum is not None:
        sums = all_sum(torch.cat([image_sum.flatten().double(), outer_sum.flatten(),
                                  torch.tensor([count], dtype=torch.float64)]))
        image_sum, outer_sum, count = sums[:-10].view(image_sum.shape).long(), sums[-10:-1].view(3, 3), int(sums[-1])
    if count == 0:
        raise UserError(f"no readable image in {dataset.split.root} ({len(everything)} files tried)")

    n_pixels = count * size * size
    mean = image_sum.sum((0, 1)).double() / (255.0 * n_pixels)
    cov = outer_sum / (255.0 ** 2 * n_pixels) - torch.outer(mean, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov)          # ascending
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0), eigvecs.flip(1)
    return DataStats(
        mean_image=(image_sum.double() / count).float(),
        channel_mean=(mean * 255).float(),
        channel_std=(cov.diagonal().clamp_min(0).sqrt() * 255).float(),
        eigvals=eigvals.float(), eigvecs=eigvecs.float(),
        images=count, fingerprint=fingerprint(dataset), sample=sample)


def sample_of(dataset: ImageSet, max_images: int | None) -> int:
    """The pass's sample as DataStats records it: 0 when ``max_images`` takes every image."""
    return max_images if max_images and max_images < len(dataset) else 0


def find_stats(dataset: ImageSet, cache: str | Path, max_images: int | None = None) -> DataStats | None:
    """The statistics from ``cache`` when it was made from the same files and sample (``max_images``, as
    compute_stats takes it), else from the dataset's own (``stats_file``, computed ahead of time over all its
    images, then copied to ``cache``); None when neither has them."""
    cache = Path(cache)
    sample = sample_of(dataset, max_images)
    stats = _matching(cache, dataset, sample)
    if stats is not None:
        return stats
    own = dataset.stats_file
    if own is not None and own != cache and _matching(own, dataset, sample) is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(own, cache)
        return DataStats.load(cache)
    return None


def has_own_stats(dataset: ImageSet) -> bool:
    """Whether the dataset brings statistics computed ahead of time (a prepared store's, over all its
    images) that find_stats takes instead of a pass."""
    return dataset.stats_file is not None and _matching(dataset.stats_file, dataset, 0) is not None


def load_or_compute_stats(dataset: ImageSet, cache: str | Path, **kwargs) -> DataStats:
    """find_stats, or else compute the statistics (kwargs: compute_stats') and cache them."""
    cache = Path(cache)
    stats = find_stats(dataset, cache, kwargs.get("max_images"))
    if stats is not None:
        return stats
    stats = compute_stats(dataset, **kwargs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    stats.save(cache)
    return stats


def _matching(path: Path, dataset: ImageSet, sample: int) -> DataStats | None:
    if not path.is_file():
        return None
    try:
        stats = DataStats.load(path)
    except Exception:  # an unreadable or foreign file is recomputed, never trusted
        return None
    # A file that does not say its sample (an older version's) is taken, as it was then.
    same_sample = stats.sample is None or stats.sample == sample
    if stats.fingerprint == fingerprint(dataset) and stats.mean_image.shape[0] == dataset.size and same_sample:
        return stats
    return None
