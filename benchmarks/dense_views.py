"""Centre view, the paper's 10 views and dense evaluation side by side, in one run (README, "Dense evaluation").

    .venv/bin/python benchmarks/dense_views.py --checkpoint runs/demo/best.pt --data data/demo \\
        [--views "1;10;dense:256;dense:256,320,384"] [--precision auto] [--workers 2]

Every row evaluates the same val images (``alexnet evaluate``'s evaluate_checkpoint), decoded from the same
files by the same number of loader processes, so the milliseconds per image compare the views and not
their data: give --data the image folders (a prepared store serves the fixed views from decoded pixels,
and dense views from the source files anyway). Prints a Markdown table, the CPU or GPU on its last line.
"""

from __future__ import annotations

import argparse
import json

import torch

from alexnet.device import pick_device
from alexnet.evaluate import evaluate_checkpoint
from alexnet.machine import describe, one_line

DEFAULT = "1;10;dense:256;dense:320;dense:256,320,384"


def parse(views: str) -> list[tuple[int | str, str | None]]:
    """"1;10;dense:256,320" -> [(1, None), (10, None), ("dense", "256,320")]."""
    rows = []
    for item in views.split(";"):
        kind, _, scales = item.partition(":")
        rows.append(("dense", scales or None) if kind == "dense" else (int(kind), None))
    return rows


def label(crops: int | str, scales: tuple[int, ...] | None) -> str:
    if crops == "dense":
        return f"dense, scale{'s' if len(scales) > 1 else ''} {', '.join(map(str, scales))}"
    return "centre crop" if crops == 1 else "10 views (paper)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="image folders with val/ (the demo set: data/demo)")
    p.add_argument("--views", default=DEFAULT, help=f"rows, ';'-separated (default: {DEFAULT})")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = []
    for crops, scales in parse(args.views):
        kwargs = {"scales": scales} if scales else {}
        m = evaluate_checkpoint(args.checkpoint, args.data, crops=crops, batch_size=args.batch_size,
                                workers=args.workers, device=args.device, precision=args.precision,
                                progress=False, **kwargs)
        results.append(m | {"label": label(crops, m.get("scales"))})
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| views | top-1 (%) | top-5 (%) | loss | ms per image |\n|---|---|---|---|---|")
    for m in results:
        print(f"| {m['label']} | {100 * m['top1']:.1f} | {100 * m['top5']:.1f} | {m['loss']:.3f} | "
              f"{1000 * m['seconds'] / m['images']:.1f} |")
    device = pick_device(args.device)
    print(f"\n{results[0]['images']} images; {one_line(describe(device, args.precision))}; "
          f"{torch.get_num_threads()} threads, {args.workers} loader processes")


if __name__ == "__main__":
    main()
