"""Local response normalisation (paper section 3.3), per tower.

    b[c] = a[c] / (k + alpha * sum_{c' = c-n/2 .. c+n/2} a[c']^2) ** beta

The sum runs over the n channels around c, clipped at the edges of c's tower: in 2012 each GPU held
half of the channels and never saw the other half, so with towers=2 the window stops at the middle.

Conventions differ in what "alpha" multiplies, which is why they are named here rather than left to
three loose floats:
  "paper"         the formula as printed: alpha=1e-4 multiplies the sum, k=2.
  "cuda-convnet"  the authors' code: alpha/n per term (2e-5), k=2.
  "caffe"         bvlc_alexnet: alpha/n per term, k=1.
torch.nn.LocalResponseNorm always divides alpha by n, so the paper's formula in its terms is
LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .precision import widen


@dataclass(frozen=True)
class LRNConvention:
    size: int
    alpha: float
    beta: float
    k: float
    alpha_over_size: bool  # True: each squared term is weighted alpha/size (cuda-convnet, Caffe, PyTorch)


LRN_CONVENTIONS = {
    "paper": LRNConvention(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False),
    "cuda-convnet": LRNConvention(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=True),
    "caffe": LRNConvention(size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_over_size=True),
}


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN whose window never crosses a tower boundary.

    ``alpha`` is the weight of each squared term in the sum (the paper's reading); build from a named
    convention with :meth:`from_convention` to get the others right.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 towers: int = 1) -> None:
        super().__init__()
        # Checked here: a float tower count would otherwise fail much later, inside the custom op's schema.
        for name, value in (("size", size), ("towers", towers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"LRN {name} must be a positive int, got {value!r}")
        for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"LRN {name} must be a real number, got {value!r}")
        self.size, self.towers = int(size), int(towers)
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)

    @classmethod
    def from_convention(cls, name: str, towers: int = 1) -> LocalResponseNorm:
        try:
            c = LRN_CONVENTIONS[name]
        except KeyError:
            raise ValueError(f"unknown LRN convention {name!r}; choose from {', '.join(LRN_CONVENTIONS)}") from None
        alpha = c.alpha / c.size if c.alpha_over_size else c.alpha
        return cls(size=c.size, alpha=alpha, beta=c.beta, k=c.k, towers=towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            # (N, C, L) and (N, C, D, H, W), as torch.nn.LocalResponseNorm takes them: the window runs over C
            # alone, so the pixels can be one axis of a 4-D view (a view for NCHW and channels_last alike).
            if x.dim() < 3:
                raise ValueError(f"LRN expects input of shape (N, C, ...) such as (N, C, H, W), got {tuple(x.shape)}")
            return self.forward(x.reshape(*x.shape[:2], math.prod(x.shape[2:]), 1)).reshape(x.shape)
        if x.is_cuda:
            return _outside_compiled_graphs(self, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.towers:
            raise ValueError(f"LRN over {self.towers} towers needs a channel count divisible by it, got {x.shape[1]}")
        if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
            # torch.func (grad, jacrev, vmap of per-sample gradients): the custom op has no batching rule and
            # the Function reads layouts a batched tensor hides, so the plain ops run, in float32 at least.
            # is_compiling first: the compiler has its own branch below and need not trace this query.
            return self.reference(widen(x)).to(x.dtype)
        if _fused_ok(x):
            return lrn_fused(x, self.size, self.alpha, self.beta, self.k, self.towers)
        if torch.compiler.is_compiling():
            # Traced, the Function below switches autocast off inside and the compiler keeps it off for
            # every later layer (conv2 then fails on bf16 input and float32 weights); the definition in
            # float32 has no such switch, and the compiler fuses it as well.
            return self.reference(widen(x)).to(x.dtype)
        band = window_matrix(x.shape[1], self.size, self.towers, x.device)
        return _BandedLRN.apply(x, band, self.alpha, self.beta, self.k)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function from plain autograd ops (a windowed average pool over channels): slower,
        kept as the readable definition the fast path is tested against."""
        n, c, *pixels = x.shape
        # (N, C, H, W) -> (N * towers, 1, C / towers, H W, 1), zero-padded so edges see fewer terms; any
        # number of pixel axes (N, C, L or N, C, D, H, W) flattens the same way.
        sq = x.square().reshape(n * self.towers, 1, c // self.towers, math.prod(pixels), 1)
        sq = F.pad(sq, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window_sum = F.avg_pool3d(sq, (self.size, 1, 1), stride=1).reshape(x.shape) * self.size
        return x / (self.k + self.alpha * window_sum).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, towers={self.towers}"


# torch._disable_dynamo, not torch.compiler.disable: the same wrapper, which imports torch._dynamo (a second
# of every command's start) at the first call instead of here; only CUDA tensors come here.
@torch._disable_dynamo
def _outside_compiled_graphs(lrn: LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    # On CUDA under bf16 autocast, torch.compile (PyTorch 2.11, an H200) traced the network with the LRN
    # in it, by any of its paths, with autocast off from the LRN on, and failed at conv2 ("Input type
    # BFloat16 and bias type float"); with the LRN left out of the graph it compiled and ran. So on CUDA
    # the compiled graphs end and resume around it, and it runs as in eager mode (the Triton kernel).
    return lrn._forward(x)


_BANDS: dict[tuple, torch.Tensor] = {}


def window_matrix(channels: int, size: int, towers: int, device: torch.device) -> torch.Tensor:
    """B (C x C) with B[j, c] = 1 when channel j is in channel c's window (same tower, |j - c| in range).

    Then the window sums of every pixel are one matrix product, sq @ B, over the channel axis.
    """
    key = (channels, size, towers, str(device))
    band = _BANDS.get(key)
    if band is None:
        c = torch.arange(channels)
        offset = c[:, None] - c[None, :]                                 # j - c
        same_tower = (c[:, None] * towers // channels) == (c[None, :] * towers // channels)
        inside = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
        band = (inside & same_tower).float().to(device)
        # Under torch.export (and so ONNX export) this runs on fake tensors; cached, one would poison
        # every later eager call.
        if not torch.compiler.is_exporting():
            _BANDS[key] = band
    return band


class _BandedLRN(torch.autograd.Function):
    """LRN with a hand-written backward, in at least float32 whatever autocast says.

    With s = window sums of a^2 and d = k + alpha s:
        b = a d^-beta
        dL/da[j] = g[j] d[j]^-beta - 2 alpha beta a[j] sum_{c: j in window(c)} g[c] a[c] d[c]^(-beta-1)
    The last sum is again a window sum, through B's transpose. Every step is a whole-tensor op or one
    matrix product; no copy into another memory layout, and no autograd graph of intermediates (a
    backward asked for a graph, create_graph=True, takes :func:`_differentiable_grad` instead).
    """

    @staticmethod
    def forward(ctx, x, band, alpha, beta, k):
        with _no_autocast(x.device):
            a = widen(x)
            band = band.to(a.dtype)
            d = _window(a * a, band).mul_(alpha).add_(k)
            scale = d.pow(-beta)
            ratio = scale / d                                           # d^(-beta-1), for backward
            y = a * scale
        ctx.save_for_backward(x, scale, ratio, band)
        ctx.alpha, ctx.beta, ctx.k = alpha, beta, k
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, scale, ratio, band = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_grad(x, grad, band, ctx.alpha, ctx.beta, ctx.k), None, None, None, None
        with _no_autocast(x.device):
            a, g = widen(x), widen(grad)
            t = _window((g * a).mul_(ratio), band.T)
            dx = (g * scale).addcmul_(a, t, value=-2 * ctx.alpha * ctx.beta)
        return dx.to(x.dtype), None, None, None, None


def _fused_ok(x: torch.Tensor) -> bool:
    """A fused kernel exists for x: the C kernel for float32/bf16 CPU tensors, the Triton one for CUDA
    tensors. Exporters get the banded path, whose plain ops ONNX and torch.export can carry."""
    if x.dim() != 4 or torch.compiler.is_exporting():
        return False
    if x.device.type == "cpu":
        return x.dtype in _CPU_DTYPES and _have_cpu_kernel()
    if x.device.type == "cuda":
        return x.dtype in _CUDA_DTYPES and _have_cuda_kernel()
    return False


# Constants to the compiler, which cannot trace a compiler's run or an import and need not.
@kernels.constant_to_the_compiler
def _have_cpu_kernel() -> bool:
    return kernels.lrn_cpu() is not None


@kernels.constant_to_the_compiler
def _have_cuda_kernel() -> bool:
    return kernels.lrn_cuda() is not None


_CPU_DTYPES = {torch.float32: 0, torch.bfloat16: 1}          # the C kernel's dtype codes
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dense(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


# The fused kernels as operators of their own (torch.library): torch.compile and its graphs see one node
# forward and one backward, with shapes from the fake implementations, instead of falling back to ops.
# Nothing but the input is saved: the backward recomputes the scales, which costs less than storing and
# re-reading two float32 tensors the size of conv1's output.

@torch.library.custom_op("alexnet::lrn", mutates_args=())
def lrn_fused(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, towers: int) -> torch.Tensor:
    """LRN of a 4-D CPU (float32/bf16) or CUDA tensor in one pass of a fused kernel."""
    x = _dense(x)
    if x.is_cuda:
        return kernels.lrn_cuda().lrn_forward(x, size, alpha, beta, k, towers)
    y = torch.empty_like(x)
    n, c, h, w = x.shape
    kernels.lrn_cpu().lrn_forward(x.data_ptr(), y.data_ptr(), _CPU_DTYPES[x.dtype], n, c, h * w,
                                  *kernels.pixel_strides(x), towers, size, alpha, beta, k, torch.get_num_threads())
    return y


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def lrn_fused_backward(x: torch.Tensor, grad: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                       towers: int) -> torch.Tensor:
    """dL/dx of :func:`lrn_fused`, recomputing the scales from x."""
    x = _dense(x)
    if x.is_cuda:
        return kernels.lrn_cuda().lrn_backward(x, _dense(grad), size, alpha, beta, k, towers)
    g = _dense(grad.to(x.dtype))
    dx = torch.empty_like(x)
    n, c, h, w = x.shape
    kernels.lrn_cpu().lrn_backward(x.data_ptr(), g.data_ptr(), dx.data_ptr(), _CPU_DTYPES[x.dtype],
                                   n, c, h * w, *kernels.pixel_strides(x), *kernels.pixel_strides(g), towers, size,
                                   alpha, beta, k, torch.get_num_threads())
    return dx


def _like_dense(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.preserve_format if x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format)


@lrn_fused.register_fake
def _(x, size, alpha, beta, k, towers):
    return _like_dense(x)


@lrn_fused_backward.register_fake
def _(x, grad, size, alpha, beta, k, towers):
    return _like_dense(x)


def _save_input(ctx, inputs, output):
    x, *ctx.args = inputs
    ctx.save_for_backward(x)


def _lrn_fused_grad(ctx, grad):
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():
        size, alpha, beta, k, towers = ctx.args
        band = window_matrix(x.shape[1], size, towers, x.device)
        return _differentiable_grad(x, grad, band, alpha, beta, k), None, None, None, None, None
    return lrn_fused_backward(x, grad, *ctx.args), None, None, None, None, None


lrn_fused.register_autograd(_lrn_fused_grad, setup_context=_save_input)


def _differentiable_grad(x, grad, band, alpha, beta, k):
    """_BandedLRN's backward formula in out-of-place ops from x itself, for a backward that runs with grad
    mode on (create_graph=True): autograd then differentiates it again, in x and in grad, for Hessian-vector
    products. The fast backwards read scales saved or recomputed without a graph, and so would give second
    derivatives that miss every term through the scales; ordinary training never takes this path."""
    with _no_autocast(x.device):
        a, g = widen(x), widen(grad)
        d = _window(a * a, band.to(a.dtype)) * alpha + k
        scale = d.pow(-beta)
        t = _window(g * a * scale / d, band.T.to(a.dtype))
        dx = g * scale - (2 * alpha * beta) * a * t
    return dx.to(x.dtype)


def _no_autocast(device: torch.device):
    # Inside a custom Function, autocast would still turn the matrix product into bf16.
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device, which summary() uses


def _window(v: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Window sums over channels as a matrix product, without copying v into another memory layout."""
    n, c, h, w = v.shape
    if v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous():
        rows = v.permute(0, 2, 3, 1).reshape(-1, c)                    # (N H W, C): a view
        sums = (rows @ band).reshape(n, h, w, c).permute(0, 3, 1, 2)
    else:
        sums = torch.matmul(band.T, v.reshape(n, c, h * w)).reshape(n, c, h, w)
    # An inf or NaN in v is multiplied by the band's zeros too, which makes NaN in every channel of its pixel.
    # Rare, so looked for in the sums (one read, where a second product would double the cost) and only then
    # summed term by term. Only on the CPU: on a GPU the read would make every call wait for the GPU (only
    # runs already diverging have such values). Traced graphs and tensors without values (meta: summary's
    # shapes), which cannot branch on values, keep the product too.
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or sums.device.type != "cpu" or \
            sums.sum().isfinite():
        return sums
    return _window_by_terms(v, band)


def _window_by_terms(v: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """_window's sums added one offset at a time, each term only where the band has it: an inf or NaN
    reaches the windows that hold it and no other."""
    c = v.shape[1]
    sums = torch.zeros_like(v)
    for d in range(1 - c, c):                                           # channel j = i + d in i's sum
        inside = band.diagonal(-d).bool()                               # band[i + d, i], i from max(0, -d)
        if inside.any():
            lo, hi = max(0, -d), min(c, c - d)
            sums[:, lo:hi] += torch.where(inside[:, None, None], v[:, lo + d:hi + d], 0)
    return sums
