"""`alexnet bench gpu`: every figure of a GPU in one call, written to one JSON file and printed as a table.

    alexnet bench gpu --out gpu.json              (benchmarks/gpu.sh runs this)

- train: the step of `alexnet train` (bf16, channels_last, fused LRN) at each batch size, eager and
  compiled, against torchvision's alexnet in fp32 and in bf16 in the same run: img/s, model-FLOP
  utilisation against the matrix-product peak measured here, and peak memory;
- lrn: the LRN's share of a step: the fused kernel (Triton on CUDA), the PyTorch-ops path, and no LRN;
- infer: batch-1 latency and large-batch throughput (bf16 weights, channels_last);
- data: img/s that one loading process delivers to the device from `alexnet prepare`'s raw store and from
  its jpeg store (decoded on the device where nvJPEG is there), augmented there as training does: divide a
  GPU's training img/s by it for the loader workers it needs.

Each section is written to the JSON file as soon as it is measured, and one that fails records its error
instead of ending the run: a GPU lent for minutes should give every figure it can. The same code runs on
the CPU at toy sizes (the test suite does so, with torch.compile's "eager" backend: graph capture without
code generation).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from alexnet import lrn as lrn_module
from alexnet.bench.data import check_images, write_photos
from alexnet.bench.timing import matmul_peak, median_seconds
from alexnet.bench.train import _step, paper_step
from alexnet.choices import GPU_SECTIONS
from alexnet.cores import usable_cores
from alexnet.data.loader import train_loader
from alexnet.data.prepare import prepare
from alexnet.data.sources import open_split
from alexnet.data.stats import DataStats
from alexnet.data.transforms import Draws, Normalize, PCANoise, train_views
from alexnet.device import pick_device
from alexnet.errors import UserError
from alexnet.files import head, make_folder, replaceable, write_or_say
from alexnet.machine import describe, one_line
from alexnet.model import INPUT_SIZE, AlexNet
from alexnet.summary import summarize

BATCHES = (128, 256, 512)
SECTIONS = GPU_SECTIONS


def bench_gpu(device: str = "auto", batches: tuple[int, ...] = BATCHES, steps: int = 10, images: int = 2048,
              workers: int | None = None, out: str | Path | None = None, compile_backend: str = "inductor",
              matmul_size: int | None = None, sections: tuple[str, ...] = SECTIONS) -> dict:
    dev = pick_device(device)
    if device == "auto" and dev.type != "cuda":
        raise UserError("bench gpu measures a GPU, and PyTorch sees none; add --device cpu to run it on this CPU "
                        "(minutes at its default batches)")
    if "data" in sections:
        check_images(images, min(batches), "--batches")
    if out is not None:   # a report of an earlier run may be replaced; a checkpoint given by a slip may not
        replaceable(out, lambda p: head(p, 40).startswith(b'{\n "benchmark": "gpu"'), "a bench gpu report")
        _check_writable(Path(out))
    # Large enough to reach a GPU's peak; a CPU reaches its own at 1024.
    matmul_size = matmul_size or (8192 if dev.type == "cuda" else 1024)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = workers if workers is not None else min(16, usable_cores())
    result: dict = {"benchmark": "gpu", "device": str(dev), "machine": describe(dev, "bf16"),
                    "versions": _versions(), "batches": list(batches), "steps": steps}

    def section(name: str, measure: Callable[[], object]) -> None:
        if name not in sections and name != "peak":    # the peak is what utilisation is measured against
            return
        start = time.perf_counter()
        try:
            result[name] = measure()
        except Exception as e:   # one broken section must not cost the others' figures
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        if out is not None:
            _write(out, result)

    # Untimed calls before the timed ones: as many, up to 3 (the first compiles, or picks cuDNN's
    # algorithms; --steps 1, as the test suite asks, then costs 2 calls a figure and not 4: where bf16 is
    # emulated (a CPU without it) a call of the paper network at batch 2 takes 2 s).
    warmup = min(3, steps)
    section("peak", lambda: _peaks(dev, matmul_size, min(5, steps), warmup))
    nan = float("nan")
    peak = result["peak"] if "error" not in result["peak"] else {"bf16_tflops": nan, "fp32_tflops": nan}
    section("train", lambda: _train(dev, batches, steps, warmup, compile_backend, peak))
    section("lrn", lambda: _lrn_share(dev, batches[len(batches) // 2], steps, warmup))
    section("infer", lambda: _infer(dev, max(batches) // 2, steps, warmup))
    section("data", lambda: _data(dev, images, min(batches), workers))
    return result


def _peaks(dev: torch.device, n: int, repeats: int, warmup: int) -> dict:
    """TFLOP/s of an n x n x n matrix product in bf16 and fp32; on CUDA also with TF32, which cuDNN's
    float32 convolutions use by default (torch.backends.cudnn.allow_tf32): the fp32 rows' ceiling."""
    def peak(dtype):
        return matmul_peak(dev, dtype, n, repeats, warmup=min(2, warmup)) / 1e12

    peaks = {"bf16_tflops": peak(torch.bfloat16), "fp32_tflops": peak(torch.float32)}
    if dev.type == "cuda" and torch.backends.cudnn.allow_tf32:
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["tf32_tflops"] = peak(torch.float32)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    return peaks


def _versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "triton": triton_version,
            "cuda": torch.version.cuda}


def _check_writable(path: Path) -> None:
    """Before minutes of measuring, not after the first section: --out's folder made (as other commands'
    --out are), and a file written there and removed."""
    try:
        make_folder(path.parent)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise UserError(f"could not write --out {path} ({e.strerror or e})") from None


def _write(path: str | Path, result: dict) -> None:
    # A failure (a full disk) is one line naming --out, not its temporary file.
    text = json.dumps(result, indent=1)
    write_or_say(path, lambda tmp: Path(tmp).write_text(text))


def _peak_memory(dev: torch.device, run: Callable[[], float]) -> tuple[float, float | None]:
    """run()'s result and the device memory it peaked at, in GB (None on a CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    value = run()
    return value, (torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None)


def _row(name: str, batch: int, seconds: float, flops_per_image: float, peak_tflops: float,
         memory_gb: float | None) -> dict:
    ips = batch / seconds
    return {"network": name, "batch": batch, "img_s": ips, "ms_per_step": seconds * 1e3,
            "mfu": ips * flops_per_image / (peak_tflops * 1e12), "memory_gb": memory_gb}


def _train(dev: torch.device, batches, steps: int, warmup: int, backend: str, peak: dict) -> list[dict]:
    # Model FLOPs (as bench train counts them): multiply-adds of one forward pass, x2 for FLOPs, x3 for the
    # forward and backward's two products, conv1's input gradient included though no step computes it
    # (about 5% of the paper network's count, 3% of torchvision's).
    ours_flops = 6 * summarize(AlexNet("paper").to("meta"))["macs"]
    tv_flops = 6 * summarize(AlexNet("owt").to("meta"))["macs"]      # torchvision's layout
    rows = []
    for batch in batches:
        for compiled in (False, True):
            torch._dynamo.reset()
            wrap = (lambda m: torch.compile(m, backend=backend)) if compiled else None
            rows.append(_timed_row("paper" + (", compiled" if compiled else ""), batch, dev, steps, warmup,
                                   ours_flops, peak["bf16_tflops"],
                                   lambda: paper_step(batch, dev, torch.bfloat16, net_of=wrap)))
        for dtype in (torch.float32, torch.bfloat16):
            fp32 = dtype == torch.float32
            # fp32 on CUDA: cuDNN's convolutions in TF32 (its default), so that is the ceiling.
            ceiling = peak.get("tf32_tflops", peak["fp32_tflops"]) if fp32 else peak["bf16_tflops"]
            rows.append(_timed_row(f"torchvision {'fp32' if fp32 else 'bf16'}", batch, dev, steps, warmup, tv_flops,
                                   ceiling, lambda: _torchvision_step(batch, dev, dtype)))
    return rows


def _timed_row(name: str, batch: int, dev: torch.device, steps: int, warmup: int, flops_per_image: float,
               peak_tflops: float, make_step: Callable[[], Callable[[], object]]) -> dict:
    """One row of the train table; a configuration that fails gives its error, not the others' loss."""
    try:
        step = make_step()
        seconds, memory = _peak_memory(dev, lambda: median_seconds(step, steps, warmup=warmup))
    except Exception as e:
        return {"network": name, "batch": batch, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return _row(name, batch, seconds, flops_per_image, peak_tflops, memory)


def _torchvision_step(batch: int, dev: torch.device, dtype: torch.dtype):
    """pytorch/examples' loop (NCHW, eager), in fp32 or under bf16 autocast."""
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None).to(dev).train()
    return _step(net, torch.randn(batch, 3, 224, 224, device=dev), torch.randint(0, 1000, (batch,), device=dev),
                 None if dtype == torch.float32 else dtype)


def _lrn_share(dev: torch.device, batch: int, steps: int, warmup: int) -> dict:
    """ms per step of the paper network's bf16 step with the fused LRN, the ops path, and none."""
    times = {}
    fused_ok = lrn_module._fused_ok
    for variant in ("fused", "ops", "none"):
        model = AlexNet("paper")
        if variant == "none":
            model.features[2] = model.features[6] = nn.Identity()
        lrn_module._fused_ok = (lambda x: False) if variant == "ops" else fused_ok
        try:
            times[variant] = median_seconds(paper_step(batch, dev, torch.bfloat16, model=model), steps, warmup=warmup)
        finally:
            lrn_module._fused_ok = fused_ok
    return {"batch": batch, "fused_kernel": "triton" if dev.type == "cuda" else "c",
            "ms_per_step": {k: v * 1e3 for k, v in times.items()},
            "share": {k: 1 - times["none"] / times[k] for k in ("fused", "ops")}}


def _infer(dev: torch.device, batch: int, steps: int, warmup: int) -> dict:
    model = AlexNet("paper").to(dev, torch.bfloat16, memory_format=torch.channels_last).eval()
    size = INPUT_SIZE["paper"]
    out = {"batch": batch}
    for n, key in ((1, "latency_ms"), (batch, "img_s")):
        x = torch.randn(n, 3, size, size, device=dev).to(torch.bfloat16, memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                model(x)
        seconds = median_seconds(run, max(steps, 20) if n == 1 else steps, warmup=warmup)
        out[key] = seconds * 1e3 if n == 1 else n / seconds
    return out


def _data(dev: torch.device, images: int, batch: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-gpu-") as tmp:
        data = write_photos(Path(tmp) / "data", images)
        stores = {"raw": Path(tmp) / "raw", "jpeg": Path(tmp) / "jpeg"}
        for store, path in stores.items():
            prepare(data, path, workers=workers, progress=False, store=store)
        stats = DataStats.load(open_split(stores["raw"], "train").stats_file)
        norm, pca = Normalize.create("mean-image", stats), PCANoise(stats.eigvals, stats.eigvecs)
        out = {"images": images, "batch": batch, "prepare_workers": workers}
        for store, path in stores.items():
            split = open_split(path, "train").for_device(dev)
            out[f"{store}_img_s"] = _delivered(split, dev, batch, norm, pca)
            out[f"{store}_decoded_on_device"] = bool(getattr(split, "hand_over", False))
        return out


def _delivered(split, dev: torch.device, batch: int, norm, pca, epochs: int = 3) -> float:
    """The median epoch's img/s after an untimed first, as every figure here is a median (timing.py says why):
    batches as `alexnet train` gets them, read in this one process (a loader worker's share), then on the
    device, cropped, mirrored, noised and normalised there."""
    loader = train_loader(split, batch, rank=0, world=1, seed=0, workers=0, pin_memory=dev.type == "cuda")
    size = INPUT_SIZE["paper"]
    rates = []
    for epoch in range(epochs + 1):
        loader.sampler.set_position(epoch, 0)
        start, n = time.perf_counter(), 0
        for images, _labels, indices, _errors in loader:
            draws = Draws.per_sample(indices, epoch, 0, images.shape[1], images.shape[2], size)
            x = train_views(images.to(dev, non_blocking=True), size, norm, pca, draws=draws)
            n += len(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if epoch:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def format_report(r: dict) -> str:
    """The JSON as a table a reader can paste."""
    lines = [f"alexnet bench gpu on {r['machine'].get('accelerator') or r['machine'].get('cpu')} "
             f"(torch {r['versions']['torch']}, triton {r['versions']['triton']})"]
    peak = r.get("peak", {})
    if "error" not in peak:
        lines.append(f"matrix-product peak: bf16 {peak['bf16_tflops']:.1f} TFLOP/s, fp32 {peak['fp32_tflops']:.1f}"
                     + (f", TF32 {peak['tf32_tflops']:.1f} (the fp32 rows' ceiling: cuDNN convolves in TF32)"
                        if "tf32_tflops" in peak else ""))
    train = r.get("train")
    if isinstance(train, list):
        lines.append(f"{'train step':28s} {'batch':>5s} {'img/s':>9s} {'ms/step':>8s} {'MFU':>6s} {'memory':>8s}")
        for row in train:
            if "error" in row:
                lines.append(f"{row['network']:28s} {row['batch']:5d} FAILED {row['error']}")
                continue
            mem = f"{row['memory_gb']:.1f} GB" if row["memory_gb"] is not None else "-"
            lines.append(f"{row['network']:28s} {row['batch']:5d} {row['img_s']:9.0f} {row['ms_per_step']:8.1f} "
                         f"{row['mfu']:6.1%} {mem:>8s}")
    lrn = r.get("lrn", {})
    if "share" in lrn:
        ms = lrn["ms_per_step"]
        lines.append(f"LRN at batch {lrn['batch']}: fused ({lrn['fused_kernel']}) {ms['fused']:.1f} ms/step, "
                     f"{lrn['share']['fused']:.1%} of it; ops path {ms['ops']:.1f} ms, {lrn['share']['ops']:.1%}; "
                     f"none {ms['none']:.1f} ms")
    infer = r.get("infer", {})
    if "img_s" in infer:
        lines.append(f"inference: batch 1 {infer['latency_ms']:.2f} ms, batch {infer['batch']} "
                     f"{infer['img_s']:.0f} img/s")
    data = r.get("data", {})
    if "raw_img_s" in data:
        lines.append(f"data to the device, one loading process, batch {data['batch']}: raw store "
                     f"{data['raw_img_s']:.0f} img/s, jpeg store {data['jpeg_img_s']:.0f} img/s "
                     f"({'decoded on the device' if data['jpeg_decoded_on_device'] else 'decoded on the CPU'})")
    for name, value in r.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"{name}: FAILED {value['error']}")
    lines.append("seconds per section: " + ", ".join(f"{k} {v}" for k, v in r.get("seconds", {}).items()))
    lines.append(f"on: {one_line(r['machine'])}")   # as every report ends
    return "\n".join(lines)

