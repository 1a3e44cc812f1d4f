"""What splitting the two towers costs and saves: bytes exchanged and images per second per training step.

    alexnet bench towers [--batch-size 32] [--steps 3] [--json]

Three ways to run one SGD step of the paper network on a global batch of B images, with the same
cores or devices in all:
  single          one process, the whole network
  data-parallel   2 processes (DDP), each the whole network on B/2 images; gradients all-reduced
  towers          2 processes (alexnet.parallel), each one tower on all B images; activations exchanged
Each launches its own processes (torchrun --standalone for the two-process ones); synthetic images,
bf16 autocast and channels_last where the hardware has bf16, as `alexnet train` does; one warm-up step,
then the median of --steps timed steps. Bytes are computed (parallel.exchange_bytes, and 4 bytes for
each of the 60,965,224 gradients) and measured: the towers' exchanges count what passes through
them, and DDP's buckets are counted by a communication hook.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from alexnet.bench.fits import TRAIN, check_fits, is_out_of_memory, need_bytes, too_big
from alexnet.cores import usable_cores
from alexnet.errors import UserError
from alexnet.machine import describe, one_line

PARAMS = 60_965_224
MODES = ("single", "data-parallel", "towers")


def _worker(mode: str, batch: int, steps: int, out: Path) -> None:
    """One process of one mode (under torchrun for the two-process modes); rank 0 writes ``out``."""
    from alexnet import distributed
    from alexnet.memory import reuse_freed_memory

    reuse_freed_memory()   # what every `alexnet` command does, so the modes are timed as train runs them
    dist = distributed.setup("auto")
    try:
        # In a function of its own: its DDP is gone by the teardown (distributed.teardown says why).
        _measure(dist, mode, batch, steps, out)
    finally:
        distributed.teardown(dist)


def _measure(dist, mode: str, batch: int, steps: int, out: Path) -> None:
    from alexnet import distributed, parallel
    from alexnet.bench.timing import median_seconds
    from alexnet.bench.train import paper_step
    from alexnet.model import AlexNet
    from alexnet.precision import autocast_dtype
    from alexnet.precision import name as precision_name

    device, dtype = dist.device, autocast_dtype("auto", dist.device)

    def make() -> AlexNet:
        return AlexNet("paper", init="kaiming")

    grad_bytes = [0]

    def ddp(net):   # wraps the model after it took its channels_last layout, as alexnet train does
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

        def counted(state, bucket):
            grad_bytes[0] += bucket.buffer().nbytes
            return allreduce_hook(state, bucket)

        wrapped.register_comm_hook(None, counted)
        return wrapped

    if mode == "towers":   # each tower sees its replica's whole batch
        towers = parallel.plan(dist)
        model = parallel.build(make, 0, towers)
        train_step = paper_step(batch, device, dtype, model=model, seed=dist.rank // 2, pair=towers.pair)
    else:
        torch.manual_seed(0)
        model = make()
        train_step = paper_step(batch // dist.world, device, dtype, model=model, seed=dist.rank,
                                net_of=ddp if dist.active else None)

    def step() -> None:
        train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: first-call allocations, DDP's bucket rebuild
    distributed.barrier(dist)
    parallel.TRAFFIC.reset()
    grad_bytes[0] = 0
    # Each process's median; the step took as long as its slowest process.
    median = median_seconds(step, steps, warmup=0)
    median = float(distributed.all_max(dist, torch.tensor([median], dtype=torch.float64))[0])
    held = sum(p.numel() for p in model.parameters())
    if dist.main:
        out.write_text(json.dumps({
            "mode": mode, "processes": dist.world, "device": device.type, "precision": precision_name(dtype),
            "batch_size": batch, "seconds_per_step": median, "images_per_sec": batch / median,
            "params_per_process": held,
            "bytes_per_step": {"towers_forward": parallel.TRAFFIC.forward // steps,
                               "towers_backward": parallel.TRAFFIC.backward // steps,
                               "towers": parallel.TRAFFIC.total // steps,
                               "gradients_all_reduced": grad_bytes[0] // steps},
            # Moving bytes and waiting for the other tower (on CUDA: only launching the collectives).
            "exchange_seconds_per_step": parallel.TRAFFIC.seconds / steps,
        }))


def _launch(mode: str, batch: int, steps: int, folder: Path, cores: int) -> dict:
    out = folder / f"{mode}.json"
    procs = 1 if mode == "single" else 2
    args = ["-m", "alexnet.bench.towers", "--worker", mode, "--batch-size", str(batch), "--steps", str(steps),
            "--out", str(out)]
    if procs > 1:
        # Its log folder in ours, so that it goes with it (torchrun's default is a new one in /tmp every run).
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                f"--log-dir={folder / mode}", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // procs)))
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0 and is_out_of_memory(r.stderr):
        raise too_big(batch, need_bytes(batch, TRAIN))   # one line, not the child's traceback
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"bench towers: {mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def bench_towers(batch_size: int = 32, steps: int = 3) -> dict:
    """Bytes exchanged per step (computed and measured) and img/s: single device, 2-process data
    parallel, 2-process towers, at a global batch of ``batch_size``."""
    from alexnet.parallel import exchange_bytes

    if batch_size < 2 or batch_size % 2:
        raise UserError(f"--batch-size must be even for bench towers (data parallel splits it over 2 processes), "
                        f"got {batch_size}")
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        raise UserError("bench towers needs two devices for its two-process runs: 2 GPUs, or a machine "
                           "without CUDA (then CPU cores)")
    if not torch.cuda.is_available():   # the single process holds the whole batch (on GPUs, said by _launch)
        check_fits(batch_size, TRAIN, torch.device("cpu"))
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-towers-") as folder:
        measured = {mode: _launch(mode, batch_size, steps, Path(folder), cores) for mode in MODES}
    element = 2 if measured["towers"]["precision"] in ("bf16", "fp16") else 4
    computed = {
        "towers": exchange_bytes(batch_size, 1000, element)["total"],
        "towers_fp32": exchange_bytes(batch_size, 1000, 4)["total"],
        "towers_per_image": exchange_bytes(1, 1000, element)["total"],
        "gradients_all_reduced": PARAMS * 4,
    }
    # Above this global batch, the towers exchange more bytes per step than data parallelism's all-reduce.
    computed["break_even_batch"] = computed["gradients_all_reduced"] / computed["towers_per_image"]
    # In `alexnet bench`'s terms: the towers against plain data parallelism on the same processes.
    ours, baseline = measured["towers"]["images_per_sec"], measured["data-parallel"]["images_per_sec"]
    return {"benchmark": "towers", "ours": ours, "baseline": baseline, "ratio": ours / baseline,
            "batch_size": batch_size, "steps": steps, "cores": cores, "computed": computed, "measured": measured,
            "machine": describe(torch.device(measured["single"]["device"]), measured["towers"]["precision"])}


def format_report(r: dict) -> str:
    m, c = r["measured"], r["computed"]
    prec = m["towers"]["precision"]
    mb = 1e6
    lines = [f"AlexNet (paper) training step, global batch {r['batch_size']}, {m['single']['device']}, {prec}, "
             f"median of {r['steps']} steps",
             f"{'':15} {'processes':>9} {'params/process':>15} {'img/s':>7} {'MB sent per process per step':>30}"]
    sent = {"single": "0",
            "data-parallel": f"{m['data-parallel']['bytes_per_step']['gradients_all_reduced'] / mb:.1f} (gradients)",
            "towers": f"{m['towers']['bytes_per_step']['towers'] / mb:.1f} (activations)"}
    for mode in MODES:
        lines.append(f"{mode:15} {m[mode]['processes']:>9} {m[mode]['params_per_process']:>15,} "
                     f"{m[mode]['images_per_sec']:>7.1f} {sent[mode]:>30}")
    lines += [f"computed: towers {c['towers'] / mb:.1f} MB per step in {prec} ({c['towers_fp32'] / mb:.1f} MB in fp32; "
              f"{c['towers_per_image']:,} bytes per image), data parallel {c['gradients_all_reduced'] / mb:.1f} MB "
              f"(60,965,224 fp32 gradients)",
              f"the towers exchange fewer bytes than data parallelism below a global batch of "
              f"{c['break_even_batch']:.0f} images",
              f"on: {one_line(r['machine'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet.bench.towers", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default: 32)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default: 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.batch_size, args.steps, args.out)
        return 0
    report = bench_towers(args.batch_size, args.steps)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
