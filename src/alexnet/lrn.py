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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
        if size < 1 or towers < 1:
            raise ValueError(f"LRN size and towers must be positive, got size={size}, towers={towers}")
        self.size, self.alpha, self.beta, self.k, self.towers = size, alpha, beta, k, towers

    @classmethod
    def from_convention(cls, name: str, towers: int = 1) -> LocalResponseNorm:
        try:
            c = LRN_CONVENTIONS[name]
        except KeyError:
            raise ValueError(f"unknown LRN convention {name!r}; choose from {', '.join(LRN_CONVENTIONS)}") from None
        alpha = c.alpha / c.size if c.alpha_over_size else c.alpha
        return cls(size=c.size, alpha=alpha, beta=c.beta, k=c.k, towers=towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c % self.towers:
            raise ValueError(f"LRN over {self.towers} towers needs a channel count divisible by it, got {c}")
        # Window sums as a (size, 1, 1) average pool over the channel axis of each tower:
        # (N, C, H, W) -> (N * towers, 1, C / towers, H, W), zero-padded so edges see fewer terms.
        sq = x.square().reshape(n * self.towers, 1, c // self.towers, h, w)
        sq = F.pad(sq, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window_sum = F.avg_pool3d(sq, (self.size, 1, 1), stride=1).reshape(n, c, h, w) * self.size
        return x / (self.k + self.alpha * window_sum).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, towers={self.towers}"
