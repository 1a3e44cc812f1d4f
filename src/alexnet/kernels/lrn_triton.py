"""Local response normalisation on CUDA as Triton kernels, one pass forward and two backward
(the math is in lrn.py; this is the GPU twin of lrn_cpu.c).

A tensor is seen as (N, C, P) with element strides, as in the C kernel, so one kernel serves NCHW and
channels_last; each program takes a tile of channels x pixels of one image. The window sums read the
neighbouring channels again instead of holding a whole tower in registers: those reads hit the cache,
and the tile stays small whatever the channel count. Arithmetic is float32 whatever the dtype in memory
(float32, bfloat16, float16). Nothing but the input is kept for the backward pass. It takes two passes:
the first writes each channel's term g x d^(-beta-1) (float32, the size of x), the second sums them over the
window; one pass recomputing the neighbours' scales read x 36 times an element and took 7 times the forward's
time (2.9 ms of a 15 ms paper step at batch 256 on an H100).

With TRITON_INTERPRET=1 set before this module is imported, the same kernels run on CPU tensors through
Triton's interpreter: that is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alexnet.kernels import pixel_strides


@triton.jit
def _window_sum(x_ptr, base, c, first, last, inside, sc, LO: tl.constexpr, HI: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # Sum of squares over channels c-LO .. c+HI of c's tower, in float32.
    s = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
    for j in tl.static_range(LO + HI + 1):
        cc = c + (j - LO)
        v = tl.load(x_ptr + base + cc.to(tl.int64) * sc, mask=inside & (cc >= first) & (cc < last),
                    other=0.0).to(tl.float32)
        s += v * v
    return s


@triton.jit
def _tile(C, P, ct, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    first = (c // ct) * ct                                       # c's tower: [first, last)
    return c, p, first, first + ct, (c < C) & (p < P)


@triton.jit
def _forward(x_ptr, y_ptr, C, P, sn, sc, sp, ct, alpha, beta, k,
             LO: tl.constexpr, HI: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    c, p, first, last, inside = _tile(C, P, ct, BLOCK_C, BLOCK_P)
    base = tl.program_id(2).to(tl.int64) * sn + p.to(tl.int64) * sp
    d = k + alpha * _window_sum(x_ptr, base, c, first, last, inside, sc, LO, HI, BLOCK_C, BLOCK_P)
    at = base + c.to(tl.int64) * sc
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    y = x * tl.exp2(-beta * tl.log2(d))
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _backward_terms(x_ptr, g_ptr, r_ptr, C, P, sn, sc, sp, gn, gc, gp, ct, alpha, beta, k,
                    LO: tl.constexpr, HI: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # r[c] = g[c] x[c] d[c]^(-beta-1), in float32 and in x's layout: each channel's scale computed once.
    c, p, first, last, inside = _tile(C, P, ct, BLOCK_C, BLOCK_P)
    n = tl.program_id(2).to(tl.int64)
    base = n * sn + p.to(tl.int64) * sp
    at = base + c.to(tl.int64) * sc
    d = k + alpha * _window_sum(x_ptr, base, c, first, last, inside, sc, LO, HI, BLOCK_C, BLOCK_P)
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + n * gn + p.to(tl.int64) * gp + c.to(tl.int64) * gc, mask=inside, other=0.0).to(tl.float32)
    tl.store(r_ptr + at, g * x * tl.exp2((-beta - 1.0) * tl.log2(d)), mask=inside)


@triton.jit
def _backward(x_ptr, g_ptr, r_ptr, dx_ptr, C, P, sn, sc, sp, gn, gc, gp, ct, alpha, beta, k,
              LO: tl.constexpr, HI: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # dx[j] = g[j] d[j]^-beta - 2 alpha beta x[j] sum_{c: j in window(c)} r[c],
    # where j in window(c) means c in j-HI .. j+LO, within j's tower.
    c, p, first, last, inside = _tile(C, P, ct, BLOCK_C, BLOCK_P)
    n = tl.program_id(2).to(tl.int64)
    base = n * sn + p.to(tl.int64) * sp
    at = base + c.to(tl.int64) * sc
    t = tl.full([BLOCK_C, BLOCK_P], 0.0, tl.float32)
    for j in tl.static_range(LO + HI + 1):
        cc = c + (j - HI)
        t += tl.load(r_ptr + base + cc.to(tl.int64) * sc, mask=inside & (cc >= first) & (cc < last), other=0.0)
    d = k + alpha * _window_sum(x_ptr, base, c, first, last, inside, sc, LO, HI, BLOCK_C, BLOCK_P)
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + n * gn + p.to(tl.int64) * gp + c.to(tl.int64) * gc, mask=inside, other=0.0).to(tl.float32)
    dx = g * tl.exp2(-beta * tl.log2(d)) - 2.0 * alpha * beta * x * t
    tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _blocks(sc: int, channels_per_tower: int) -> tuple[int, int]:
    # Consecutive threads on consecutive addresses: a wide run of pixels in NCHW, a wide run of channels
    # in channels_last (as wide as a tower, up to 64).
    if sc == 1:
        bc = min(64, triton.next_power_of_2(channels_per_tower))
        return bc, max(4096 // bc // 4, 4)
    return 4, 256


def _launch(kernel, x: torch.Tensor, tensors: list, strides: tuple, size: int, alpha: float, beta: float, k: float,
            towers: int) -> None:
    n, c, h, w = x.shape
    bc, bp = _blocks(x.stride(1) if w * h > 1 else 1, c // towers)
    grid = (triton.cdiv(h * w, bp), triton.cdiv(c, bc), n)
    kernel[grid](*tensors, c, h * w, *strides, c // towers, float(alpha), float(beta), float(k),
                 LO=size // 2, HI=(size - 1) // 2, BLOCK_C=bc, BLOCK_P=bp, num_warps=4)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, towers: int) -> torch.Tensor:
    """y for a dense 4-D x (NCHW or channels_last); y has x's layout."""
    y = torch.empty_like(x)
    _launch(_forward, x, [x, y], pixel_strides(x), size, alpha, beta, k, towers)
    return y


def lrn_backward(x: torch.Tensor, grad: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                 towers: int) -> torch.Tensor:
    """dL/dx for dense x and grad (each in either layout); the result has x's layout."""
    # The terms r take x's strides (empty_like keeps a dense tensor's layout), so one offset serves both.
    r = torch.empty_like(x, dtype=torch.float32)
    dx = torch.empty_like(x)
    strides = pixel_strides(x) + pixel_strides(grad)
    _launch(_backward_terms, x, [x, grad, r], strides, size, alpha, beta, k, towers)
    _launch(_backward, x, [x, grad, r, dx], strides, size, alpha, beta, k, towers)
    return dx
