"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017), the optimiser of the large-batch
AlexNet records (batch 8K-64K).

For each weight tensor w with gradient g, at learning rate lr, momentum m, weight decay wd:

    trust = eta * ||w|| / (||g|| + wd * ||w||)      (1 where ||w|| or ||g|| is zero)
    v     = m * v + lr * trust * (g + wd * w)
    w     = w - v

so every layer moves by about eta * lr of its own norm, whatever the scale of its gradient. Biases (and
any other tensor of fewer than 2 dimensions: normalisation parameters) are left out, as in the paper's
and most later implementations: plain momentum SGD without weight decay, v = m * v + lr * g. The
momentum buffer holds the step itself (lr inside), as in the paper's algorithm; torch.optim.SGD keeps
gradients there instead, so a changing lr acts at once here and only through new gradients there.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def adapted(p: torch.Tensor) -> bool:
    """Whether LARS scales this tensor: weights of convolutions and linear layers, not biases."""
    return p.dim() > 1


class LARS(torch.optim.Optimizer):
    """``LARS(params, lr, momentum, weight_decay, eta)``; a parameter group with ``adapt=False`` gets
    plain momentum SGD without weight decay. Use ``lars(model, ...)`` for AlexNet's groups."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                 eta: float = 1e-3, adapt: bool = True) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0 and eta > 0; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            if group["adapt"]:
                # Norms in float32 at least: they decide every layer's step size.
                w_norms = torch._foreach_norm([_wide(p) for p in params])
                g_norms = torch._foreach_norm([_wide(g) for g in grads])
                updates = []
                for p, g, wn, gn in zip(params, grads, w_norms, g_norms):
                    trust = torch.where((wn > 0) & (gn > 0), group["eta"] * wn / (gn + wd * wn), 1.0)
                    updates.append(g.add(p, alpha=wd).mul_((lr * trust).to(g.dtype)))
            else:
                updates = [g.mul(lr) for g in grads]
            for p, u in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = u
                else:
                    state["momentum_buffer"].mul_(m).add_(u)
                p.sub_(state["momentum_buffer"])
        return loss


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def lars(model: nn.Module, lr: float, momentum: float, weight_decay: float, eta: float) -> LARS:
    """LARS over ``model``: weights adapted and decayed, biases plain momentum SGD (one group each)."""
    params = list(model.parameters())
    return LARS([{"params": [p for p in params if adapted(p)]},
                 {"params": [p for p in params if not adapted(p)], "adapt": False, "weight_decay": 0.0}],
                lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
