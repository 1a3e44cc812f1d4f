"""The `alexnet` command: parse argv, call the library, print. Nothing else lives here.

Every subcommand has --help. Bad input (an unknown choice, a non-positive count, a missing path, or a
UserError raised by the library) ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from alexnet.choices import (CALIBRATION_IMAGES, DEFAULT_LAYER, EXPORT_FORMATS, GPU_SECTIONS, LRN_NAMES, QUALITY,
                             SCALES, SMALL, VARIANTS, device_setting)
from alexnet.errors import CutShort, Stopped, UserError, one_line, printable
from alexnet.orphans import signal_name, stop_with_torchrun_agent

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse's default prints the whole usage first)."""

    def error(self, message: str):
        _say_error(f"{self.prog}: error: {message} (see {self.prog} --help)")
        self.exit(EXIT_USAGE)


# ---- argument types: each rejects bad values with a message argparse turns into one line ----

# Every count reaches torch, NumPy or itertools, which take signed 64-bit integers: past this one a flag
# ended in their TypeError or ValueError, not in a line naming it.
MAX_INT = 2**63 - 1


def positive_int(text: str) -> int:
    return _at_most(_positive(text), MAX_INT, "2^63 - 1")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _at_most(value: int, most: int, what: str, least: int = 1) -> int:
    if value > most:
        raise argparse.ArgumentTypeError(f"expected an integer from {least} to {most:,} ({what}), got {value:,}")
    return value


# summary builds the network without memory (the meta device), but a tensor's bytes must still be counted in
# 64 bits: fc8's 4096 x N float32 weights, and conv1's float32 output (the largest activation: 96 maps at a
# quarter of the input's side, stride 4 over an 11-pixel kernel), bound what it can build.
MAX_CLASSES = MAX_INT // (4096 * 4)
MAX_INPUT_SIZE = 4 * (math.isqrt(MAX_INT // (96 * 4)) - 1) + 11


def class_count(text: str) -> int:
    return _at_most(_positive(text), MAX_CLASSES, "fc8's 4096 x N weights must be a tensor torch can size")


def input_side(text: str) -> int:
    return _at_most(_positive(text), MAX_INPUT_SIZE, "conv1's output for it must be a tensor torch can size")


def workers_count(text: str) -> int:
    return _few_enough_workers(_non_negative_int(text), 0)


def positive_workers_count(text: str) -> int:
    return _few_enough_workers(positive_int(text), 1)


def _few_enough_workers(value: int, least: int) -> int:
    from alexnet.cores import most_workers

    return _at_most(value, most_workers(), "4 per CPU core: thousands of processes, each with its own buffers, "
                    "would fill the memory first", least)


def view_kind(text: str) -> int | str:
    """--views: 1 and 10 crops as numbers, "dense" as itself."""
    if text in ("1", "10", "dense"):
        return text if text == "dense" else int(text)
    raise argparse.ArgumentTypeError(f"expected 1, 10 or dense, got {text!r}")


def _add_views(p: argparse.ArgumentParser) -> None:
    """--views (and its old name --crops) and --scales, shared by evaluate and predict."""
    p.add_argument("--views", "--crops", dest="crops", type=view_kind, default=1, metavar="{1,10,dense}",
                   help="1: the centre crop (default); 10: four corners and centre, and their mirror images; "
                        "dense: the whole image at each --scales and its mirror, through the network made "
                        "fully convolutional, the softmax averaged over every position (--crops: its old name)")
    p.add_argument("--scales", default=None, metavar="S,S,...",
                   help=f"with --views dense: shorter sides to scale each image to (default: "
                        f"{','.join(map(str, SCALES))})")


def _scales(args):
    if args.scales is not None and args.crops != "dense":
        raise UserError("--scales is for --views dense")
    return SCALES if args.scales is None else args.scales


def nonempty(text: str) -> str:
    """A path as given; an empty one (an unset shell variable) is refused, not read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); give a path")
    return text


def path_arg(text: str) -> Path:
    return Path(nonempty(text)).expanduser()


def existing_path(text: str) -> Path:
    path = path_arg(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N: every command takes the same settings (alexnet.device)."""
    try:
        return device_setting(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DEVICE_METAVAR = "{auto,cpu,cuda,cuda:N}"


# ---- subcommands ----

def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    """The --checkpoint every command that uses a trained network takes, with one meaning everywhere."""
    p.add_argument("--checkpoint", required=True, type=existing_path,
                   help="a training checkpoint (.pt) or weights exported as safetensors")


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="per-layer output shapes, parameters and multiply-adds",
                       description="Per-layer output shape, parameters and multiply-adds of the network, "
                                   "counted from the modules, with totals.")
    p.add_argument("--variant", choices=VARIANTS, default="paper",
                   help="paper: the 2012 network (227x227, LRN, two towers); owt: torchvision's (default: paper)")
    p.add_argument("--num-classes", type=class_count, default=1000, help="outputs of fc8 (default: 1000)")
    p.add_argument("--lrn", choices=LRN_NAMES, default="paper",
                   help="LRN convention of the paper variant (default: paper)")
    p.add_argument("--input-size", type=input_side, default=None,
                   help="input height and width (default: 227 for paper, 224 for owt)")
    p.add_argument("--json", action="store_true",
                   help='print {"layers": [...], "params": N, "macs": N, ...} instead of a table')
    p.set_defaults(run=_run_summary)


def _run_summary(args) -> int:
    import torch

    from alexnet.config import refuse_lrn_for_owt
    from alexnet.model import AlexNet
    from alexnet.summary import format_summary, summarize

    # The meta device gives every shape without allocating or initialising 60M parameters.
    refuse_lrn_for_owt(args.variant, args.lrn)
    with torch.device("meta"):
        model = AlexNet(args.variant, num_classes=args.num_classes, lrn=args.lrn)
    try:
        summary = summarize(model, input_size=args.input_size)
    except (ValueError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"input size {args.input_size} does not fit the {args.variant} network: {first_line}") from None
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _add_demo_data(sub) -> None:
    p = sub.add_parser("demo-data", help="write the bundled demo set (generated images, no download)",
                       description="Write the bundled demo set as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg "
                                   "(plus DIR/classes.txt): the same bytes for the same seed.")
    p.add_argument("--out", required=True, type=path_arg, help="folder to write (must be empty or a demo set)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args) -> int:
    from alexnet.data.demo import write_demo_set

    out = write_demo_set(args.out, seed=args.seed)
    print(out)
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into shards of fixed images, raw or JPEG (fast reads)",
                       description="Decode every image of DATA/train and DATA/val once (shorter side 256, centre "
                                   "256x256), in parallel, into uint8 shards in PREP, with the mean image and RGB "
                                   "PCA. PREP is accepted wherever --data DIR is. Interrupted, it resumes where it "
                                   "stopped when run again. --store jpeg keeps each 256x256 image as a JPEG "
                                   "instead: about 11x smaller (ImageNet's training set in about 23 GB instead "
                                   "of 252 GB), decoded again in the loader's workers, or on the GPU.")
    p.add_argument("--data", required=True, type=existing_path, help="DATA with train/<class>/* and val/<class>/*")
    p.add_argument("--out", required=True, type=path_arg, help="PREP folder to write (new, or an unfinished PREP)")
    p.add_argument("--workers", type=workers_count, default=None,
                   help="decoding processes (default: the CPU count, at most 8)")
    p.add_argument("--store", choices=("raw", "jpeg"), default="raw",
                   help="raw: the pixels exactly, 196,608 bytes an image (default); jpeg: a JPEG of them, about "
                        "18 KB, decoded each epoch")
    p.add_argument("--quality", type=positive_int, default=None, metavar="Q",
                   help=f"with --store jpeg: JPEG quality, 1-100 (default: {QUALITY}, on average 3.1 levels of "
                        f"255 from the raw pixels)")
    _add_small(p, "upscale", "recorded in the store; a run with another setting is refused")
    p.set_defaults(run=_run_prepare)


def _add_small(p: argparse.ArgumentParser, default: str | None, recorded: str) -> None:
    p.add_argument("--small", choices=SMALL, default=default,
                   help="an image whose shorter side is under 256: upscale (the paper), or pad: placed unscaled at "
                        "the centre of a 256x256 canvas of ImageNet's mean colour (default: "
                        f"{default or 'what the network was trained with'}; {recorded})")


def _run_prepare(args) -> int:
    from alexnet.data.prepare import prepare

    meta = prepare(args.data, args.out, workers=args.workers, store=args.store, quality=args.quality,
                   small=args.small)
    counts = ", ".join(f"{name} {s['images']} images ({s['skipped']} unreadable left out)"
                       for name, s in meta["splits"].items())
    store = f" (jpeg store, quality {meta['quality']})" if meta["store"] == "jpeg" else ""
    print(f"{args.out}{store}: {counts}; use --data {shlex.quote(str(args.out))}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed side by side with the torchvision/pytorch-examples baseline",
                       description="Measure this project against the usual PyTorch baseline in one run, one "
                                   "after the other (alternating), and print both and their ratio. data: the "
                                   "prepared pipeline (and the JPEG path) vs ImageFolder+PIL+transforms on "
                                   "generated ImageNet-sized JPEGs; train: one SGD step of the paper network "
                                   "with our settings vs torchvision alexnet in fp32, and FLOP utilisation; "
                                   "infer: batch-1 latency and batch throughput; towers: the two-tower split "
                                   "vs one device and data parallelism; gpu: every GPU figure in one call "
                                   "(train at several batch sizes, eager and compiled, against torchvision in "
                                   "fp32 and bf16; the LRN's share; inference; data from both stores), written "
                                   "to --out as JSON.")
    p.add_argument("what", nargs="+", choices=("data", "train", "infer", "towers", "gpu", "all"), metavar="WHAT",
                   help="data, train, infer, towers, gpu, or all (data, train and infer)")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per step: data, train, infer, towers (default: 64)")
    p.add_argument("--steps", type=positive_int,
                   help="timed repeats, epochs for data; the median is reported (default: 5; data: 3; gpu: 10, "
                        "and 3 epochs for its data section)")
    p.add_argument("--images", type=positive_int,
                   help="generated JPEGs for `data` and `gpu` (default: 512, gpu: 2048)")
    p.add_argument("--workers", type=positive_workers_count,
                   help="DataLoader workers for the JPEG pipelines (default: 2; gpu: prepare's, one per core up to 16)")
    p.add_argument("--device", type=device_name, metavar=DEVICE_METAVAR,
                   help="train, infer, gpu: auto (CUDA when present, else CPU) or a device (default: auto)")
    p.add_argument("--compile", action="store_true", help="train: torch.compile our network")
    p.add_argument("--json", action="store_true", help="one JSON object per benchmark")
    p.add_argument("--batches", type=_batch_list, metavar="B,B,...",
                   help="gpu: the training batch sizes (default: 128,256,512)")
    p.add_argument("--out", type=path_arg,
                   help="gpu: the JSON file, written after each section (default: bench-gpu.json)")
    p.add_argument("--sections", type=_section_list, metavar="S,S,...",
                   help="gpu: only these of train, lrn, infer, data (default: all)")
    p.add_argument("--compile-backend", metavar="NAME",
                   help="gpu: torch.compile's backend for the compiled rows (default: inductor)")
    p.set_defaults(run=_run_bench)


def _section_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(","))
    unknown = [v for v in values if v not in GPU_SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section {unknown[0]!r}; choose from "
                                         f"{', '.join(GPU_SECTIONS[1:])}")
    return values


def _batch_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


# The benchmarks that read each flag (--steps and --json: all): a flag given to none of those named is
# refused, not ignored, so that a script never believes a report was saved or a device was used.
BENCH_FLAG_USERS = {"batch_size": ("data", "train", "infer", "towers"), "images": ("data", "gpu"),
                    "workers": ("data", "gpu"), "device": ("train", "infer", "gpu"), "compile": ("train",),
                    "batches": ("gpu",), "out": ("gpu",), "sections": ("gpu",), "compile_backend": ("gpu",)}


def _run_bench(args) -> int:
    from alexnet.bench import run

    names = list(dict.fromkeys(n for w in args.what for n in (("data", "train", "infer") if w == "all" else (w,))))
    for dest, users in BENCH_FLAG_USERS.items():
        if getattr(args, dest) not in (None, False) and not set(users) & set(names):
            flag = "--" + dest.replace("_", "-")
            hint = " (gpu's batch sizes are --batches)" if dest == "batch_size" and "gpu" in names else ""
            raise UserError(f"{flag} is read by bench {', '.join(users)} only, not by {', '.join(names)}{hint}")
    steps, batch, device = args.steps or 5, args.batch_size or 64, args.device or "auto"
    options = {"data": dict(images=args.images or 512, batch_size=batch, workers=args.workers or 2,
                            steps=args.steps or 3),   # each step an epoch of every pipeline
               "train": dict(batch_size=batch, steps=steps, device=device, compile=args.compile),
               "infer": dict(batch_size=batch, steps=steps, device=device),
               "towers": dict(batch_size=batch, steps=steps),
               "gpu": dict(device=device, batches=args.batches or (128, 256, 512), steps=args.steps or 10,
                           images=args.images or 2048, workers=args.workers, out=args.out or Path("bench-gpu.json"),
                           compile_backend=args.compile_backend or "inductor",
                           **({"sections": args.sections} if args.sections else {}))}
    for name in names:
        result = run(name, **options[name])
        if args.json:
            print(json.dumps(result), flush=True)
        elif name in ("towers", "gpu"):
            from importlib import import_module

            print(import_module(f"alexnet.bench.{name}").format_report(result), flush=True)
        else:
            print(_bench_line(result), flush=True)
    return 0


def _bench_line(r: dict) -> str:
    from alexnet.machine import one_line

    line = (f"{r['benchmark']:6s} ours {r['ours']:9.1f} img/s   baseline {r['baseline']:9.1f} img/s   "
            f"ratio {r['ratio']:5.2f}x")
    if "per_core_ratio" in r:
        cores = r.get("worker_cores", r["workers"])
        line += (f"   per core: ours {r['per_core']['ours']:.0f}, JPEG path {r['per_core']['jpeg_path']:.0f}, "
                 f"baseline {r['per_core']['baseline']:.0f} img/s ({r['per_core_ratio']:.1f}x; the workers' "
                 f"figures over {cores} core{'s' if cores > 1 else ''})")
    if "jpeg_store" in r:
        b = r["bytes_per_image"]
        line += (f"\n       jpeg store {r['jpeg_store']:9.1f} img/s on 1 core ({r['jpeg_store_ratio']:.1f}x the "
                 f"baseline per core), {b['jpeg']:,.0f} bytes an image against {b['raw']:,.0f} raw "
                 f"({b['raw'] / b['jpeg']:.1f}x smaller, quality {r['jpeg_quality']})")
    if "baseline_same_process" in r:   # the baseline's own process is what the ratio uses; README says why
        line += f"   baseline in this process {r['baseline_same_process']:.1f} img/s"
    if "utilisation" in r:
        line += f"   utilisation {r['utilisation']:.0%} of {r['peak_tflops'] * 1e3:.0f} GFLOP/s"
    if "latency_ms" in r:
        line += (f"   batch-1 latency {r['latency_ms']['ours']:.1f} ms vs {r['latency_ms']['baseline']:.1f} ms "
                 f"({r['latency_ratio']:.2f}x)")
    if "int8" in r:
        q = r["int8"]
        line += (f"\n       int8 {q['ours']:9.1f} img/s   baseline {q['baseline']:9.1f} img/s   "
                 f"ratio {q['ratio']:5.2f}x   batch-1 latency {q['latency_ms']['ours']:.1f} ms vs "
                 f"{q['latency_ms']['baseline']:.1f} ms ({q['latency_ratio']:.2f}x)")
    return (line + f"\n       ours: {r.get('ours_settings', '')}; baseline: {r.get('baseline_settings', '')}"
            + (f"\n       int8: {r['int8']['settings']}" if "int8" in r else "")
            + (f"\n       jpeg store: {r['jpeg_store_settings']}" if "jpeg_store" in r else "")
            + f"\n       on: {one_line(r['machine'])}")


def _non_negative_int(text: str) -> int:
    return _at_most(_non_negative(text), MAX_INT, "2^63 - 1", 0)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _finite_float(text: str, expected: str) -> float:
    """``text`` as a float, nan and inf refused: no setting means them, and either would poison a run."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text, "a non-negative number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _top1(text: str) -> float:
    value = _finite_float(text, "a number from 0 to 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


# The flag type for each (kind, type) of a TrainConfig field: its `kind` (config.py) names the constraint.
# Its integers have no bound here: train takes any (an epoch count past 2^63 trains), and refuses those it
# cannot use saying why (--seed past 2^63, --workers past 4 per core, a batch larger than the data).
_KIND_TYPES = {
    ("count", "int"): _positive,
    ("non-negative", "int"): _non_negative,
    ("non-negative", "float"): _non_negative_float,
    ("positive", "float"): _positive_float,
    ("fraction", "float"): _fraction,
    (None, "str"): str,
}


def _flag_type(field):
    if field.name == "data":
        return existing_path
    if field.name == "device":
        return device_name
    if field.name == "out":   # `--out=~/runs/x`, where the shell leaves ~ as it is; an empty one stays empty
        return os.path.expanduser
    return _KIND_TYPES[field.metadata["kind"], field.type.replace(" | None", "")]


def _add_train(sub) -> None:
    import dataclasses

    from alexnet.config import TrainConfig

    p = sub.add_parser("train", help="train AlexNet (the paper's recipe, or a preset); resumable; torchrun for DDP",
                       description="Train AlexNet on DATA/train, validating on DATA/val each epoch. Flags override "
                                   "the preset. Under torchrun it runs data-parallel (DDP). The paper preset is "
                                   "ImageNet's recipe and stays at chance or diverges on a small folder of your own "
                                   "(thousands of images): start such a run from --preset demo.",
                       epilog="examples:  alexnet train --preset demo --out runs/demo;  "
                              "alexnet train --preset demo --data my-images --out runs/mine;  "
                              "alexnet train --preset demo --data my-images --out runs/mine "
                              "--weights runs/demo/best.pt (fine-tuning);  "
                              "alexnet train --data /imagenet --out runs/paper;  "
                              "torchrun --nproc_per_node=2 -m alexnet train --data DIR --out RUN;  "
                              "alexnet train --out RUN --resume")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
            continue
        p.add_argument(flag, type=_flag_type(f), choices=meta["choices"], default=None,
                       metavar=None if meta["choices"] else DEVICE_METAVAR if f.name == "device" else f.name.upper(),
                       help=meta["help"] + ("" if f.default is None else f" (paper default: {f.default})"))
    p.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto|RUN",
                   help="continue the run in --out from its last.pt (--resume RUN or RUN/last.pt also name the "
                        "run); --resume auto: continue it if it holds one, else start it (for jobs a scheduler "
                        "requeues; a process torchrun restarts does this by itself). A finished run is extended "
                        "by resuming it with a larger --epochs")
    p.add_argument("--require-top1", type=_top1, default=None, metavar="FRACTION",
                   help="exit with status 1 if the best val top-1 ends below this (e.g. 0.9): a run that doubles as a check")
    p.set_defaults(run=_run_train)


def _resume_mode(text: str) -> str | Path:
    """"auto", or the run to continue named as pytorch/examples users name it: its last.pt, or its folder."""
    if text == "auto":
        return text
    path = Path(text).expanduser()
    if path.is_dir() and (path / "last.pt").is_file():
        return path
    if path.name == "last.pt" and path.is_file():
        return path.parent
    raise argparse.ArgumentTypeError(f"expected nothing, 'auto', or a run folder holding last.pt, got {text!r}")


def _run_train(args) -> int:
    import dataclasses

    from alexnet.config import TrainConfig, refuse_settings_that_do_nothing, resolve
    from alexnet.train import train

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    for name in ("data", "weights"):   # absolute in config.yaml: a resume from another folder finds the same
        if name in given:
            if not str(given[name]).strip():   # Path("") is the current folder
                raise UserError(f"--{name} is empty; give a {'folder' if name == 'data' else 'file'}")
            given[name] = str(Path(given[name]).expanduser().resolve())
    resume = args.resume
    if isinstance(resume, Path):   # --resume RUN: the run is that folder, which --out may also name
        if "out" in given and Path(given["out"]).expanduser().resolve() != resume.resolve():
            raise UserError(f"--resume names {resume} but --out names {given['out']}: name the run once")
        given["out"], resume = str(resume), True
    # --resume auto continues RUN only where it holds a checkpoint, as train decides; else it is a fresh run.
    resuming = resume is True or (resume == "auto" and (Path(given.get("out", TrainConfig.out)) / "last.pt").exists())
    # The preset stays in `given`: a resume refuses another one, as it refuses any other setting's change.
    config = resolve(given.get("preset", "paper"), {k: v for k, v in given.items() if k != "preset"}, resuming)
    refuse_settings_that_do_nothing(config, given, resuming)   # a flag given with the preset's value too
    result = train(config, resume=resume, given=given)
    if args.require_top1 is not None and result.get("best_top1", -1) < args.require_top1:
        print(f"alexnet train: error: best val top-1 {100 * result['best_top1']:.1f}% is below the required "
              f"{100 * args.require_top1:.1f}%", file=sys.stderr)
        return 1
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy of a trained network on DATA/val (1, 10 or dense views)",
                       description="Top-1 and top-5 accuracy (and error, as the paper reports it) of the network "
                                   "in --checkpoint on DATA/val/<class>/*. With --views 10 each image's class "
                                   "probabilities are the mean softmax over the paper's 10 views; with --views "
                                   "dense, over every position of the fully-convolutional network's score maps of "
                                   "the whole image and its mirror at each of --scales (read from the source image "
                                   "files: a prepared store keeps only their centre 256x256). Under torchrun each "
                                   "process evaluates a shard and the numbers are the single-process ones.",
                       epilog="examples:  alexnet evaluate --checkpoint runs/demo/best.pt --data DIR --views 10;  "
                              "alexnet evaluate --checkpoint F --data DIR --views dense --scales 256,384;  "
                              "torchrun --nproc_per_node=8 -m alexnet evaluate --checkpoint F --data /imagenet")
    _add_checkpoint(p)
    p.add_argument("--data", required=True, type=existing_path, help="dataset folder holding val/<class>/<images>")
    _add_views(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch in each process (default: 64)")
    p.add_argument("--workers", type=workers_count, default=None,
                   help="data-loading processes (default: where images are decoded for a GPU, one per core less "
                        "one, up to 16; else 2)")
    p.add_argument("--device", type=device_name, default="auto", metavar=DEVICE_METAVAR,
                   help="auto: CUDA when present, else CPU (with --precision int8: the CPU)")
    _add_precision(p, "calibrated on --calibration-images of DATA/train (never on val), centre crops")
    _add_small(p, None, "a prepared store made with the other is refused")
    p.add_argument("--json", action="store_true",
                   help='print {"top1", "top5", "loss", "images", "crops", "skipped", "seconds"} (fractions; '
                        '"crops": 1, 10 or "dense"; "scales" too with --views dense, "calibrated", the number of '
                        'calibration images, with --precision int8) instead of text')
    p.set_defaults(run=_run_evaluate)


def _add_precision(p: argparse.ArgumentParser, calibration: str) -> None:
    """--precision of evaluate and predict (inference: fp32, autocast, or int8) and int8's calibration size."""
    from alexnet.config import INFERENCE_PRECISIONS

    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="fp32",
                   help="fp32 (default) or autocast to bf16/fp16; auto: bf16 where the hardware has it; int8: "
                        f"the network quantized after training (CPU only, about 2x fp32's speed on AVX2 CPUs), "
                        f"{calibration}")
    p.add_argument("--calibration-images", type=positive_int, default=None, metavar="N",
                   help=f"with --precision int8: images whose activations set the int8 ranges, spread evenly "
                        f"over the calibration set (default: {CALIBRATION_IMAGES})")


def _calibration_images(args) -> int:
    if args.calibration_images is None:
        return CALIBRATION_IMAGES
    if args.precision != "int8":
        raise UserError("--calibration-images is for --precision int8")
    return args.calibration_images


def _run_evaluate(args) -> int:
    from alexnet.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(args.checkpoint, args.data, crops=args.crops, batch_size=args.batch_size,
                            workers=args.workers, device=args.device, precision=args.precision,
                            calibration_images=_calibration_images(args), scales=_scales(args), small=args.small)
    if m is None:  # not rank 0: rank 0 reports for everyone
        return 0
    if args.json:
        print(json.dumps({k: m[k] for k in ("top1", "top5", "loss", "images", "crops", "scales", "skipped",
                                             "seconds", "calibrated") if k in m}))
        return 0
    views = {1: "1 view (centre crop)", 10: "10 views"}.get(m["crops"]) or \
        f"dense at scale{'s' if len(m['scales']) > 1 else ''} {','.join(map(str, m['scales']))}"
    skipped = f", {m['skipped']} unreadable skipped" if m["skipped"] else ""
    speed = f", {1000 * m['seconds'] / m['images']:.1f} ms per image" if m["images"] else ""
    if "calibrated" in m:
        views += f", int8 (calibrated on {m['calibrated']:,} training images)"
    trivial = (f"   (the network knows {m['classes']} classes: all of them are in its top 5)"
               if m["classes"] <= 5 else "")
    print(f"{args.checkpoint} on {args.data} (val): {m['images']} images{skipped}, {views}{speed}\n"
          f"top-1 accuracy {100 * m['top1']:6.2f}%   error {100 * (1 - m['top1']):6.2f}%\n"
          f"top-5 accuracy {100 * m['top5']:6.2f}%   error {100 * (1 - m['top5']):6.2f}%{trivial}\n"
          f"loss {m['loss']:.4f}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images, with names and probabilities",
                       description="The most probable classes of each image (a folder stands for its image files, "
                                   "sorted), seen as in training: shorter side to 256, centre 256x256, the "
                                   "network's normalisation, then the centre crop or the paper's 10 views (or, "
                                   "with --views dense, the whole image at each of --scales). An "
                                   "unreadable file gets an error line on stderr, the others are still predicted, "
                                   "and the exit status is 1 (2 when none can be read).",
                       epilog="example:  alexnet predict --checkpoint runs/demo/best.pt photo.jpg photos/ --topk 3")
    _add_checkpoint(p)
    p.add_argument("images", nargs="+", type=nonempty, metavar="IMAGE_OR_DIR", help="image files or folders of them")
    p.add_argument("--topk", type=positive_int, default=5, help="classes per image (default: 5)")
    _add_views(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", type=device_name, default="auto", metavar=DEVICE_METAVAR,
                   help="auto: CUDA when present, else CPU (with --precision int8: the CPU)")
    _add_precision(p, "calibrated on --calibrate, else on the images being predicted (so that then an image's "
                      "probabilities depend a little on the others given with it)")
    _add_small(p, None, "given, it overrides the network's")
    p.add_argument("--calibrate", action="append", type=existing_path, default=None, metavar="IMAGE_OR_DIR",
                   help="with --precision int8: images (a folder stands for its image files) like those to be "
                        "predicted, e.g. some of the training set, to calibrate on; may be repeated")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"path", "predictions": [{"class", "name", "probability"}]}')
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from alexnet.predict import as_dict, expand, format_prediction, predict, setup
    from alexnet.weights import load_model

    if args.calibrate and args.precision != "int8":
        raise UserError("--calibrate is for --precision int8")
    if args.crops == "dense" and args.precision == "int8":
        raise UserError("--views dense needs the float network (its fc layers become convolutions); "
                        "use --precision fp32, bf16 or auto")
    scales = _scales(args)
    loaded = load_model(args.checkpoint)
    loaded.small = args.small or loaded.small
    paths = expand(args.images)
    device, dtype, model = setup(loaded, args.device, args.precision, expand(args.calibrate or []) or paths,
                                 _calibration_images(args), args.batch_size)
    failed = n = shown = 0
    for n, result in enumerate(predict(loaded, paths, topk=args.topk, crops=args.crops, batch_size=args.batch_size,
                                       device=device, dtype=dtype, model=model, scales=scales)):
        if result.error:
            failed += 1
            print(f"alexnet predict: error: {printable(str(result.path))}: {result.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps(as_dict(loaded, result)), flush=True)
        else:   # a blank line between images' blocks: none before the first shown
            print(("\n" if shown else "") + format_prediction(loaded, result), flush=True)
            shown += 1
    if failed and failed == n + 1:   # not one image read: nothing was predicted, as for a wrong path
        return EXIT_USAGE
    return 1 if failed else 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a network as safetensors (with its meaning) or ONNX",
                       description="Write the network in --checkpoint to --out. safetensors: the weights plus "
                                   "metadata (variant, classes and names, preprocessing with its mean/std tensors, "
                                   "measured accuracy); every --checkpoint flag accepts the result. onnx: the "
                                   "network on normalised (N, 3, crop, crop) input, classes and preprocessing in "
                                   "its metadata (needs the onnx and onnxscript packages); with --image-input, "
                                   "the network behind predict's own preprocessing, on uint8 images.",
                       epilog="example:  alexnet export --checkpoint runs/demo/best.pt --format onnx --out demo.onnx "
                              "--image-input")
    _add_checkpoint(p)
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                   help="file format (default: from the suffix of --out)")
    p.add_argument("--out", required=True, type=path_arg, help="file to write")
    p.add_argument("--image-input", action="store_true",
                   help="onnx only: take uint8 RGB images (N, 256, 256, 3), NHWC, already resized so the shorter "
                        "side is 256 (bilinear) and centre-cropped to 256x256; the graph does the rest of "
                        "predict's 1-view path (centre crop, mean image or mean/std, layout) and outputs logits "
                        "and probabilities. Default: normalised float (N, 3, crop, crop) input, logits only")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from alexnet.export import export, is_onnx_file
    from alexnet.files import replaceable
    from alexnet.weights import is_weights_file

    fmt = args.format or args.out.suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"cannot tell the format from {args.out}; add --format "
                        f"{' or --format '.join(EXPORT_FORMATS)}")
    # An earlier export of the same format may be replaced (export checks again when it writes); said here
    # before the network is loaded.
    replaceable(args.out, is_weights_file if fmt == "safetensors" else is_onnx_file,
                "weights this project exported" if fmt == "safetensors" else "an ONNX network from torch.onnx")
    loaded = export(args.checkpoint, fmt, args.out, image_input=args.image_input)
    side = loaded.crop
    what = (f"uint8 256x256x3 image input, centre {side}x{side} crop and {loaded.normalization} normalization "
            f"inside" if args.image_input else f"{side}x{side} input, {loaded.normalization} normalization")
    print(f"{args.out}: {fmt}, {loaded.variant} network, {len(loaded.classes)} classes, {what}")
    return 0


def _add_import_torchvision(sub) -> None:
    p = sub.add_parser("import-torchvision", help="turn torchvision's ImageNet weights into this project's format",
                       description="Convert torchvision's AlexNet ImageNet weights (a local alexnet-owt-*.pth; "
                                   "nothing is downloaded) into safetensors with the 1000 class names and "
                                   "torchvision's preprocessing, for --checkpoint of evaluate, predict and export.",
                       epilog="example:  alexnet import-torchvision --weights ~/.cache/torch/hub/checkpoints/"
                              "alexnet-owt-7be5be79.pth --out alexnet-imagenet.safetensors "
                              "--classes /imagenet/LOC_synset_mapping.txt")
    p.add_argument("--weights", required=True, type=existing_path, help="torchvision's alexnet state_dict (.pth)")
    p.add_argument("--out", required=True, type=path_arg, help="safetensors file to write")
    p.add_argument("--classes", type=existing_path, default=None,
                   help="'<folder> <name>' per line in output order (ImageNet's LOC_synset_mapping.txt), so that "
                        "evaluate can match an ImageNet val/ tree of WordNet-id folders (default: the names)")
    p.set_defaults(run=_run_import_torchvision)


def _run_import_torchvision(args) -> int:
    from alexnet.files import replaceable
    from alexnet.weights import import_torchvision, is_weights_file, save_weights

    replaceable(args.out, is_weights_file, "weights this project exported")
    loaded = import_torchvision(args.weights, args.classes)
    save_weights(loaded, args.out)
    print(f"{args.out}: owt network, {len(loaded.classes)} classes, 224x224 input, imagenet normalization")
    return 0


# ---- pictures (alexnet viz ...) and features (alexnet features) ----

def _add_viz(sub) -> None:
    from alexnet.config import PRECISIONS

    p = sub.add_parser("viz", help="PNG pictures: learning curves, conv1 kernels, top-5 predictions, fc7 neighbours, "
                                   "score maps",
                       description="Draw a picture of a run or a trained network as a PNG file (matplotlib, no "
                                   "display needed) and print its path.",
                       epilog="examples:  alexnet viz curves --run runs/demo;  alexnet viz filters --checkpoint "
                              "runs/demo/best.pt;  alexnet viz predictions --checkpoint runs/demo/best.pt a.jpg b.jpg;  "
                              "alexnet viz neighbors --checkpoint runs/demo/best.pt --data data/demo;  "
                              "alexnet viz scoremap --checkpoint runs/demo/best.pt a.jpg")
    pictures = p.add_subparsers(title="pictures", metavar="PICTURE", dest="picture", required=True)

    c = pictures.add_parser("curves", help="loss and top-1/top-5 error against epoch, learning-rate drops marked",
                            description="Training and validation loss, and validation top-1 and top-5 error, "
                                        "against epoch from RUN/metrics.jsonl; dotted lines mark where the learning "
                                        "rate was divided. Several runs are overlaid, one colour each.")
    c.add_argument("--run", dest="runs", required=True, nargs="+", type=path_arg, metavar="RUN", help="run folder(s) of alexnet train")
    c.add_argument("--out", type=path_arg, default=None, help="PNG to write (default: RUN/curves.png of the first run)")
    c.set_defaults(run=_run_viz_curves)

    f = pictures.add_parser("filters", help="the conv1 kernels as colour tiles, tower 1 above tower 2 (paper Fig. 3)",
                            description="The conv1 kernels as 11x11 colour tiles, each scaled to its own range; for "
                                        "the paper network the 48 kernels of tower 1 fill the top rows and tower 2's "
                                        "the bottom rows, as in the paper's Figure 3.")
    _add_checkpoint(f)
    f.add_argument("--out", type=path_arg, default=None, help="PNG to write (default: filters.png beside the checkpoint)")
    f.set_defaults(run=_run_viz_filters)

    r = pictures.add_parser("predictions", help="images with their top-5 classes as bars (paper Fig. 4, left)",
                            description="Each image (a folder stands for its images) as the network sees it, with "
                                        "its top-k classes as bars; when the image's folder is named after a class, "
                                        "that class is the true one and is marked in red. An unreadable file gets "
                                        "an error line on stderr, the others are still drawn, and the exit status "
                                        "is 1 (2 when none can be read).")
    _add_checkpoint(r)
    r.add_argument("images", nargs="+", type=nonempty, metavar="IMAGE_OR_DIR", help="image files or folders of them")
    r.add_argument("--topk", type=positive_int, default=5, help="classes per image (default: 5)")
    _add_views(r)   # as predict's, so that the bars are the probabilities predict prints
    r.add_argument("--max-images", type=positive_int, default=16, help="draw at most this many images (default: 16)")
    r.add_argument("--device", type=device_name, default="auto", metavar=DEVICE_METAVAR,
                   help="auto: CUDA when present, else CPU")
    r.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), or autocast to bf16/fp16; auto: bf16 where the hardware has it")
    r.add_argument("--out", type=path_arg, default=None,
                   help="PNG to write (default: predictions.png beside the checkpoint)")
    r.set_defaults(run=_run_viz_predictions)

    n = pictures.add_parser("neighbors", help="val images and their nearest training images in fc7 space (Fig. 4, right)",
                            description="For a few val images (spread evenly over the classes), the training images "
                                        "whose activations (relu7: fc7 after its ReLU, 4096-d) are nearest in "
                                        "Euclidean distance, as in the paper's Figure 4. Features are computed in "
                                        "batches with a progress bar.")
    _add_checkpoint(n)
    n.add_argument("--data", required=True, type=existing_path, help="dataset folder holding train/ and val/")
    n.add_argument("--queries", type=positive_int, default=5, help="val images to search for (default: 5)")
    n.add_argument("--k", type=positive_int, default=6, help="neighbours per query (default: 6)")
    # A picture, not a measurement: bf16 where the hardware has it halves the time on this CPU.
    _add_feature_options(n, DEFAULT_LAYER, precision="auto")
    n.add_argument("--out", type=path_arg, default=None, help="PNG to write (default: neighbors.png beside the checkpoint)")
    n.set_defaults(run=_run_viz_neighbors)

    s = pictures.add_parser("scoremap", help="where in each image the network sees its class: the score map over it",
                            description="Each image (a folder stands for its images) scaled to --scale on its "
                                        "shorter side, the network slid over it in one pass (fully convolutional), "
                                        "and over it the probability of its top class at every position of the "
                                        "score map (stride 32). When the image's folder is named after a class that "
                                        "is not the top one, a second panel shows that true class. An unreadable "
                                        "file gets an error line on stderr, the others are still drawn, and the "
                                        "exit status is 1 (2 when none can be read).")
    _add_checkpoint(s)
    s.add_argument("images", nargs="+", type=nonempty, metavar="IMAGE_OR_DIR", help="image files or folders of them")
    s.add_argument("--scale", type=positive_int, default=384,
                   help="the image's shorter side in pixels, at least the network's input (default: 384)")
    s.add_argument("--max-images", type=positive_int, default=16, help="draw at most this many images (default: 16)")
    s.add_argument("--device", type=device_name, default="auto", metavar=DEVICE_METAVAR,
                   help="auto: CUDA when present, else CPU")
    s.add_argument("--out", type=path_arg, default=None,
                   help="PNG to write (default: scoremap.png beside the checkpoint)")
    s.set_defaults(run=_run_viz_scoremap)


def _add_feature_options(p: argparse.ArgumentParser, default_layer: str, precision: str = "fp32") -> None:
    from alexnet.config import PRECISIONS

    p.add_argument("--layer", default=default_layer,
                   help=f"layer whose output is the feature vector, by paper name (conv1 ... fc8; default: "
                        f"{default_layer}, fc7 after its ReLU)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    p.add_argument("--workers", type=workers_count, default=None,
                   help="data-loading processes (default: where images are decoded for a GPU, one per core less "
                        "one, up to 16; else 2)")
    p.add_argument("--device", type=device_name, default="auto", metavar=DEVICE_METAVAR,
                   help="auto: CUDA when present, else CPU")
    p.add_argument("--precision", choices=PRECISIONS, default=precision,
                   help=f"fp32, or autocast to bf16/fp16; auto: bf16 where the hardware has it (default: {precision})")


def _feature_kwargs(args) -> dict:
    from alexnet.device import device_and_dtype

    device, dtype = device_and_dtype(args.device, args.precision)
    return {"batch_size": args.batch_size, "workers": args.workers, "device": device, "dtype": dtype}


def _run_viz_curves(args) -> int:
    from alexnet.viz.figure import writable
    from alexnet.viz.curves import draw_curves, read_run

    runs = [read_run(path) for path in args.runs]   # every one checked before anything is drawn
    print(draw_curves(runs, writable(args.out or _run_folder(args.runs[0]) / "curves.png")))
    return 0


def _run_folder(path: Path) -> Path:
    return path.parent if path.name == "metrics.jsonl" else path


def _run_viz_filters(args) -> int:
    from alexnet.viz.figure import writable
    from alexnet.viz.filters import draw_filters
    from alexnet.weights import load_model

    out = writable(args.out or args.checkpoint.parent / "filters.png")
    print(draw_filters(load_model(args.checkpoint), out))
    return 0


def _network_and_images(args):
    """The network of --checkpoint and the images to draw (folders expanded), at most --max-images of them."""
    from alexnet.predict import expand
    from alexnet.weights import load_model

    loaded, paths = load_model(args.checkpoint), expand(args.images)
    if len(paths) > args.max_images:
        print(f"alexnet viz {args.picture}: drawing the first {args.max_images} of {len(paths)} images "
              f"(see --max-images)",
              file=sys.stderr)
        paths = paths[:args.max_images]
    return loaded, paths


def _run_viz_predictions(args) -> int:
    from alexnet.viz.figure import writable
    from alexnet.device import device_and_dtype
    from alexnet.viz.predictions import draw_predictions

    scales = _scales(args)
    device, dtype = device_and_dtype(args.device, args.precision)
    out = writable(args.out or args.checkpoint.parent / "predictions.png")
    loaded, paths = _network_and_images(args)
    out, failed = draw_predictions(loaded, paths, out,
                                   topk=args.topk, crops=args.crops, device=device, dtype=dtype, scales=scales)
    for result in failed:
        print(f"alexnet viz predictions: error: {printable(str(result.path))}: {result.error}", file=sys.stderr)
    if out is None:
        print("alexnet viz predictions: error: no readable image, nothing drawn", file=sys.stderr)
        return EXIT_USAGE
    print(out)
    return 1 if failed else 0


def _run_viz_neighbors(args) -> int:
    from alexnet.viz.figure import writable
    from alexnet.viz.neighbors import draw_neighbours, find_neighbours
    from alexnet.weights import load_model

    out = writable(args.out or args.checkpoint.parent / "neighbors.png")
    loaded = load_model(args.checkpoint)
    found, names = find_neighbours(loaded, args.data, queries=args.queries, k=args.k, layer=args.layer,
                                   **_feature_kwargs(args))
    print(draw_neighbours(found, names, out, loaded.crop, args.layer, loaded.small))
    return 0


def _run_viz_scoremap(args) -> int:
    from alexnet.viz.figure import writable
    from alexnet.device import pick_device
    from alexnet.viz.scoremap import draw_scoremaps

    out = writable(args.out or args.checkpoint.parent / "scoremap.png")
    loaded, paths = _network_and_images(args)
    out, _, failed = draw_scoremaps(loaded, paths, out,
                                    scale=args.scale, device=pick_device(args.device))
    if out is None:
        path, reason = failed[0]
        more = f" (and {len(failed) - 1} more unreadable)" if len(failed) > 1 else ""
        raise UserError(f"no image could be read, nothing drawn: {printable(str(path))}: {reason}{more}")
    for path, reason in failed:
        print(f"alexnet viz scoremap: error: {printable(str(path))}: {reason}", file=sys.stderr)
    print(out)
    return 1 if failed else 0


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="a layer's activations (fc7 by default) for every image of a split, as .npz",
                       description="The activations of one layer for every image of DATA/<split>, seen as at test "
                                   "time (centre crop, the network's normalisation), written as NumPy .npz: "
                                   "features (N, D) float32, labels (N,), paths (N,), classes, layer. Unreadable "
                                   "images are warned about and left out.",
                       epilog="example:  alexnet features --checkpoint runs/demo/best.pt --data data/demo "
                              "--split train --out train_fc7.npz")
    _add_checkpoint(p)
    p.add_argument("--data", required=True, type=existing_path, help="dataset folder holding <split>/<class>/<images>")
    p.add_argument("--split", default="val", help="which split folder (default: val)")
    p.add_argument("--out", required=True, type=path_arg, help=".npz file to write")
    _add_feature_options(p, DEFAULT_LAYER)
    p.set_defaults(run=_run_features)


def _run_features(args) -> int:
    from alexnet.features import check_out, extract_features, save_features, split_images
    from alexnet.weights import load_model

    check_out(args.out)   # before the work, not after it
    loaded = load_model(args.checkpoint)
    f = extract_features(loaded, split_images(args.data, args.split, loaded.small), args.layer, **_feature_kwargs(args))
    save_features(f, args.out)
    skipped = f", {f.skipped} unreadable skipped" if f.skipped else ""
    print(f"{args.out}: {args.layer} of {len(f.paths)} images{skipped}, {f.features.shape[1]} values each")
    return 0


def _add_plan(sub) -> None:
    from alexnet.plan import H200_MEASURED_BATCH, H200_PAPER_IMG_S, IMAGENET_TRAIN_IMAGES, PAPER_EPOCHS

    p = sub.add_parser("plan", help="estimate a step and a 90-epoch ImageNet run on N GPUs: compute vs communication",
                       description="Estimate a training step on N GPUs split into compute and communication (a "
                                   "ring all-reduce of the fp32 gradients, overlapped with the backward pass; "
                                   "with --towers also the towers' activations), the time of a 90-epoch ImageNet "
                                   "run, and the smallest batch whose exposed communication stays under the "
                                   "compute. Every assumption is printed with the figures.",
                       epilog="example:  alexnet plan --gpus 8 --link-gbps 400 --batch 2048")
    p.add_argument("--gpus", required=True, type=positive_int, help="GPUs (one process each)")
    p.add_argument("--link-gbps", required=True, type=_positive_float, metavar="L",
                   help="each GPU's link, gigabits per second per direction (e.g. 400 for an InfiniBand NDR "
                        "port, 3600 for NVLink 4); no default: this project has measured no GPU link")
    p.add_argument("--per-gpu-img-s", type=_positive_float, default=H200_PAPER_IMG_S, metavar="X",
                   help=f"one GPU's training speed, img/s (default: {H200_PAPER_IMG_S:,}, the paper step in bf16 "
                        f"at batch {H200_MEASURED_BATCH} measured on one H200 by alexnet bench gpu)")
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help=f"global batch, a multiple of the replicas (default: {H200_MEASURED_BATCH} per GPU)")
    p.add_argument("--towers", action="store_true",
                   help="two towers per replica on 2 GPUs each (--towers 2 of alexnet train); --gpus even")
    p.add_argument("--variant", choices=VARIANTS, default="paper", help="network (default: paper; towers: paper only)")
    p.add_argument("--overlap", type=_non_negative_float, default=1.0,
                   help="share of the backward pass the all-reduce can hide behind, 0 to 1 (default: 1)")
    p.add_argument("--latency-us", type=_non_negative_float, default=0.0,
                   help="microseconds per message: 2(R-1) per ring all-reduce, one per tower exchange (default: 0)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="of the activations the towers exchange (default: bf16); gradients are fp32 either way")
    p.add_argument("--epochs", type=positive_int, default=PAPER_EPOCHS, help=f"(default: {PAPER_EPOCHS})")
    p.add_argument("--images", type=positive_int, default=IMAGENET_TRAIN_IMAGES,
                   help=f"training images per epoch (default: {IMAGENET_TRAIN_IMAGES:,}, ImageNet's)")
    p.add_argument("--json", action="store_true", help="print the figures and assumptions as JSON")
    p.set_defaults(run=_run_plan)


def _run_plan(args) -> int:
    from alexnet.plan import Setup, format_plan, plan

    result = plan(Setup(gpus=args.gpus, link_gbps=args.link_gbps, per_gpu_img_s=args.per_gpu_img_s,
                        batch=args.batch, towers=args.towers, variant=args.variant, overlap=args.overlap,
                        latency_us=args.latency_us, precision=args.precision, epochs=args.epochs,
                        images=args.images))
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


SUBCOMMANDS = (_add_summary, _add_demo_data, _add_prepare, _add_train, _add_bench, _add_evaluate, _add_predict, _add_export,
               _add_import_torchvision, _add_viz, _add_features, _add_plan)



def build_parser() -> argparse.ArgumentParser:
    from alexnet import __version__

    parser = _Parser(prog="alexnet", description="AlexNet (Krizhevsky et al., 2012), faithful to the paper.")
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr, notes=True)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    # Ctrl-C is one line wherever it lands, torch's import (seconds, when the command starts) included.
    command = "alexnet"
    try:
        from alexnet.memory import reuse_freed_memory

        stop_with_torchrun_agent()
        reuse_freed_memory()   # every command here allocates big tensors in a loop; see memory.py
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:   # said by the (sub)command they were given to, with its --help: argparse names the top
            _innermost(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        command = " ".join(["alexnet", args.command] + ([args.picture] if getattr(args, "picture", None) else []))
        with _StopsOnSigterm(command):
            return _run(args, command)
    except KeyboardInterrupt as e:
        print(f"{command}: interrupted" + (f" ({e})" if str(e) else ""), file=sys.stderr)
        return 130


def _innermost(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand ``args`` were parsed for: `alexnet viz predictions`'s, say."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if chosen is None:
            return parser
        parser = action.choices[chosen]


class _StopsOnSigterm:
    """SIGTERM (a scheduler's, `kill`'s) ends a command as Ctrl-C does: one line, exit 143, and what was half
    written removed on the way out (atomic_write's temporary file, demo-data's partial set), where by
    default the process died on the spot and left them. `train` puts its own handling (finish the step,
    save) in place while it runs. A process forked meanwhile (a loader worker) dies of it as by default."""

    # SIGUSR1: a scheduler's notice ahead of preemption (SLURM's --signal=USR1@120), which train handles as
    # SIGTERM once it runs; by default it killed the process without a word in the seconds before.
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self, command: str) -> None:
        self.command, self.pid, self.previous = command, os.getpid(), {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # signal handlers live on the main thread
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum, _frame) -> None:
        if os.getpid() != self.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        failure = sys.exc_info()[1]
        if isinstance(failure, Exception) and _a_peer_failed(failure):
            # torchrun's SIGTERM, sent once another process died, met this one on its way out of the collective
            # that failed (in the teardown): that failure is what to say, with what a restart resumes from,
            # not a bare "stopped by SIGTERM".
            raise failure
        if os.environ.get("LOCAL_RANK", "0") == "0":   # under torchrun, once a machine: every process is stopped
            print(f"{self.command}: stopped by {signal_name(signum)}", file=sys.stderr)
        raise Stopped(signum)

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            if previous is not None:   # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, previous)


class _ReaderMayLeave:
    """stdout or stderr, for a reader that may leave early (`alexnet train ... | head`): what is written
    after it left goes nowhere, and the command goes on. Training stopped by a closed pipe would lose
    its work since the last checkpoint and, ended quietly, look like a success.

    A stream closed before the command started (`>&-`, where Python has None) is one that went nowhere
    from the start. ``notes`` (stderr: warnings, progress, the one line of a failure): any failed write
    (`2>/dev/full`) is dropped too, where it ended training before its first step and lost predict's
    results. stdout's other failures (`> /dev/full`) end the command, in one line that says so (_StdoutFailed).
    A character the stream's encoding lacks (an ASCII locale, a class named café) is written
    escaped, as paths are, not a UnicodeEncodeError."""

    def __init__(self, stream, notes: bool = False) -> None:
        self._stream = stream if stream is not None else open(os.devnull, "w")
        self._gone = (OSError,) if notes else (BrokenPipeError,)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except UnicodeEncodeError:
            encoding = self._stream.encoding or "ascii"
            self.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except self._gone:
            self._to_nowhere()
        except OSError as e:
            self._failed(e)
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except self._gone:
            self._to_nowhere()
        except OSError as e:
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        # stdout's (`> /dev/full`): the command ends with it, and what stays buffered goes nowhere, where the
        # interpreter's last flush would fail on it again.
        self._to_nowhere()
        raise _StdoutFailed(e.errno, e.strerror) from e

    def _to_nowhere(self) -> None:
        # The file descriptor itself, so that loader processes and the interpreter's last flush at exit
        # (whose failure on stdout is exit status 120) find it going nowhere too.
        try:
            nowhere = os.open(os.devnull, os.O_WRONLY)
            os.dup2(nowhere, self._stream.fileno())
            os.close(nowhere)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):   # no descriptor (a test's capture)
            self._stream = open(os.devnull, "w")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _StdoutFailed(OSError):
    """A write to stdout failed (`> /dev/full`). It names no file, as a failed write of --out may not either:
    said as the output's failure, not as --out's, which may be complete."""


# Errors of the machine's file system rather than of this program: where the user can act (another
# folder, free space, permissions), one line says which file and why.
_FILE_SYSTEM_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                       errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ELOOP}


def _refuse_writing_over_inputs(args) -> None:
    """`export --checkpoint last.pt --out last.pt` by a slip would replace a resumable run with its weights."""
    out = getattr(args, "out", None)
    if not out or not Path(out).exists():   # (an empty --out is refused by its command)
        return
    for name in ("checkpoint", "weights", "classes", "data"):
        given = getattr(args, name, None)
        if isinstance(given, (str, Path)) and Path(given).exists() and os.path.samefile(out, given):
            raise UserError(f"--out {out} is the --{name} this command reads; write to another path")


def _say_error(line: str) -> None:
    """The one line of a failed command. Under torchrun every process finds the same fault: the line goes to
    stderr once per machine (local rank 0) and, for each process, into the error file torchrun reads, so
    that its failure summary names the cause of each rank instead of a link to its documentation."""
    line = printable(line)   # a path with a newline or an escape sequence in it stays one harmless line
    written = _write_error_file(line)
    if not written or os.environ.get("LOCAL_RANK", "0") == "0":   # else stderr is the only place left to say it
        print(line, file=sys.stderr)


def _write_error_file(line: str) -> bool:
    """``line`` (printable already) into the error file torchrun gives this process (TORCHELASTIC_ERROR_FILE);
    whether it is there."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return False
    try:
        with open(error_file, "w", encoding="utf-8") as f:
            json.dump({"message": line, "timestamp": int(time.time())}, f)
    except OSError:
        return False
    return True


# Commands that run in one process: under torchrun every process did the whole job (predict printed each
# answer once per process, features computed the split in each and wrote one file from all).
_ONE_PROCESS = {"predict", "features"}


def _refuse_torchrun(args) -> None:
    if getattr(args, "command", None) in _ONE_PROCESS and os.environ.get("WORLD_SIZE", "1") not in ("0", "1", ""):
        raise UserError(f"{args.command} runs in one process; run it without torchrun (train and evaluate "
                        f"are the commands that share their work over processes)")


def _run(args, command: str) -> int:
    try:
        _refuse_torchrun(args)
        _refuse_writing_over_inputs(args)
        code = args.run(args)
        # What is still buffered: a failure to write it is said here, not at the interpreter's exit (status 120).
        sys.stdout.flush()
        return code
    except (UserError, CutShort) as e:
        _say_error(f"{command}: error: {one_line(e)}")
        return EXIT_USAGE
    except _StdoutFailed as e:
        _say_error(f"{command}: error: cannot write the output to stdout ({e.strerror})")
        return EXIT_USAGE
    except BrokenPipeError:
        # `alexnet summary | head`: the reader left; say nothing more and do not flush into a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            _say_error(f"{command}: error: {_open_files_limit(args)}")
            return _after_the_line(EXIT_USAGE)
        if e.errno not in _FILE_SYSTEM_ERRORS:
            raise
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
        out = getattr(args, "out", None)
        if out is not None and (not where or _half_written(e.filename, Path(out))):
            where = str(out)   # what the user named, not a temporary file of ours beside it
        _say_error(f"{command}: error: " + (f"cannot use {where} ({e.strerror})" if where else f"{e.strerror}"))
        return EXIT_USAGE
    except Stopped as e:   # a signal, already reported (training: last.pt written)
        # Under torchrun, the rank's line in its failure summary (else a link to torchrun's documentation).
        _write_error_file(f"{command}: stopped by {e}")
        return e.exit_code
    except Exception as e:
        # The training loop's own end: a diverged loss.
        from alexnet.train import NonFiniteLoss

        if isinstance(e, NonFiniteLoss):
            # Every process stops on the same finding: one line for the job, from rank 0.
            if os.environ.get("RANK", "0") == "0":
                print(f"{command}: error: {e}", file=sys.stderr)
            return 1
        limit = _machine_limit(e, args)
        if limit:
            _say_error(f"{command}: error: {limit}")
            return _after_the_line(EXIT_USAGE)
        if _a_peer_failed(e):
            # Not this process's fault, and its own traceback (30 lines through autograd) would hide the one
            # that matters: the failed process's, in its log or in torchrun's summary. Said by each process
            # that saw it, on stderr only: in torchrun's error file it could be named the job's root cause
            # (the earliest failure) ahead of the process that died.
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0].split(" This is typically caused")[0]
            again = (", and torchrun restarts the group from the last checkpoint if --max-restarts allows"
                     if command == "alexnet train" else "")
            print(f"{command}: error: another process of the job failed ({cause}); this one stops too{again}",
                  file=sys.stderr)
            return 1
        raise


def _half_written(filename, out: Path) -> bool:
    """Whether ``filename`` is one of the temporary names a write of ``out`` goes through first:
    atomic_write's .OUT.*.tmp, demo-data's .OUT.partial-* folder (or a file in it)."""
    return any(part.startswith(f".{out.name}.") for part in Path(str(filename)).parts)


def _machine_limit(e: Exception, args) -> str | None:
    """A limit of the machine that the data loader's worker processes ran into, in the words a user can act on.
    torch reports each as a RuntimeError (from a worker, or from the loader about its workers)."""
    if not isinstance(e, RuntimeError):
        return None
    text = str(e)
    workers = getattr(args, "workers", None)
    fewer = "--workers 0 (no loader processes)" if workers != 0 else "a smaller --batch-size"
    if "Too many open files" in text:
        return _open_files_limit(args)
    if "shared memory" in text and any(m in text for m in ("No space left", "out of shared memory", "insufficient")):
        # Loader processes hand batches over in /dev/shm; a container's is 64 MB unless it is given more.
        return (f"the shared memory the data loader's processes pass batches through (/dev/shm) is full; "
                f"run with {fewer}, or give it more room (docker run --shm-size 8g)")
    if "File too large" in text and "unable to resize file" in text:
        return (f"the file size limit (ulimit -f {_limit_text('RLIMIT_FSIZE', 1024)}) is smaller than a batch the data "
                f"loader's processes pass through shared memory; raise it, or run with {fewer}")
    return None


def _open_files_limit(args) -> str:
    workers = getattr(args, "workers", None)
    fewer = ", or use fewer --workers" if workers != 0 else ""
    return (f"too many open files for this process's limit (ulimit -n {_limit_text('RLIMIT_NOFILE')}); raise "
            f"it{fewer}")


def _limit_text(name: str, unit: int = 1) -> str:
    try:
        import resource

        soft = resource.getrlimit(getattr(resource, name))[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return "?"
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft // unit)


def _after_the_line(code: int) -> int:
    # A loader torn down half-built (its worker processes could not start) complains again as Python exits,
    # "Exception ignored in ... __del__": the one line said it all.
    sys.unraisablehook = lambda unraisable: None
    return code


def _a_peer_failed(e: Exception) -> bool:
    """A collective that failed because another process of the job went away (killed, crashed, its node
    lost). Only that: a collective misused, a CUDA fault inside NCCL or a rendezvous that timed out is a
    fault to see in full, traceback included."""
    if os.environ.get("WORLD_SIZE", "1") in ("0", "1", "") or "torch" not in sys.modules:
        return False
    import torch.distributed as td

    if isinstance(e, td.DistNetworkError):
        return True
    # gloo's are plain RuntimeErrors and NCCL's DistBackendErrors, told by what they say.
    marks = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited")
    return isinstance(e, RuntimeError) and any(mark in str(e) for mark in marks)
