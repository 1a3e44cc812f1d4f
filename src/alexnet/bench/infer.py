"""`alexnet bench infer`: batch-1 latency and batch-64 throughput of the paper network with this project's
settings, against torchvision's alexnet in eager fp32; on a CPU also the same network in int8
(quantize.py), timed in its own alternation with the same baseline."""

from __future__ import annotations

import torch
import torchvision

from alexnet.bench.fits import INFER, check_fits, said_if_out_of_memory
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
    need = check_fits(batch_size, INFER, dev)
    with said_if_out_of_memory(batch_size, need):
        torch.manual_seed(0)
        # Weights cast to bf16 once, rather than autocast casting all 61M of them again on every call: at
        # batch 1 that recasting is most of the work.
        ours = AlexNet("paper").to(dev, dtype or torch.float32, memory_format=torch.channels_last).eval()
        base = torchvision.models.alexnet(weights=None).to(dev).eval()
        result = _against(ours, base, dev, dtype, batch_size, steps)
        if dev.type == "cpu":
            result["int8"] = _int8(ours, base, batch_size, steps)
    return {"benchmark": "infer", **result, "batch_size": batch_size, "device": str(dev),
            "machine": describe(dev, name(dtype)),
            "ours_settings": f"paper network, {name(dtype)} weights and inputs, channels_last, inference_mode",
            "baseline_settings": "torchvision alexnet, fp32, NCHW, eager, inference_mode",
            "threads": torch.get_num_threads()}


def _against(ours, base, dev: torch.device, dtype: torch.dtype | None, batch_size: int, steps: int) -> dict:
    """ours and base timed in alternation at batch 1 and batch_size: images/s, latency and their ratios."""
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
    return {"ours": batch_size / thr_o, "baseline": batch_size / thr_b, "ratio": thr_b / thr_o,
            "latency_ms": {"ours": lat_o * 1e3, "baseline": lat_b * 1e3}, "latency_ratio": lat_b / lat_o}


def _int8(ours: AlexNet, base, batch_size: int, steps: int) -> dict:
    """The int8 figures, calibrated on random inputs: int8 kernels take as long whatever ranges they got."""
    from alexnet.quantize import FLOAT_LAYERS, engine, quantize_int8

    size = INPUT_SIZE["paper"]
    int8 = quantize_int8(ours, [torch.randn(8, 3, size, size) for _ in range(2)])
    kept = ", ".join((*FLOAT_LAYERS, "LRN"))
    return _against(int8, base, torch.device("cpu"), None, batch_size, steps) | {
        "settings": f"paper network, int8 weights and activations ({engine()} kernels; {kept} in float), "
                    "calibrated on random inputs, channels_last, inference_mode"}
