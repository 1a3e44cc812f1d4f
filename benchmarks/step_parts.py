"""Where a training step's time goes: `alexnet train`'s step beside the same network with one part taken
away at a time, and torchvision's alexnet, on one device in one run.

    python benchmarks/step_parts.py [--batch-size 256] [--device auto] [--steps 10] [--profile]

Rows, each the median of --steps timed steps after 3 warm-ups (bf16 autocast where the device has it):
alexnet train's step with its uint8 batch in pageable memory, pinned (as the loader hands it to a GPU) and
already on the device; then the paper network on a float batch that is ready (no augmentation), in
channels_last and NCHW, without LRN, with ungrouped convolutions (the towers merged), and both; then
torchvision's layout (owt) and torchvision's alexnet. The differences between rows are the parts' costs.
--profile adds torch.profiler's table of three steps of alexnet train's step, by device time.
The command behind the located GPU step in the README ("On a GPU"); it runs on a CPU too.
"""

import argparse
import sys

import torch
import torchvision
from torch import nn

from alexnet.bench.timing import median_seconds
from alexnet.bench.train import _step, paper_step
from alexnet.cli import positive_int
from alexnet.device import pick_device
from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet
from alexnet.precision import autocast_dtype


def ungrouped(model: AlexNet) -> AlexNet:
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            model.features[i] = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
    return model


def without_lrn(model: AlexNet) -> AlexNet:
    for i, m in enumerate(model.features):
        if isinstance(m, LocalResponseNorm):
            model.features[i] = nn.Identity()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    dev, batch = pick_device(args.device), args.batch_size
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = autocast_dtype("auto", dev)
    cl, nchw = torch.channels_last, torch.contiguous_format

    def plain(model: nn.Module, size: int, layout):
        torch.manual_seed(0)
        model = model.to(dev, memory_format=layout).train()
        x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=layout)
        return _step(model, x, torch.randint(0, 1000, (batch,), device=dev), dtype)

    rows = [
        ("alexnet train's step (uint8 batch pinned on CUDA, augmented on the device)", paper_step(batch, dev, dtype)),
        ("  its uint8 batch in pageable memory", paper_step(batch, dev, dtype, pin=False)),
        ("  its uint8 batch already on the device", paper_step(batch, dev, dtype, on_device=True)),
        ("paper network, float batch ready, channels_last", plain(AlexNet("paper"), 227, cl)),
        ("  NCHW", plain(AlexNet("paper"), 227, nchw)),
        ("  channels_last, no LRN", plain(without_lrn(AlexNet("paper")), 227, cl)),
        ("  channels_last, ungrouped convolutions", plain(ungrouped(AlexNet("paper")), 227, cl)),
        ("  channels_last, no LRN, ungrouped convolutions", plain(ungrouped(without_lrn(AlexNet("paper"))), 227, cl)),
        ("torchvision's layout (owt), 224, channels_last", plain(AlexNet("owt"), 224, cl)),
        ("torchvision alexnet, 224, NCHW", plain(torchvision.models.alexnet(), 224, nchw)),
    ]
    name = {None: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    print(f"{dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch {torch.__version__}, "
          f"{name}, batch {batch}")
    for label, step in rows:
        s = median_seconds(step, args.steps, warmup=3)
        print(f"{label:80s} {s * 1e3:8.2f} ms {batch / s:9.0f} img/s", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = rows[0][1]
        for _ in range(3):
            step()
        cuda = dev.type == "cuda"
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(3):
                step()
            if cuda:
                torch.cuda.synchronize(dev)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"step_parts: {e}", file=sys.stderr)
        raise SystemExit(2) from None
