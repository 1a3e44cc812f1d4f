"""The training crop on CUDA as one Triton kernel: the GPU twin of crop_cpu.c.

Each output value of (K, size, size, 3) float32 is made in one pass: the uint8 pixel of crop k's image at
its (mirrored) position, minus the mean (per pixel, read at the same position, or per channel), plus crop
k's colour shift (PCA noise), divided by the per-channel std. PyTorch's ops took six passes over the batch
in float32 for the same (a gather, a cast, the mean's gather, subtract, add, divide).

With TRITON_INTERPRET=1 set before this module is imported, the kernel runs on CPU tensors through Triton's
interpreter: that is how the test suite checks it on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _crop(img_ptr, mean_ptr, std_ptr, shift_ptr, src_ptr, top_ptr, left_ptr, flip_ptr, out_ptr, H, W, S,
          PER_PIXEL: tl.constexpr, HAS_STD: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    k = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)          # (row, column, channel) of crop k, flattened
    inside = i < S * S * 3
    ch = i % 3
    row = i // (3 * S)
    col = (i // 3) % S
    n = tl.load(src_ptr + k).to(tl.int64)
    top = tl.load(top_ptr + k)
    left = tl.load(left_ptr + k)
    mirrored = tl.load(flip_ptr + k) != 0
    col = tl.where(mirrored, S - 1 - col, col)
    at = ((top + row).to(tl.int64) * W + left + col) * 3 + ch    # within one image
    x = tl.load(img_ptr + n * H * W * 3 + at, mask=inside, other=0).to(tl.float32)
    if PER_PIXEL:
        x -= tl.load(mean_ptr + at, mask=inside, other=0.0)
    else:
        x -= tl.load(mean_ptr + ch, mask=inside, other=0.0)
    if HAS_SHIFT:
        x += tl.load(shift_ptr + k * 3 + ch, mask=inside, other=0.0)
    if HAS_STD:
        x /= tl.load(std_ptr + ch, mask=inside, other=1.0)
    tl.store(out_ptr + k.to(tl.int64) * S * S * 3 + i, x, mask=inside)


def crop(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None, shift: torch.Tensor | None,
         sources: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor, size: int,
         per_pixel: bool) -> torch.Tensor:
    """(K, size, size, 3) float32 crops of uint8 NHWC images (transforms.crop says what each value is)."""
    device = images.device
    images = images.contiguous()
    n, h, w, _ = images.shape

    def on_device(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if t is None else t.to(device, dtype).contiguous()

    mean = on_device(mean, torch.float32)
    std, shift = on_device(std, torch.float32), on_device(shift, torch.float32)
    sources, tops, lefts = (on_device(t, torch.int32) for t in (sources, tops, lefts))
    flips = on_device(flips, torch.uint8)
    k = len(tops)
    out = torch.empty(k, size, size, 3, dtype=torch.float32, device=device)
    if k:
        grid = (triton.cdiv(size * size * 3, BLOCK), k)
        _crop[grid](images, mean, mean if std is None else std, mean if shift is None else shift, sources, tops,
                    lefts, flips, out, h, w, size, PER_PIXEL=per_pixel, HAS_STD=std is not None,
                    HAS_SHIFT=shift is not None, BLOCK=BLOCK)
    return out
