"""Training-step throughput of the paper network with this project's LRN, torch's, and none.

    python benchmarks/lrn_step.py [--batch-size 32] [--steps 5] [--compile]

One process, bf16 autocast and channels_last when the CPU has bf16 (as `alexnet train` does), fused SGD
with momentum, glibc told to keep freed memory (as every `alexnet` command does); the median of --steps
timed steps after one warm-up step. The command behind the LRN figures in the README.
"""

import argparse
import statistics
import time

import torch
from torch import nn

from alexnet import AlexNet
from alexnet import lrn as lrn_module
from alexnet.cli import positive_int
from alexnet.lrn import _fused_ok
from alexnet.memory import reuse_freed_memory
from alexnet.precision import autocast, autocast_dtype


def images_per_second(model: nn.Module, batch: int, steps: int, compile: bool = False) -> float:
    device = torch.device("cpu")
    dtype = autocast_dtype("auto", device)
    model = model.to(memory_format=torch.channels_last).train()
    net = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=True)
    x = torch.randn(batch, 3, 227, 227).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile each network (timed after its compile)")
    args = p.parse_args(argv)
    reuse_freed_memory()
    torch.manual_seed(0)
    variants = {"alexnet LRN (fused C kernel)": AlexNet(num_classes=10)}
    variants["alexnet LRN (PyTorch ops fallback)"] = AlexNet(num_classes=10)
    m = AlexNet(num_classes=10)
    m.features[2] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # the same function, per window
    m.features[6] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # (though not per tower)
    variants["torch.nn.LocalResponseNorm"] = m
    m = AlexNet(num_classes=10)
    m.features[2] = m.features[6] = nn.Identity()
    variants["no LRN"] = m
    for name, model in variants.items():
        lrn_module._fused_ok = (lambda x: False) if "fallback" in name else _fused_ok
        torch._dynamo.reset()
        speed = images_per_second(model, args.batch_size, args.steps, args.compile)
        print(f"{name:45s} {speed:6.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
