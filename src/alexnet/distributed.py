"""One process or many, the same code: torchrun's environment in, a small Dist record out.

    alexnet train ...                                          # one process
    torchrun --nproc_per_node=2 -m alexnet train ...           # DDP on one machine (gloo; on CUDA nccl too)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a world of one and no process
group is created. Rank 0 alone logs and writes files. A process group that is already there (its
creator's) is used as it is, and left for its creator to destroy.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td

# The one device rule lives in device.py; importable from here too.
from alexnet.cores import launcher_number, local_world
from alexnet.device import pick_device
from alexnet.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    # The processes the helpers below span: None for all of them; under --towers, the replicas of this
    # rank's tower (alexnet.parallel), so that sums count each image once.
    group: Any = None
    # setup() created the default process group, so teardown() destroys it.
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def backend_for(device: torch.device) -> str:
    """The process group's backend for processes on ``device`` (init_process_group's ``backend``)."""
    # NCCL serves CUDA tensors only, and the processes also exchange CPU tensors and pickled objects
    # (train's checks and stats, evaluate's sums, RNG states): gloo takes those. Subgroups (new_group)
    # inherit the string, so --towers' groups serve both devices too.
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def setup(device_setting: str = "auto") -> Dist:
    """Join torchrun's process group if there is one; pick this process's device."""
    world = launcher_number("WORLD_SIZE", "1", least=1)
    rank, local_rank = launcher_number("RANK", "0"), launcher_number("LOCAL_RANK", "0")
    if device_setting.startswith("cuda:") and local_world() > 1:
        raise UserError(f"--device {device_setting} would put every process of this machine on one GPU; under "
                        f"torchrun use --device cuda (each process takes its local rank's GPU)")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(v)]
    if missing:
        # A WORLD_SIZE left in the environment (exported by a script, a scheduler's own) without torchrun.
        raise UserError(f"WORLD_SIZE is {world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        f"set: a world of processes is torchrun's to start (torchrun --nproc-per-node N -m alexnet "
                        f"...); for one process, unset WORLD_SIZE")
    _check_ranks(world, rank, local_rank)
    device = pick_device(device_setting, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world > 1 and not td.is_initialized()
    if owns_group:
        td.init_process_group(backend=backend_for(device), device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, local_rank=local_rank, world=world, device=device, owns_group=owns_group)


def _check_ranks(world: int, rank: int, local_rank: int) -> None:
    """A rank beyond the world (a RANK left in the environment without torchrun) would pick a share of the batch
    that does not exist, or make a lone process think another one is the main one and say nothing."""
    given = "WORLD_SIZE" in os.environ
    if rank >= world:
        raise UserError(f"RANK is {rank} but WORLD_SIZE is {world if given else 'not set (one process)'}: ranks run "
                        f"from 0 to WORLD_SIZE - 1 (torchrun sets both); for one process, unset RANK")
    # The processes of this machine: LOCAL_WORLD_SIZE where the launcher sets it (torchrun does), else all of them.
    here = min(local_world(world), world)
    if local_rank >= here:
        said = [f"WORLD_SIZE {world}" if given else "WORLD_SIZE not set"]
        if "LOCAL_WORLD_SIZE" in os.environ:
            said.append(f"LOCAL_WORLD_SIZE {os.environ['LOCAL_WORLD_SIZE']}")
        raise UserError(f"LOCAL_RANK is {local_rank} but this machine runs {here} process{'es' * (here != 1)} "
                        f"({', '.join(said)}): local ranks run from 0 to one fewer (torchrun sets them); for one "
                        f"process, unset LOCAL_RANK")


def teardown(dist: Dist) -> None:
    # Only the group setup() made: one that was there before is its maker's, who may use it again (making
    # a second one in the same processes is unreliable under torchrun: gloo can dial the first one's ports).
    if dist.owns_group and td.is_initialized():
        # Whatever holds the group from a reference cycle (DDP does) goes first, while the interpreter is whole:
        # left to the interpreter's exit, gloo's threads met it half finalised and the process died with SIGABRT
        # ("terminate called without an active exception"; 2 of 12 two-process training runs). The caller
        # drops its own references first (train.train, bench/towers.py).
        gc.collect()
        td.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.active:
        td.barrier(group=dist.group)


def all_sum(dist: Dist, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all processes (a copy on the input's device; the input is left alone)."""
    return _all_reduce(dist, values, td.ReduceOp.SUM)


def all_max(dist: Dist, values: torch.Tensor) -> torch.Tensor:
    return _all_reduce(dist, values, td.ReduceOp.MAX)


def _all_reduce(dist: Dist, values: torch.Tensor, op) -> torch.Tensor:
    # Where the values are: the group serves CPU and CUDA tensors alike (backend_for), and a CPU
    # tensor needs no trip to the GPU and back.
    out = values.clone()
    if dist.active:
        td.all_reduce(out, op=op, group=dist.group)
    return out


def everywhere(dist: Dist, flag: bool) -> bool:
    """Whether ``flag`` holds on every process of the job (all of them, whatever ``dist.group``)."""
    if not dist.active:
        return flag
    out = torch.tensor([int(flag)])   # a CPU tensor: the group serves it on CPU and CUDA runs alike
    td.all_reduce(out, op=td.ReduceOp.MIN)
    return bool(out.item())


def gather_objects(dist: Dist, obj):
    """Every process's ``obj``, in rank order (a list of one without a process group)."""
    if not dist.active:
        return [obj]
    out = [None] * dist.world
    td.all_gather_object(out, obj, group=dist.group)
    return out


def broadcast_object(dist: Dist, obj):
    """Rank 0's ``obj`` (the first of ``dist.group``) on every process."""
    if not dist.active:
        return obj
    box = [obj]
    td.broadcast_object_list(box, group=dist.group, group_src=0)
    return box[0]
