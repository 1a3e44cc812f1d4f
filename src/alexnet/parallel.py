"""The paper's two-GPU training: each tower on its own device, over torch.distributed.

In 2012 each GTX 580 held half the kernels of every layer (paper section 3.2, docs/paper-numbers.md section 1):

    tower t (rank t of a pair)     its share of AlexNet(variant="paper")       input
    conv1  3 -> 48,  11/4          kernels 48t .. 48t+47 of 96                  the image (both towers)
    conv2  48 -> 128, 5/1/2        group t of conv2 (groups=2)                  own conv1 (after LRN, pool)
    conv3  256 -> 192, 3/1/1       kernels 192t .. of 384                       BOTH towers' pool2   <- exchange
    conv4  192 -> 192              group t of conv4                             own conv3
    conv5  192 -> 128              group t of conv5                             own conv4
    fc6    9216 -> 2048            neurons 2048t .. of 4096                     BOTH towers' pool5   <- exchange
    fc7    4096 -> 2048            neurons 2048t .. of 4096                     BOTH towers' fc6     <- exchange
    fc8    4096 -> C/2             classes ceil(C/2) t .. (C=1000: 500 each)    BOTH towers' fc7     <- exchange

LRN normalises within a tower (its window never saw the other GPU's channels), so it needs nothing
from the other tower; each tower drops out its own fc6 and fc7 neurons with its own random numbers.
Both towers must be given the same images (train.py shards the data by replica, not by process, and
augments each sample as a function of its index, so they are).
Every tower's parameters are rows of the single-device network's (dim 0 of each weight and bias), so
`state_dict()` gathers the halves into the ordinary AlexNet(variant="paper") state_dict, and
`load_state_dict()` takes one and keeps its rows: one checkpoint format, the split is a view of it.

The exchanges are all-gathers over the pair's process group inside autograd Functions: forward
gathers the towers' activations, backward reduce-scatters (sums) the gradients that both towers'
layers sent back to each activation. The logits are gathered last, so both ranks hold all of them
and compute the same loss; their backward just keeps the tower's own columns.

    torchrun --standalone --nproc_per_node=2 -m alexnet train --towers 2 ...    # one tower per process
    torchrun --standalone --nproc_per_node=4 -m alexnet train --towers 2 ...    # 2 towers x 2 replicas

With P processes, ranks 2k and 2k+1 are the towers of replica k (consecutive ranks: the same machine
under torchrun); replicas split the batch and all-reduce their tower's gradients (DDP over the group of
that tower's ranks).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td
import torch.nn.functional as F
from torch import nn

from alexnet.distributed import Dist
from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.inputs import INPUT_SIZE, check_images, check_pool5

# PyTorch 2.14 renamed all_gather_into_tensor and reduce_scatter_tensor (the old names warn).
_all_gather = getattr(td, "all_gather_single", None) or td.all_gather_into_tensor
_reduce_scatter = getattr(td, "reduce_scatter_single", None) or td.reduce_scatter_tensor

TOWERS = 2
# Modules (index in features / classifier, as in AlexNet(variant="paper")) whose input is both towers'.
GATHER_BEFORE_FEATURES = (8,)          # conv3
GATHER_BEFORE_CLASSIFIER = (0, 3, 6)   # fc6, fc7, fc8


# ---- traffic: what the collectives below moved, counted as they run ----

@dataclass
class Traffic:
    """Bytes this process sent to the other tower (it receives as many), in the forward and backward
    passes; and the seconds spent in the exchanges (moving bytes, and waiting for the other tower)."""
    forward: int = 0
    backward: int = 0
    exchanges: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.forward = self.backward = self.exchanges = 0
        self.seconds = 0.0

    @property
    def total(self) -> int:
        return self.forward + self.backward


TRAFFIC = Traffic()


class _Exchange(torch.autograd.Function):
    """(rows, c) on each rank of ``group`` -> (rows, world * c), the ranks' columns side by side.

    Backward: every rank's gradient holds a part for each rank's columns; a reduce-scatter sums them,
    so each rank gets the gradient of its own activations from both towers' layers. With
    ``replicated`` the layers after the exchange ran identically on every rank (the loss on the
    logits), the gradients are the same everywhere, and each rank simply keeps its own columns.
    """

    @staticmethod
    def forward(ctx, x, group, replicated):
        world, rank = td.get_world_size(group), td.get_rank(group)
        ctx.group, ctx.replicated, ctx.world, ctx.rank = group, replicated, world, rank
        x = x.contiguous()
        rows, c = x.shape
        out = x.new_empty((world * rows, c))
        t = time.perf_counter()
        _all_gather(out, x, group=group)
        TRAFFIC.seconds += time.perf_counter() - t
        TRAFFIC.forward += (world - 1) * x.nbytes
        TRAFFIC.exchanges += 1
        return out.view(world, rows, c).transpose(0, 1).reshape(rows, world * c)

    @staticmethod
    def backward(ctx, grad):
        world, rank = ctx.world, ctx.rank
        rows, c = grad.shape[0], grad.shape[1] // world
        if ctx.replicated:
            return grad[:, rank * c:(rank + 1) * c], None, None
        parts = grad.reshape(rows, world, c).transpose(0, 1).contiguous()     # (world, rows, c)
        out = grad.new_empty((rows, c))
        t = time.perf_counter()
        _reduce_scatter(out, parts.view(world * rows, c), group=ctx.group)
        TRAFFIC.seconds += time.perf_counter() - t
        TRAFFIC.backward += (world - 1) * out.nbytes
        return out, None, None


def gather_features(x: torch.Tensor, group, replicated: bool = False) -> torch.Tensor:
    """(N, F) per tower -> (N, towers * F): tower 0's features, then tower 1's."""
    return _Exchange.apply(x, group, replicated)


def gather_channels(x: torch.Tensor, group) -> torch.Tensor:
    """(N, C, H, W) per tower -> (N, towers * C, H, W), channels_last (a view of the exchanged rows)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)       # no copy when x is channels_last
    return _Exchange.apply(rows, group, False).view(n, h, w, -1).permute(0, 3, 1, 2)


def exchange_bytes(batch: int, num_classes: int = 1000, element_size: int = 4) -> dict[str, int]:
    """Bytes one tower sends the other in a training step on ``batch`` images (it receives as many).

    Forward: its pool2 (128x13x13) into conv3, pool5 (128x6x6) into fc6, fc6 (2048) into fc7, fc7
    (2048) into fc8, and its share of the logits. Backward: the gradients of the same activations
    except the logits. ``element_size``: 4 for float32, 2 under bf16/fp16 autocast.
    """
    share = -(-num_classes // TOWERS)
    into = {"conv3": 128 * 13 * 13, "fc6": 128 * 6 * 6, "fc7": 2048, "fc8": 2048}
    out = {f"forward_{k}": batch * v * element_size for k, v in into.items()}
    out["forward_logits"] = batch * share * element_size
    out |= {f"backward_{k}": batch * v * element_size for k, v in into.items()}
    out["forward"] = sum(v for k, v in out.items() if k.startswith("forward_"))
    out["backward"] = sum(v for k, v in out.items() if k.startswith("backward_"))
    out["total"] = out["forward"] + out["backward"]
    return out


# ---- the tower model ----

class TowerAlexNet(nn.Module):
    """Tower ``tower`` of AlexNet(variant="paper"): its half of every layer, on this process's device.

    The module tree and state_dict keys are the single-device network's (features.0 ... classifier.6),
    with every tensor cut to this tower's rows; ``state_dict()`` and ``load_state_dict()`` speak the
    single-device network's full tensors (collectives over ``group``: both towers must call them).
    Build one from a single-device network with :func:`split`.
    """

    variant = "paper"
    input_size = INPUT_SIZE["paper"]

    def __init__(self, tower: int, group, num_classes: int = 1000, dropout: float = 0.5, *, lrn: str = "paper",
                 init: str = "paper") -> None:
        super().__init__()
        if td.get_world_size(group) != TOWERS:
            raise ValueError(f"the paper network has {TOWERS} towers; the process group has {td.get_world_size(group)}")
        self.tower, self.group, self.num_classes, self.lrn, self.init = tower, group, num_classes, lrn, init
        # Rows of each full tensor this tower holds; tensor_split puts the odd class (if any) in tower 0.
        self.share = -(-num_classes // TOWERS)
        self._receiver: int | None = None    # gathered_on's process; None: every tower gets the full tensors
        classes = len(torch.tensor_split(torch.arange(num_classes), TOWERS)[tower])

        def norm() -> LocalResponseNorm:
            return LocalResponseNorm.from_convention(lrn)  # within the tower: no boundary to respect

        self.features = nn.Sequential(
            nn.Conv2d(3, 48, kernel_size=11, stride=4),                      # conv1  -> 48x55x55
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),                           # pool1  -> 48x27x27
            nn.Conv2d(48, 128, kernel_size=5, padding=2),                    # conv2  -> 128x27x27 (own conv1)
            nn.ReLU(inplace=True),
            norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),                           # pool2  -> 128x13x13
            nn.Conv2d(256, 192, kernel_size=3, padding=1),                   # conv3  <- both pool2s: 256x13x13
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),                   # conv4  (own conv3)
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 128, kernel_size=3, padding=1),                   # conv5  (own conv4)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                           # pool5  -> 128x6x6
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 2048),                                    # fc6    <- both pool5s: 9216
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 2048),                                           # fc7    <- both fc6s
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, classes),                                        # fc8    <- both fc7s
        )
        self._full_rows = {k: (num_classes if k.startswith("classifier.6.") else TOWERS * v.shape[0])
                           for k, v in super().state_dict().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 227, 227), the same on both towers -> all logits (N, num_classes) on both."""
        check_images(x, "paper")
        for i, layer in enumerate(self.features):
            if i in GATHER_BEFORE_FEATURES:
                x = gather_channels(x, self.group)
            x = layer(x)
        check_pool5(x)
        # Flattening each tower's (128, 6, 6) and putting tower 0's first is flattening the gathered
        # (256, 6, 6): fc6's input order is the single-device network's.
        x = torch.flatten(x, 1)
        for i, layer in enumerate(self.classifier):
            if i in GATHER_BEFORE_CLASSIFIER:
                x = gather_features(x, self.group)
            x = layer(x)
        x = F.pad(x, (0, self.share - x.shape[1]))                            # equal shares for the gather
        return gather_features(x, self.group, replicated=True)[:, :self.num_classes]

    # -- one checkpoint format: the single-device network's tensors --

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The single-device network's state_dict (both towers must call this: it gathers the halves;
        on one process alone within :meth:`gathered_on`)."""
        out = OrderedDict() if destination is None else destination
        for key, value in super().state_dict().items():
            out[prefix + key] = self._gather_rows(value.detach(), self._full_rows[key])
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a single-device network's state_dict, keeping this tower's rows of each tensor."""
        return super().load_state_dict({k: self._own_rows(v, k) for k, v in state_dict.items()},
                                       strict=strict, assign=assign)

    def _own_rows(self, value: Any, key: str) -> Any:
        full = self._full_rows.get(key)
        if not isinstance(value, torch.Tensor) or full is None or value.dim() == 0 or value.shape[0] != full:
            return value  # not one of ours, or the wrong size: load_state_dict will say so
        return torch.tensor_split(value, TOWERS)[self.tower]

    @contextmanager
    def gathered_on(self, rank: int) -> Iterator[None]:
        """Within, ``state_dict()`` (and a sharded optimizer's) gathers the full tensors on process ``rank``
        (a global rank) alone: its tower partner sends its rows and keeps no copy, and the towers of other
        replicas exchange nothing. Elsewhere the dict holds this tower's own rows: no network's state.
        For a checkpoint that one process writes: every other process is spared a full copy of the weights
        and momentum (1 GB per process for a float64 paper run)."""
        self._receiver = rank
        try:
            yield
        finally:
            self._receiver = None

    def _gather_rows(self, value: torch.Tensor, full_rows: int) -> torch.Tensor:
        receiver = self._receiver
        if receiver is not None and receiver not in td.get_process_group_ranks(self.group):
            return value
        rows = -(-full_rows // TOWERS)                                        # tower 0's, the larger
        padded = F.pad(value, (0, 0) * (value.dim() - 1) + (0, rows - value.shape[0])).contiguous()
        if receiver is None:
            out = value.new_empty((TOWERS * rows, *value.shape[1:]))
            _all_gather(out, padded, group=self.group)
            return out[:full_rows]
        if td.get_rank() != receiver:
            td.gather(padded, None, dst=receiver, group=self.group)
            return value
        out = value.new_empty((TOWERS * rows, *value.shape[1:]))
        td.gather(padded, list(out.split(rows)), dst=receiver, group=self.group)
        return out[:full_rows]

    def shard_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Make ``optimizer``'s state_dict the single-device network's too: its per-parameter tensors
        (SGD's momentum) are gathered on save and cut to this tower's rows on load."""
        names = [n for n, _ in self.named_parameters()]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ours = {id(p): n for n, p in self.named_parameters()}
        if len(params) != len(names) or any(id(p) not in ours for p in params):
            raise ValueError("the optimizer must hold exactly this tower's parameters")
        key_of = [ours[id(p)] for p in params]  # state_dict numbers parameters in param_groups order

        def full(_optimizer, state: dict) -> dict:
            state["state"] = {i: {k: self._gather_rows(v, self._full_rows[key_of[i]])
                                  if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in s.items()}
                              for i, s in sorted(state["state"].items())}
            return state

        def own(_optimizer, state: dict) -> dict:
            state = dict(state)
            # Copies: a view would keep the whole loaded tensor alive.
            state["state"] = {i: {k: _copy(self._own_rows(v, key_of[int(i)])) for k, v in s.items()}
                              for i, s in state["state"].items()}
            return state

        optimizer.register_state_dict_post_hook(full)
        optimizer.register_load_state_dict_pre_hook(own)
        return optimizer

    def extra_repr(self) -> str:
        return f"tower={self.tower} of {TOWERS}, num_classes={self.num_classes}, lrn={self.lrn!r}"


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def split(full: nn.Module, tower: int, group) -> TowerAlexNet:
    """Tower ``tower`` of the single-device paper network ``full`` (its rows of every tensor, copied)."""
    if getattr(full, "variant", None) != "paper":
        raise ValueError("only the paper network has towers to split")
    with torch.device("meta"):  # no initialisation of weights that are overwritten at once
        model = TowerAlexNet(tower, group, full.num_classes, full.classifier[2].p, lrn=full.lrn, init=full.init)
    like = full.classifier[0].weight
    model = model.to_empty(device=like.device).to(like.dtype)
    model.load_state_dict({k: v.detach() for k, v in full.state_dict().items()})
    return model


# ---- process groups: tower pairs, and replica sets for towers x data parallel ----

@dataclass
class TowerPlan:
    """Where this process sits: tower ``tower`` of replica ``replica`` (of ``replicas``)."""
    tower: int
    replica: int
    replicas: int
    tower_group: Any     # this replica's two processes, towers 0 and 1
    replica_group: Any   # this tower's process in every replica (None with one replica)
    data: Dist           # the data-parallel view: shard by replica, sum metrics over replicas

    @property
    def pair(self) -> Dist:
        """This replica's two towers, for distributed's helpers: what they must decide together (each forward
        pass is a collective over them)."""
        return Dist(rank=self.tower, local_rank=self.data.local_rank, world=TOWERS, device=self.data.device,
                    group=self.tower_group)

    def split(self, full: nn.Module) -> TowerAlexNet:
        return split(full, self.tower, self.tower_group)

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` with its gradients averaged over the replicas of its tower (DDP over that group)."""
        if self.replicas == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       process_group=self.replica_group)


def plan(dist: Dist, towers: int = TOWERS) -> TowerPlan:
    """Split the processes into tower pairs (ranks 2k, 2k+1) and replica sets; every rank must call it."""
    if towers != TOWERS:
        raise UserError(f"the paper network splits into {TOWERS} towers, not {towers}")
    if dist.world < TOWERS or dist.world % TOWERS:
        raise UserError(f"--towers {TOWERS} needs a multiple of {TOWERS} processes, one per tower "
                        f"(torchrun --nproc_per_node={TOWERS} -m alexnet train --towers {TOWERS} ...); "
                        f"this run has {dist.world}" + (
                            f" (a run saved with --towers {TOWERS} resumes on one process with --resume --towers 1)"
                            if dist.world == 1 else ""))
    replicas = dist.world // TOWERS
    tower, replica = dist.rank % TOWERS, dist.rank // TOWERS
    # new_group is collective over all processes: every rank creates every group, in the same order. Each
    # takes the default group's backends (distributed.backend_for): CPU tensors and objects pass too.
    pairs = [td.new_group(list(range(k * TOWERS, (k + 1) * TOWERS))) for k in range(replicas)]
    sets = [td.new_group(list(range(t, dist.world, TOWERS))) for t in range(TOWERS)] if replicas > 1 else None
    replica_group = sets[tower] if sets else None
    data = Dist(rank=replica, local_rank=dist.local_rank, world=replicas, device=dist.device, group=replica_group)
    return TowerPlan(tower, replica, replicas, pairs[replica], replica_group, data)


def build(make: Callable[[], nn.Module], seed: int, towers: TowerPlan) -> TowerAlexNet:
    """``make()``'s network seeded with ``seed`` on every process (so all towers and replicas cut the
    same one: the network one process would start from), split to this process's tower. The global
    random state is left as it was: only the CPU's generator is seeded, as the network is made there
    (torch.manual_seed would reseed every GPU's too, outside fork_rng's restore, and the towers would draw
    the same dropout masks)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return towers.split(make())
