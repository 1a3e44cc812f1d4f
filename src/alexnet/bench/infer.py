"""`alexnet bench infer`: batch-1 latency and batch-64 throughput of the paper network with this project's
settings, against torchvision's alexnet in eager fp32."""

from __future__ import annotations

import torch
import torchvision

from alexnet.bench.timing import paired_medians
from alexnet.device import pick_device
from alexnet.machine import describe
from alexnet.model import INPUT_SIZE, AlexNet
from alexnet.precision import autocast_dtype, name


def bench_infer(batch_size: int = 64, steps: int = 5, device: str = "auto") -> dict:
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = autocast_dtype("auto", dev)
    torch.manual_seed(0)
    # Weights cast to bf16 once, rather than autocast casting all 61M of them again on every call: at
    # batch 1 that recasting is most of the work.
    ours = AlexNet("paper").to(dev, dtype or torch.float32, memory_format=torch.channels_last).eval()
    base = torchvision.models.alexnet(weights=None).to(dev).eval()

    def runner(model, x):
        def run():
            with torch.inference_mode():
                model(x)
        return run

    figures = {}
    ours_size, base_size = INPUT_SIZE["paper"], INPUT_SIZE["owt"]   # torchvision's alexnet is the owt layout
    for batch, repeats in ((1, max(10, 4 * steps)), (batch_size, steps)):
        xo = torch.randn(batch, 3, ours_size, ours_size, device=dev, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        xb = torch.randn(batch, 3, base_size, base_size, device=dev)
        figures[batch] = paired_medians(runner(ours, xo), runner(base, xb), repeats, warmup=2)
    (lat_o, lat_b), (thr_o, thr_b) = figures[1], figures[batch_size]
    return {"benchmark": "infer", "ours": batch_size / thr_o, "baseline": batch_size / thr_b,
            "ratio": thr_b / thr_o, "latency_ms": {"ours": lat_o * 1e3, "baseline": lat_b * 1e3},
            "latency_ratio": lat_b / lat_o, "batch_size": batch_size, "device": str(dev),
            "machine": describe(dev, name(dtype)),
            "ours_settings": f"paper network, {name(dtype)} weights and inputs, channels_last, inference_mode",
            "baseline_settings": "torchvision alexnet, fp32, NCHW, eager, inference_mode",
            "threads": torch.get_num_threads()}
