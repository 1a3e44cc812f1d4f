"""The paper's augmentation and test views, on whole uint8 batches, on whatever device they are on.

Batches arrive as the loaders produce them: uint8 (N, 256, 256, 3), the fixed preprocessing already
done. Everything random or per-view happens here, in a few batched tensor ops, so the same code runs
on a CPU and, without a host-side bottleneck, on a GPU:

  train:  a random crop (227 paper, 224 owt) of each image, mirrored with p=0.5   (paper section 4.1)
          minus the mean image at the same pixels, plus PCA colour noise per image
  center: the central crop                                                           (1-view testing)
  ten:    the four corner crops and the centre crop, and their mirror images         (10-view testing)

Outputs are float32 (N, 3, S, S) in channels_last memory (a free permute of the NHWC input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from alexnet import kernels
from alexnet.choices import NORMALIZATIONS

PCA_CONVENTIONS = ("paper", "cuda-convnet")
PCA_STD = 0.1  # alpha_i ~ N(0, 0.1)
MIN_CHANNEL_STD = 1.0  # 0-255 units: the least a channel is divided by (Normalize.create)

# torchvision's ImageNet normalisation (its weights expect it), in 0-255 units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass
class PCANoise:
    """Per-image colour shift sum_i alpha_i * f(lambda_i) * p_i, with alpha_i ~ N(0, std).

    f(lambda) = lambda as the paper prints it ("paper"), or sqrt(lambda) as cuda-convnet2's code did
    ("cuda-convnet"). lambda_i and p_i are the eigenpairs of the RGB covariance of [0, 1] pixels; the
    shift is returned in 0-255 units.
    """
    eigvals: torch.Tensor  # (3,)
    eigvecs: torch.Tensor  # (3, 3), columns
    std: float = PCA_STD
    convention: str = "paper"

    def __post_init__(self) -> None:
        if self.convention not in PCA_CONVENTIONS:
            raise ValueError(f"unknown PCA convention {self.convention!r}; choose from {', '.join(PCA_CONVENTIONS)}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 3) RGB shifts, one per image, drawn on the CPU so results do not depend on the device."""
        return self.shift(torch.randn(n, 3, generator=generator, dtype=torch.float64))

    def shift(self, normal: torch.Tensor) -> torch.Tensor:
        """The shifts for standard-normal draws ``normal`` (n, 3): alpha = std * normal."""
        scale = self.eigvals.double().clamp_min(0)
        if self.convention == "cuda-convnet":
            scale = scale.sqrt()
        return ((normal.double() * self.std * scale) @ self.eigvecs.double().T * 255.0).float()


@dataclass
class Draws:
    """The random choices of one batch's training views."""
    tops: torch.Tensor     # (N,) long
    lefts: torch.Tensor    # (N,) long
    flips: torch.Tensor    # (N,) bool
    normal: torch.Tensor   # (N, 3) standard normal, for PCA noise

    def select(self, keep: torch.Tensor) -> Draws:
        """The draws of the samples where ``keep`` is True (a batch without its unreadable samples)."""
        return Draws(self.tops[keep], self.lefts[keep], self.flips[keep], self.normal[keep])

    @classmethod
    def from_generator(cls, n: int, height: int, width: int, size: int, generator: torch.Generator | None = None,
                       flip: bool = True) -> Draws:
        tops = torch.randint(0, height - size + 1, (n,), generator=generator)
        lefts = torch.randint(0, width - size + 1, (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        normal = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return cls(tops, lefts, flips & flip, normal)

    @classmethod
    def per_sample(cls, indices: torch.Tensor, epoch: int, seed: int, height: int, width: int, size: int,
                   flip: bool = True) -> Draws:
        """Draws that depend only on (seed, epoch, sample index): a sample is augmented the same way
        whichever process, batch or resumed run it lands in, so runs on 1 or P processes match.

        A counter-based hash over the whole batch at once (see _hashes), not a generator per sample: the
        main process must keep up with a GPU, over a million samples a second instead of tens of thousands.
        """
        if size > min(height, width):
            raise ValueError(f"crop {size} is larger than the {height}x{width} images")
        h = _hashes(indices.to(torch.int64).cpu().numpy().astype(np.uint64), epoch, seed)
        tops = _below(h[:, 0], height - size + 1)
        lefts = _below(h[:, 1], width - size + 1)
        flips = (h[:, 2] >> 63).astype(bool) & flip
        # Box-Muller; the radius's uniform is in (0, 1], so never log(0).
        radius = np.sqrt(-2.0 * np.log(((h[:, 3:6] >> 11) + 1) * 2.0**-53))
        normal = radius * np.cos((2 * np.pi * 2.0**-53) * (h[:, 6:9] >> 11))
        return cls(torch.from_numpy(tops), torch.from_numpy(lefts), torch.from_numpy(flips), torch.from_numpy(normal))


_GOLDEN = 0x9E3779B97F4A7C15   # splitmix64's increment
_STREAMS = 9                   # top, left, flip, then a radius and an angle uniform for each of 3 normals


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser; uint64 arrays wrap mod 2**64 and shift logically (torch's int64 would not).
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


def _hashes(indices: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """(N, _STREAMS) uint64: per stream, a splitmix64 sequence whose key comes from (seed, epoch, stream),
    read at position ``index``. Streams are independent, and nearby seeds and epochs give unrelated keys."""
    mask = 2**64 - 1
    key = _mix64(np.array([seed & mask], np.uint64) + _GOLDEN)
    key = _mix64((key ^ (epoch & mask)) + _GOLDEN)
    keys = _mix64((key ^ np.arange(_STREAMS, dtype=np.uint64)) + _GOLDEN)
    return _mix64(indices[:, None] * _GOLDEN + keys)


def _below(h: np.ndarray, n: int) -> np.ndarray:
    # Multiply-high of the top 32 bits: 0..n-1 with a bias of at most n / 2**32, and no modulo.
    return ((h >> 32) * n >> 32).astype(np.int64)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``. A CPU tensor bound for a GPU goes through pinned memory and does not wait: CUDA
    syncs the stream before a copy from pageable memory, which would hold the host back, every batch, until
    the GPU had finished all it was given."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class Normalize:
    """x -> (x - mean) / std, with mean a per-pixel image (the paper) or per channel (torchvision).

    mean: (H, W, 3) or (3,) in 0-255 units; std: (3,) in 0-255 units, or None (the paper feeds raw 0-255
    values minus the mean, without dividing).
    """
    mean: torch.Tensor
    std: torch.Tensor | None = None
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def on(self, device: torch.device) -> Normalize:
        """This normalisation with its tensors on ``device``: copied there once, not with every batch."""
        if self.mean.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = Normalize(to_device(self.mean, device),
                                             None if self.std is None else to_device(self.std, device))
        return self._copies[device]

    @classmethod
    def create(cls, kind: str, stats=None) -> Normalize:
        """"mean-image" (paper, needs DataStats), "channel" (mean/std of this training set, needs
        DataStats) or "imagenet" (torchvision's constants)."""
        if kind == "imagenet":
            return cls(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))
        if kind not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {kind!r}; choose from {', '.join(NORMALIZATIONS)}")
        if stats is None:
            raise ValueError(f"normalization {kind!r} needs the training set's statistics")
        if kind == "mean-image":
            return cls(stats.mean_image)
        # A channel that never varies (a red channel at 0 in every image) has std 0, and x / 0 made every
        # input NaN; one that varies by under a level would be mostly rounding noise blown up. Such a
        # channel is divided by one level at least (scikit-learn's StandardScaler leaves constant ones unscaled).
        return cls(stats.channel_mean, stats.channel_std.clamp_min(MIN_CHANNEL_STD))

    @property
    def per_pixel(self) -> bool:
        return self.mean.dim() == 3


@dataclass
class Preprocessing:
    """What turns a run's uint8 images into network input: the crop side, the normalisation, and the
    PCA colour noise of training (None without). Checkpoints record it (checkpoint.py), so that
    evaluation and prediction see images exactly as training did."""
    size: int
    norm: Normalize
    pca: PCANoise | None


def crop(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor,
         size: int, norm: Normalize, sources: torch.Tensor | None = None,
         shift: torch.Tensor | None = None) -> torch.Tensor:
    """Crop k: image sources[k] (default k) at (tops[k], lefts[k]), mirrored where flips[k], normalised,
    plus ``shift[k]`` (a colour in 0-255 units, PCA noise) before dividing by the std.

    Returns (K, 3, size, size) float32. The mean image is read at the same pixels, mirrored with them:
    exactly "subtract the mean image, then crop and flip".
    """
    sources = torch.arange(len(tops)) if sources is None else sources
    norm = norm.on(images.device)
    mean = norm.mean
    if norm.per_pixel and tuple(mean.shape[:2]) != tuple(images.shape[1:3]):
        # The C kernel reads the mean at the images' pixels: past its end where they are larger.
        raise ValueError(f"the mean image is {mean.shape[0]}x{mean.shape[1]} and the images are "
                         f"{images.shape[1]}x{images.shape[2]}: a mean image is subtracted from images of its own "
                         f"size (alexnet.data.decode.load_fixed makes them)")
    if images.dtype == torch.uint8 and (_have_crop_kernel() if images.device.type == "cpu" else
                                        images.is_cuda and _have_cuda_crop_kernel()):
        std = None if norm.std is None else norm.std.float()
        x = crop_fused(images, mean.float(), std, shift, sources, tops, lefts, flips, size, norm.per_pixel)
        return x.permute(0, 3, 1, 2)
    if images.is_cuda:
        x = _crop_gather(images, mean, tops, lefts, flips, sources, size, norm.per_pixel)
    else:
        x = _crop_loop(images, mean, tops, lefts, flips, sources, size, norm.per_pixel)
    if shift is not None:
        x += to_device(shift, x.device)[:, None, None, :]
    if norm.std is not None:
        x /= norm.std
    return x.permute(0, 3, 1, 2)                                        # NCHW view, channels_last memory


@kernels.constant_to_the_compiler
def _have_crop_kernel() -> bool:
    return kernels.crop_cpu() is not None


@kernels.constant_to_the_compiler
def _have_cuda_crop_kernel() -> bool:
    return kernels.crop_cuda() is not None


# An operator of its own (torch.library), so that torch.compile sees the fused crop as one node with a
# known output instead of a call it cannot trace; its CUDA kernel is Triton's.
@torch.library.custom_op("alexnet::crop", mutates_args=(), device_types="cpu")
def crop_fused(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None, shift: torch.Tensor | None,
               sources: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor, size: int,
               per_pixel: bool) -> torch.Tensor:
    """(K, size, size, 3) float32 crops of uint8 NHWC images in one pass per output value: on a CPU
    kernels/crop_cpu.c, several times the images per second of _crop_loop; on CUDA kernels/crop_triton.py."""
    images, mean = images.contiguous(), mean.float().contiguous()
    std = None if std is None else std.float().contiguous()
    shift = None if shift is None else shift.float().contiguous()
    sources, tops, lefts = (t.to(torch.int64).contiguous() for t in (sources, tops, lefts))
    flips = flips.to(torch.uint8).contiguous()
    n, h, w, _ = images.shape
    _check_inside(images, size, sources, tops, lefts)
    x = torch.empty(len(tops), size, size, 3, dtype=torch.float32)   # what the kernel writes, whatever the default
    kernels.crop_cpu().crop_normalize(
        images.data_ptr(), h, w, mean.data_ptr(), int(per_pixel), _ptr(std), _ptr(shift), sources.data_ptr(),
        tops.data_ptr(), lefts.data_ptr(), flips.data_ptr(), len(tops), size, x.data_ptr(), torch.get_num_threads())
    return x


def _check_inside(images: torch.Tensor, size: int, sources: torch.Tensor, tops: torch.Tensor,
                  lefts: torch.Tensor) -> None:
    """A ValueError where a crop would reach outside its image: the kernels read where they are told."""
    n, h, w, _ = images.shape
    if len(tops) and not (0 <= int(sources.min()) <= int(sources.max()) < n
                          and 0 <= int(tops.min()) <= int(tops.max()) <= h - size
                          and 0 <= int(lefts.min()) <= int(lefts.max()) <= w - size):
        raise ValueError(f"a {size}x{size} crop reaches outside the {n} images of {h}x{w} it is taken from")


@crop_fused.register_kernel("cuda")
def _(images, mean, std, shift, sources, tops, lefts, flips, size, per_pixel):
    # The same values in one Triton kernel (kernels/crop_triton.py), the draws moved to the GPU. Positions
    # drawn on the CPU (as every caller of ours draws them) are checked there: no wait for the GPU.
    if all(t.device.type == "cpu" for t in (sources, tops, lefts)):
        _check_inside(images, size, sources, tops, lefts)
    moved = [None if t is None else to_device(t, images.device)
             for t in (mean, std, shift, sources, tops, lefts, flips)]
    return kernels.crop_cuda().crop(images, *moved, size, per_pixel)


@crop_fused.register_fake
def _(images, mean, std, shift, sources, tops, lefts, flips, size, per_pixel):
    return images.new_empty(tops.shape[0], size, size, 3, dtype=torch.float32)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _crop_loop(images, mean, tops, lefts, flips, sources, size, per_pixel):
    # On a CPU, slicing image by image is 3x faster than one big gather (measured at batch 128).
    x = torch.empty(len(tops), size, size, 3, dtype=torch.float32, device=images.device)
    for k, (n, t, l, f) in enumerate(zip(sources.tolist(), tops.tolist(), lefts.tolist(), flips.tolist())):
        out = x[k]
        out.copy_(images[n, t:t + size, l:l + size])
        out.sub_(mean[t:t + size, l:l + size] if per_pixel else mean)
        if f:
            x[k] = out.flip(1)
    return x


def _crop_gather(images, mean, tops, lefts, flips, sources, size, per_pixel):
    # On a GPU, one gather for the whole batch instead of a few small kernels per image.
    device = images.device
    tops, lefts, flips, sources = (to_device(t, device) for t in (tops, lefts, flips, sources))
    offsets = torch.arange(size, device=device)
    rows = (tops[:, None] + offsets)[:, :, None]                        # (K, S, 1)
    cols = lefts[:, None] + offsets                                     # (K, S)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, :]
    x = images[sources[:, None, None], rows, cols].float()              # (K, S, S, 3)
    return x - (mean[rows, cols] if per_pixel else mean)


def train_views(images: torch.Tensor, size: int, norm: Normalize, pca: PCANoise | None = None,
                flip: bool = True, generator: torch.Generator | None = None, draws: Draws | None = None) -> torch.Tensor:
    """Training inputs: a random ``size`` crop of each image, mirrored with p=0.5, PCA noise added.

    The random choices are ``draws`` when given (see Draws.per_sample), else drawn from ``generator``
    on the CPU; either way a seed gives the same augmentation on any device.
    """
    n, h, w, _ = images.shape
    _check(images, size)
    if draws is None:
        draws = Draws.from_generator(n, h, w, size, generator, flip)
    shift = pca.shift(draws.normal) if pca is not None else None
    return crop(images, draws.tops, draws.lefts, draws.flips, size, norm, shift=shift)


def view_positions(height: int, width: int, size: int) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of the paper's 10 test views: the top-left, top-right, bottom-left,
    bottom-right and centre crops, then the reflection of each, in the same order (paper section 4.1).

    torchvision's ten_crop takes its second five from the mirrored image instead: the same corners, but
    where width - size is odd (256 - 227 = 29) its centre crop of the mirrored image lies one pixel to the
    right of the reflected centre crop, so one of its ten views is not a reflection of the other five."""
    cy, cx = round((height - size) / 2), round((width - size) / 2)   # torchvision's center_crop rounding
    five = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (cy, cx)]
    return [(t, l, False) for t, l in five] + [(t, l, True) for t, l in five]


def center_view(images: torch.Tensor, size: int, norm: Normalize) -> torch.Tensor:
    """The central ``size`` crop of each image: 1-view testing. (N, 3, size, size)."""
    n, h, w, _ = images.shape
    _check(images, size)
    top, left, _ = view_positions(h, w, size)[4]
    tops, lefts = torch.full((n,), top), torch.full((n,), left)
    return crop(images, tops, lefts, torch.zeros(n, dtype=torch.bool), size, norm)


def ten_views(images: torch.Tensor, size: int, norm: Normalize) -> torch.Tensor:
    """The paper's 10 test views of each image (see view_positions): (N, 10, 3, size, size).

    Evaluate by averaging the softmax over dim 1 (paper section 4.1).
    """
    n, h, w, _ = images.shape
    _check(images, size)
    positions = view_positions(h, w, size)
    tops = torch.tensor([t for t, _, _ in positions]).repeat(n)
    lefts = torch.tensor([l for _, l, _ in positions]).repeat(n)
    flips = torch.tensor([f for _, _, f in positions]).repeat(n)
    sources = torch.arange(n).repeat_interleave(len(positions))
    views = crop(images, tops, lefts, flips, size, norm, sources=sources)
    return views.reshape(n, len(positions), 3, size, size)


def _check(images: torch.Tensor, size: int) -> None:
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
    if size > min(images.shape[1], images.shape[2]):
        raise ValueError(f"crop {size} is larger than the {images.shape[1]}x{images.shape[2]} images")
