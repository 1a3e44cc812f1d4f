"""One training step as `alexnet train` takes it; the benchmarks time this very step, not a copy.

uint8 images (N, 256, 256, 3) -> the paper's augmentation on the training device (crops, mirrors, PCA
noise, normalisation) -> forward and backward under autocast (in parts, with gradient accumulation) -> the
update (SGD, or LARS for large batches). It comes in two halves
so that the trainer can agree with the other processes (stop? a non-finite loss?) after the backward
pass and before the weights change; calling the step runs both.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from alexnet import distributed
from alexnet.config import TrainConfig
from alexnet.data.transforms import Draws, Preprocessing, train_views
from alexnet.lars import lars
from alexnet.precision import autocast, input_dtype, widen


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, device: torch.device,
        bias_decay: bool = True, scaled: bool = False) -> torch.optim.SGD:
    """Momentum SGD over ``model``; without ``bias_decay``, in two groups: weights decayed, then biases
    (every tensor of under 2 dimensions) not. ``scaled``: under fp16's loss scaler, which the fused step
    gets wrong: a first step the scaler skips (an overflow) leaves its momentum buffers as torch.empty_like
    made them, memory that the next step adds to the weights (1e14 and more, or NaN)."""
    params = list(model.parameters())
    groups = [{"params": params}] if bias_decay else \
        [{"params": [p for p in params if p.dim() > 1]},
         {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    # Fused: one pass over weights, gradients and momentum instead of several (the update of 61M weights
    # took 62 ms of a 0.8 s step on a 2-core CPU, fused 27 ms). Same rule as the default implementation.
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=device.type in ("cpu", "cuda") and not scaled)


def optimizer_for(model: nn.Module, config: TrainConfig, device: torch.device,
                  scaled: bool = False) -> torch.optim.Optimizer:
    """The run's optimizer over ``model`` as its TrainConfig says (LARS, or SGD; ``scaled``: see sgd);
    checkpoint.py builds it over the meta network too, to know which parameter each entry of a saved
    state_dict stands for."""
    if config.optimizer == "lars":
        return lars(model, config.lr, config.momentum, config.weight_decay, config.lars_eta)
    return sgd(model, config.lr, config.momentum, config.weight_decay, device, config.bias_decay, scaled)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, paper_momentum: float | None = None) -> None:
    """The learning rate of the next step. With ``paper_momentum`` m, SGD takes the paper's update rule
    (section 5), v = m v - lr (wd w + g), w = w + v, instead of torch's, b = m b + g + wd w, w = w - lr b.

    The two agree while lr is constant; the paper's velocity is v = -lr_prev b, so scaling this step's
    momentum by lr_prev / lr gives exactly the paper's step, with no extra pass over the buffers. (At lr 0,
    which no schedule here reaches, the paper's weights would still move by m v; torch's cannot.)"""
    for group in optimizer.param_groups:
        if paper_momentum is not None:
            group["momentum"] = paper_momentum * group["lr"] / lr if lr > 0 else paper_momentum
        group["lr"] = lr


class TrainStep:
    """``net`` (a model, or its DDP / towers wrapper) learning from batches of uint8 images.

    The loss is summed over the batch's valid samples and divided by ``batch_per_rank``: a batch that
    lost unreadable samples still weighs each remaining one as a full batch would, and an empty one
    still takes part in DDP's gradient exchange, contributing nothing. Where the ranks' batches differ in
    size (a global batch that the world does not divide), ``batch_per_rank`` is the global batch over the
    world (a fraction): DDP's mean of the ranks' gradients is then the global batch's mean, as ever.
    ``pair``: under --towers, the tower pair (parallel.TowerPlan.pair), whose loss scalers must agree.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, prep: Preprocessing, device: torch.device,
                 dtype: torch.dtype | None, batch_per_rank: int | float, label_smoothing: float = 0.0,
                 accumulate: int = 1, paper_momentum: float | None = None,
                 pair: distributed.Dist | None = None) -> None:
        self.net, self.optimizer, self.prep, self.device, self.dtype = net, optimizer, prep, device, dtype
        self.paper_momentum = paper_momentum   # SGD's momentum under the paper's update rule (set_lr); else None
        self.input_dtype = input_dtype(net)   # float64 for an fp64 run; the weights keep their dtype
        self.batch_per_rank, self.label_smoothing, self.accumulate = batch_per_rank, label_smoothing, accumulate
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.pair = pair

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws, lr: float) -> torch.Tensor:
        """Gradients of this batch at learning rate ``lr``; returns the loss (a detached scalar).

        With ``accumulate`` K the batch goes through in K parts, one after another, their gradients added
        up: the same gradients with a K-th of the activations in memory. Under DDP only the last part's
        backward all-reduces (no_sync), so the exchange is the same as for one part.
        """
        self._rates = [group["lr"] for group in self.optimizer.param_groups]   # the last step taken's
        set_lr(self.optimizer, lr, self.paper_momentum)
        self.optimizer.zero_grad(set_to_none=True)
        parts = [(images, labels, draws)] if self.accumulate == 1 else \
            [(images[i], labels[i], draws.select(i)) for i in torch.arange(len(labels)).tensor_split(self.accumulate)]
        total = torch.zeros((), device=self.device, dtype=torch.float64 if self.input_dtype == torch.float64 else None)
        for n, part in enumerate(parts, 1):
            with contextlib.nullcontext() if n == len(parts) or not hasattr(self.net, "no_sync") else self.net.no_sync():
                loss = self._loss(*part)
                self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def _loss(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws) -> torch.Tensor:
        # Summed over the samples and divided by the full batch: the parts' losses add up to the batch's.
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        x = train_views(images, self.prep.size, self.prep.norm, self.prep.pca, draws=draws)
        with autocast(self.device, self.dtype):
            logits = self.net(x.to(self.input_dtype))
            return nn.functional.cross_entropy(widen(logits), labels, reduction="sum",
                                               label_smoothing=self.label_smoothing) / self.batch_per_rank

    def update(self) -> None:
        watch = self.scaler.is_enabled() and self.paper_momentum is not None
        scale = self.scaler.get_scale() if watch else 0.0
        if self.pair is not None and self.scaler.is_enabled():
            self._pair_overflow()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if watch and self.scaler.get_scale() < scale:
            # The loss scaler skipped the step (gradients overflowed, and it lowered the scale): the velocity is
            # still the last step taken's, so the next step's momentum is scaled from that step's rate (set_lr).
            for group, rate in zip(self.optimizer.param_groups, self._rates):
                group["lr"] = rate

    def _pair_overflow(self) -> None:
        """Make the loss scaler's overflow check the tower pair's. Each tower's scaler sees only its half of the
        gradients: alone, one tower skipped a step and halved its scale while the other stepped, and from then on
        the exchanges' backward added up activation gradients of two scales. Unscaling now records the check
        before the step; its max over the pair (as torch's ShardedGradScaler does for FSDP's shards) makes both
        skip or both step, and both scales change alike. A tower's replicas hold the same gradients (DDP)."""
        self.scaler.unscale_(self.optimizer)
        # The check's flags, which step() and update() read after (no public way to them: ShardedGradScaler's).
        for found in self.scaler._found_inf_per_device(self.optimizer).values():
            found.copy_(distributed.all_max(self.pair, found))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, draws: Draws, lr: float) -> torch.Tensor:
        loss = self.forward_backward(images, labels, draws, lr)
        self.update()
        return loss
