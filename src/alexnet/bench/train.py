"""`alexnet bench train`: the step `alexnet train` takes (step.TrainStep: a uint8 batch augmented on the
device, the paper network, its settings), against torchvision's alexnet in the plain fp32 loop of
pytorch/examples, and the model FLOP utilisation."""

from __future__ import annotations

import subprocess
import sys

import torch
import torchvision
from torch import nn

from alexnet.bench.fits import TRAIN, check_fits, is_out_of_memory, said_if_out_of_memory
from alexnet.bench.timing import matmul_peak, median_seconds, paired_medians
from alexnet.data.transforms import Draws, Normalize, PCANoise, Preprocessing
from alexnet.device import pick_device
from alexnet.machine import describe
from alexnet.model import INPUT_SIZE, AlexNet
from alexnet.precision import autocast_dtype, name
from alexnet.step import TrainStep, sgd
from alexnet.summary import summarize


def bench_train(batch_size: int = 64, steps: int = 5, device: str = "auto", compile: bool = False) -> dict:
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = autocast_dtype("auto", dev)
    need = check_fits(batch_size, TRAIN, dev)
    with said_if_out_of_memory(batch_size, need):
        torch.manual_seed(0)
        labels = torch.randint(0, 1000, (batch_size,), device=dev)

        ours_step = paper_step(batch_size, dev, dtype, compile)
        base = torchvision.models.alexnet(weights=None).to(dev).train()
        base_step = _step(base, torch.randn(batch_size, 3, 224, 224, device=dev), labels)

        # The baseline as pytorch/examples runs it: its own process, glibc's malloc defaults (our commands
        # tune them, memory.py), timed before and after ours so that both see the machine's drift. The
        # same baseline timed inside this process, allocator tuning and all, is reported beside it.
        fresh = [_baseline_in_own_process(batch_size, steps, device)]
        ours_s, same_s = paired_medians(ours_step, base_step, steps)
        fresh.append(_baseline_in_own_process(batch_size, steps, device))
    base_s = sum(fresh) / len(fresh)
    # Model FLOPs, the usual convention: multiply-adds of one forward pass, x2 for FLOPs, x3 for forward + the
    # two products of backward. That counts conv1's input gradient, which the step never computes (the image
    # needs none): 2 x 105,415,200 FLOPs an image, about 5% of the count, so the work done is 5% below it.
    flops_per_image = 6 * summarize(AlexNet("paper").to("meta"))["macs"]
    peak = matmul_peak(dev, dtype or torch.float32)
    ours_ips, base_ips = batch_size / ours_s, batch_size / base_s
    return {"benchmark": "train", "ours": ours_ips, "baseline": base_ips, "ratio": ours_ips / base_ips,
            "utilisation": ours_ips * flops_per_image / peak, "peak_tflops": peak / 1e12,
            "achieved_tflops": ours_ips * flops_per_image / 1e12, "batch_size": batch_size,
            "device": str(dev), "machine": describe(dev, name(dtype)),
            "ours_settings": f"alexnet train's step: paper network, uint8 batch augmented on the device (crop, "
                             f"flip, PCA noise, mean image), {name(dtype)} autocast, channels_last, fused LRN, "
                             f"fused SGD" + (", torch.compile" if compile else ""),
            "baseline_settings": "torchvision alexnet, fp32, NCHW, eager, own process (pytorch/examples)",
            "baseline_same_process": batch_size / same_s,
            "threads": torch.get_num_threads()}


def paper_step(batch_size: int, device: torch.device, dtype: torch.dtype | None, compile: bool = False,
               net_of=None, model: AlexNet | None = None, seed: int = 0, pin: bool = True, on_device: bool = False,
               pair=None):
    """alexnet train's own step (step.TrainStep) on a fixed uint8 batch of the paper network's input:
    a callable for the timers. ``net_of(model)`` wraps the model (DDP, say) after its layout is set. The
    batch is pinned for a GPU as the loader pins it (``pin``), or put on the device beforehand (``on_device``).
    ``pair``: a tower's pair (TrainStep's), with ``model`` one tower."""
    model = (model or AlexNet("paper")).to(device, memory_format=torch.channels_last).train()
    net = torch.compile(model) if compile else model
    net = net_of(net) if net_of else net
    gen = torch.Generator().manual_seed(seed)
    size = INPUT_SIZE["paper"]
    images = torch.randint(0, 256, (batch_size, 256, 256, 3), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 1000, (batch_size,), generator=gen)
    if on_device:
        images, labels = images.to(device), labels.to(device)
    elif pin and device.type == "cuda":   # a pageable copy took a quarter of a step (H100, batch 256)
        images, labels = images.pin_memory(), labels.pin_memory()
    draws = Draws.from_generator(batch_size, 256, 256, size, gen)
    # The paper's input: the mean image subtracted, PCA noise (ImageNet's published eigenpairs, docs/paper-numbers.md).
    prep = Preprocessing(size, Normalize(torch.full((256, 256, 3), 118.0)),
                         PCANoise(torch.tensor([0.2175, 0.0188, 0.0045]),
                                  torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                                                [-0.5836, -0.6948, 0.4203]])))
    # The paper's update: weights decayed, biases not; the paper's rule (one momentum per step, no extra pass).
    optimizer = sgd(model, 1e-4, 0.9, 5e-4, device, bias_decay=False, scaled=dtype == torch.float16)
    step = TrainStep(net, optimizer, prep, device, dtype, batch_size,
                     paper_momentum=0.9, pair=pair)
    return lambda: step(images, labels, draws, 1e-4)


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_to: torch.dtype | None = None):
    """pytorch/examples' loop: plain fp32 forward and backward (or under autocast to ``autocast_to``),
    torch.optim.SGD with its defaults."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        with torch.autocast(x.device.type, dtype=autocast_to, enabled=autocast_to is not None):
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
                       text=True)
    if r.returncode != 0:
        if is_out_of_memory(r.stderr):   # its own words, for said_if_out_of_memory to say in one line
            raise RuntimeError("the baseline's process: can't allocate memory")
        raise RuntimeError(f"bench train: the baseline's process failed:\n{r.stderr[-3000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def _baseline_seconds(batch_size: int, steps: int, device: str) -> float:
    dev = pick_device(device)
    torch.manual_seed(0)
    base = torchvision.models.alexnet(weights=None).to(dev).train()
    step = _step(base, torch.randn(batch_size, 3, 224, 224, device=dev),
                 torch.randint(0, 1000, (batch_size,), device=dev))
    return median_seconds(step, steps)
