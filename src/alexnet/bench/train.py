"""`alexnet bench train`: one SGD step of the paper network with this project's best settings, against
torchvision's alexnet in the plain fp32 loop of pytorch/examples, and the model FLOP utilisation."""

from __future__ import annotations

import subprocess
import sys

import torch
import torchvision
from torch import nn

from alexnet.bench.timing import matmul_peak, median_seconds, paired_medians, pick_device
from alexnet.model import AlexNet
from alexnet.precision import autocast, autocast_dtype, name
from alexnet.summary import summarize


def bench_train(batch_size: int = 64, steps: int = 5, device: str = "auto", compile: bool = False) -> dict:
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = autocast_dtype("auto", dev)
    torch.manual_seed(0)
    labels = torch.randint(0, 1000, (batch_size,), device=dev)

    ours = AlexNet("paper").to(dev, memory_format=torch.channels_last).train()
    ours_step = _step(torch.compile(ours) if compile else ours, ours,
                      torch.randn(batch_size, 3, 227, 227, device=dev).contiguous(memory_format=torch.channels_last),
                      labels, dev, dtype, weight_decay=5e-4, fused=True)   # as alexnet train does
    base = torchvision.models.alexnet(weights=None).to(dev).train()
    base_step = _step(base, base, torch.randn(batch_size, 3, 224, 224, device=dev), labels, dev, None,
                      weight_decay=1e-4, fused=False)   # pytorch/examples' torch.optim.SGD defaults

    # The baseline as pytorch/examples runs it: its own process, glibc's malloc defaults (our commands
    # tune them, memory.py), timed before and after ours so that both see the machine's drift. The
    # same baseline timed inside this process, allocator tuning and all, is reported beside it.
    fresh = [_baseline_in_own_process(batch_size, steps, device)]
    ours_s, same_s = paired_medians(ours_step, base_step, steps)
    fresh.append(_baseline_in_own_process(batch_size, steps, device))
    base_s = sum(fresh) / len(fresh)
    # Multiply-adds of one forward pass, x2 for FLOPs, x3 for forward + the two products of backward.
    flops_per_image = 6 * summarize(AlexNet("paper").to("meta"))["macs"]
    peak = matmul_peak(dev, dtype or torch.float32)
    ours_ips, base_ips = batch_size / ours_s, batch_size / base_s
    return {"benchmark": "train", "ours": ours_ips, "baseline": base_ips, "ratio": ours_ips / base_ips,
            "utilisation": ours_ips * flops_per_image / peak, "peak_tflops": peak / 1e12,
            "achieved_tflops": ours_ips * flops_per_image / 1e12, "batch_size": batch_size,
            "device": str(dev),
            "ours_settings": f"paper network, {name(dtype)} autocast, channels_last, fused LRN, fused SGD"
            + (", torch.compile" if compile else ""),
            "baseline_settings": "torchvision alexnet, fp32, NCHW, eager, own process (pytorch/examples)",
            "baseline_same_process": batch_size / same_s,
            "threads": torch.get_num_threads()}


def _step(net: nn.Module, params: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, dtype,
          weight_decay: float, fused: bool):
    opt = torch.optim.SGD(params.parameters(), lr=1e-4, momentum=0.9, weight_decay=weight_decay, fused=fused)

    def step():
        with autocast(dev, dtype):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _baseline_in_own_process(batch_size: int, steps: int, device: str) -> float:
    """Median seconds per step of the baseline in a fresh interpreter (see bench_train)."""
    code = ("import sys, torch, torchvision; from alexnet.bench.train import _baseline_seconds; "
            "print(_baseline_seconds(*map(int, sys.argv[1:3]), sys.argv[3]))")
    r = subprocess.run([sys.executable, "-c", code, str(batch_size), str(steps), device], capture_output=True,
                       text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def _baseline_seconds(batch_size: int, steps: int, device: str) -> float:
    dev = pick_device(device)
    torch.manual_seed(0)
    base = torchvision.models.alexnet(weights=None).to(dev).train()
    step = _step(base, base, torch.randn(batch_size, 3, 224, 224, device=dev),
                 torch.randint(0, 1000, (batch_size,), device=dev), dev, None, weight_decay=1e-4, fused=False)
    return median_seconds(step, steps)
