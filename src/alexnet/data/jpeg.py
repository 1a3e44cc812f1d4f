"""The JPEG store's codec (`alexnet prepare --store jpeg`): fixed uint8 images <-> JPEG bytes, a batch at a time.

A batch travels as a JpegBatch: its JPEGs end to end in one uint8 tensor (one shared-memory block out of a
DataLoader worker, not one per image) and where each ends. It is decoded where it is needed: in the workers
on a CPU (libjpeg-turbo), or, handed over encoded, by moving it to a GPU (nvJPEG, one batched call).

Encoding is PIL's: the same libjpeg-turbo, and at a given quality the same bytes as torchvision.io.encode_jpeg,
in less time (0.34 against 0.38-0.89 ms a 256x256 image on a Zen 4 core); and only PIL fits the Huffman
tables to each image (optimize=True): 5% fewer bytes, the same pixels, for 0.4 ms more, spent once.
Decoding is torchvision.io.decode_jpeg: libjpeg-turbo on a CPU, and the one batched nvJPEG decoder at hand
(deprecated since torchvision 0.29 in favour of TorchCodec; `_decode` is the only place that calls it).
"""

from __future__ import annotations

import functools
import io
import re
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from alexnet.choices import QUALITY

# Quality 90, chroma subsampled 4:2:0 (libjpeg's default, as most of ImageNet's own JPEGs are). Measured on
# the demo set's 2,400 fixed training images (Huffman-optimised): bytes per image, and the mean absolute
# difference from the raw pixels in 0-255 levels (raw: 196,608 bytes and 0).
#     quality 85: 14,101 bytes (13.9x smaller), 3.62 levels
#     quality 90: 17,726 bytes (11.1x smaller), 3.10 levels     <- the default
#     quality 95: 25,262 bytes (7.8x smaller), 2.50 levels
# Going from 90 to 95 costs 43% more bytes for 0.6 of a level, far below the colour shift that the paper's PCA
# noise adds to every training image anyway (0.1 x 0.2175 x 255 = 5.5 levels along ImageNet's main colour
# axis); 90 is the knee. ImageNet's 1.33M images then take about 24 GB instead of 262 GB: the page cache of
# an ordinary server holds them, so the epochs after the first read memory, not disk. 4:4:4 was measured
# too: on the demo's saturated colours quality 75 4:4:4 beats 90 4:2:0 on both counts (15,067 bytes, 2.84
# levels), but on photograph-like images (bench data's) it only ties, and it decodes 10-40% slower, so
# 4:2:0 stays. (QUALITY lives in choices.py, which the command line reads without torch.)


@dataclass
class JpegBatch:
    """JPEGs of ``size`` x ``size`` RGB images, end to end in ``data``; ``ends[i]``: where image i's bytes end.

    Where a DataLoader batch holds images, a JpegBatch stands in for them: it has their ``shape``, drops
    unreadable samples by a boolean mask (SkippedFiles.keep), and ``.to(device)`` decodes it there.
    """
    data: torch.Tensor   # uint8 (total bytes,)
    ends: torch.Tensor   # int64 (N,)
    size: int

    @classmethod
    def join(cls, blobs: list, size: int) -> JpegBatch:
        """From JPEG files' bytes (bytes, or uint8 arrays or tensors)."""
        arrays = [np.frombuffer(b, dtype=np.uint8) if isinstance(b, (bytes, bytearray, memoryview))
                  else np.asarray(b, dtype=np.uint8) for b in blobs]
        data = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint8)
        ends = np.cumsum([len(a) for a in arrays], dtype=np.int64)
        return cls(torch.from_numpy(data), torch.from_numpy(ends), size)

    @classmethod
    def encode(cls, images: torch.Tensor, quality: int = QUALITY) -> JpegBatch:
        """uint8 (N, size, size, 3) -> their JPEGs at ``quality``."""
        return cls.join([encode(image, quality) for image in images], images.shape[1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.ends), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.ends)

    def blobs(self) -> list[torch.Tensor]:
        """Each image's bytes: views into ``data``."""
        starts = [0] + self.ends[:-1].tolist()
        return [self.data[a:b] for a, b in zip(starts, self.ends.tolist())]

    def __getitem__(self, keep: torch.Tensor) -> JpegBatch:
        """The images a boolean mask (or an index tensor) picks."""
        picked = torch.arange(len(self))[keep].tolist()
        blobs = self.blobs()
        return JpegBatch.join([blobs[i].numpy() for i in picked], self.size)

    def pin_memory(self) -> JpegBatch:
        # DataLoader(pin_memory=True) asks; nvJPEG copies the bytes to the GPU from pinned memory faster.
        return JpegBatch(self.data.pin_memory(), self.ends, self.size)

    def decode(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str]]:
        """The images, uint8 (N, size, size, 3) on ``device``, and for each "" or why it could not be
        decoded (its image is then zeros)."""
        return decode(self.blobs(), self.size, device)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """Decoded on ``device``: what moving the images it stands for there gives. Its bytes were checked
        against the store's checksums when read, so an image that will not decode now is a bug, not a bad file."""
        images, errors = self.decode(device)
        bad = [e for e in errors if e]
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(self)} JPEGs in the batch did not decode on {device}: {bad[0]}")
        return images


def encode(image: torch.Tensor, quality: int = QUALITY) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes (see the module's docstring for why PIL, and QUALITY)."""
    out = io.BytesIO()
    Image.fromarray(image.numpy()).save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


@functools.cache
def decodes_on(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on ``device`` itself: CUDA with torchvision's nvJPEG, tried once on a
    tiny image (a build without it, or a device it does not support, keeps decoding in the workers)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    tiny = torch.frombuffer(bytearray(encode(torch.zeros(8, 8, 3, dtype=torch.uint8))), dtype=torch.uint8)
    try:
        return _decode([tiny], device)[0].shape == (3, 8, 8)
    except Exception:   # no nvJPEG, no driver, an unsupported device: all mean no
        return False


def checksum(blob) -> int:
    """CRC-32 of an image's bytes: 5 us against a 250 us decode, and it catches what the decoder would not
    (libjpeg-turbo turns most flipped bits inside the compressed data into wrong pixels, not an error)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(blob)))


def decode(blobs: list[torch.Tensor], size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str]]:
    """JPEGs (CPU uint8 tensors) -> uint8 (N, size, size, 3) on ``device`` (libjpeg-turbo on a CPU, nvJPEG
    on CUDA: one batched call), and per image "" or the reason it could not be decoded (its image is zeros)."""
    device = torch.device(device)
    if not blobs:
        return torch.empty(0, size, size, 3, dtype=torch.uint8, device=device), []
    decoded: list = ["no JPEG bytes"] * len(blobs)
    todo = [i for i, b in enumerate(blobs) if len(b)]
    try:
        for i, d in zip(todo, _decode([blobs[i] for i in todo], device) if todo else []):
            decoded[i] = d
    except (RuntimeError, ValueError):
        # One bad image fails the whole call and names none: decode one at a time to tell which.
        for i in todo:
            decoded[i] = _decode_one(blobs[i], device)
    errors = [d if isinstance(d, str) else "" if d.shape == (3, size, size) else
              f"{d.shape[2]}x{d.shape[1]} pixels, expected {size}x{size}" for d in decoded]
    pixels = [None if e else d.permute(1, 2, 0) for d, e in zip(decoded, errors)]   # views of (H, W, C) pixels
    if device.type == "cpu":
        # numpy's copy: torch's splits each 196 KB image over its threads and, on a busy machine, waits
        # for them (8 ms an image, measured on 2 shared cores, against 5 us).
        zero = np.zeros((size, size, 3), dtype=np.uint8)
        return torch.from_numpy(np.stack([zero if p is None else p.numpy() for p in pixels])), errors
    zero = torch.zeros(size, size, 3, dtype=torch.uint8, device=device)
    return torch.stack([zero if p is None else p for p in pixels]), errors


def _decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # torchvision allocates the output on the caller's stream but has nvJPEG write it from a stream of its
        # own that does not wait for the caller's: a block freed while kernels queued there still read it (last
        # step's activations) can be overwritten under them (shown on torchvision 0.29, pytorch/vision PR 9606,
        # closed unmerged; TorchCodec has the fix). Waiting costs little: the loop waits for each step's loss.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # see the module's docstring
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)


def _decode_one(blob: torch.Tensor, device: torch.device) -> torch.Tensor | str:
    try:
        return _decode([blob], device)[0]
    except (RuntimeError, ValueError) as e:
        # "decode_jpeg, /path/decode_jpeg.cpp:171, Image is incomplete or truncated" -> the last part
        return "not a readable JPEG: " + re.sub(r"^\w+, \S+:\d+, ", "", str(e).strip().splitlines()[0])
