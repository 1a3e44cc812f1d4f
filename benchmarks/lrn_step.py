"""Training-step throughput of the paper network with this project's LRN, torch's, and none.

    python benchmarks/lrn_step.py [--batch-size 32] [--steps 5]

One process, bf16 autocast and channels_last when the CPU has bf16 (as `alexnet train` does), SGD with
momentum; the best of --steps timed steps after one warm-up step. Until `alexnet bench` exists, this is
the command behind the LRN figures in the README.
"""

import argparse
import time

import torch
from torch import nn

from alexnet import AlexNet
from alexnet.precision import autocast, autocast_dtype


def images_per_second(model: nn.Module, batch: int, steps: int) -> float:
    device = torch.device("cpu")
    dtype = autocast_dtype("auto", device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, 227, 227).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return batch / min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    variants = {"alexnet LRN (banded, hand-written backward)": AlexNet(num_classes=10)}
    m = AlexNet(num_classes=10)
    m.features[2] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # the same function, per window
    m.features[6] = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # (though not per tower)
    variants["torch.nn.LocalResponseNorm"] = m
    m = AlexNet(num_classes=10)
    m.features[2] = m.features[6] = nn.Identity()
    variants["no LRN"] = m
    for name, model in variants.items():
        print(f"{name:45s} {images_per_second(model, args.batch_size, args.steps):6.1f} img/s")


if __name__ == "__main__":
    main()
