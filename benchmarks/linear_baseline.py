"""How far a linear classifier on raw pixels gets on a dataset: the yardstick for what the network learns.

    python benchmarks/linear_baseline.py --data data/demo-prepared        # or an image folder

Each image is seen as the network sees it at test time (shorter side to 256, the central 227 crop), shrunk
to RES x RES (area averaging), flattened and standardised with the training set's per-pixel mean and
spread. Multinomial logistic regression with an L2 penalty, fitted on the whole training set at once by
L-BFGS to convergence, for every penalty in --l2; the best validation top-1 over the penalties is
reported, which flatters the linear model (the penalty is picked on the validation set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from alexnet.cli import positive_int
from alexnet.data.loader import eval_loader
from alexnet.data.sources import open_data
from alexnet.errors import UserError


def pixels(dataset, res: int, crop: int = 227) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3 * res * res) float features and (N,) labels of every readable image's central crop."""
    chunks, labels = [], []
    for images, y, _, errors in eval_loader(dataset, 100, rank=0, world=1, workers=2, pin_memory=False):
        keep = torch.tensor([not e for e in errors], dtype=torch.bool)
        x = images[keep].permute(0, 3, 1, 2).float()
        top, left = (x.shape[2] - crop) // 2, (x.shape[3] - crop) // 2
        x = x[:, :, top:top + crop, left:left + crop]
        chunks.append(F.interpolate(x, size=(res, res), mode="area").flatten(1))
        labels.append(y[keep])
    return torch.cat(chunks), torch.cat(labels)


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, iterations: int) -> torch.nn.Linear:
    model = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=iterations, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder (train/ and val/) or a prepared folder")
    parser.add_argument("--res", type=positive_int, nargs="+", default=[32, 64], help="side of the shrunk crop")
    parser.add_argument("--l2", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--iterations", type=positive_int, default=500, help="L-BFGS iterations per fit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    source = open_data(Path(args.data))
    sets, classes = source.splits, len(source.classes)
    rows = []
    for res in args.res:
        x, y = pixels(sets["train"], res)
        xv, yv = pixels(sets["val"], res)
        mean, std = x.mean(0), x.std(0) + 1e-3
        x, xv = ((x - mean) / std).double(), ((xv - mean) / std).double()
        for l2 in args.l2:
            t0 = time.perf_counter()
            model = fit(x, y, classes, l2, args.iterations)
            with torch.no_grad():
                train_top1 = (model(x).argmax(1) == y).double().mean().item()
                val_top1 = (model(xv).argmax(1) == yv).double().mean().item()
            rows.append({"res": res, "l2": l2, "train_top1": train_top1, "val_top1": val_top1,
                         "seconds": time.perf_counter() - t0})
            if not args.json:
                print(f"{res}x{res} l2 {l2:g}: train top-1 {100 * train_top1:.1f}%, val top-1 {100 * val_top1:.1f}%")
    best = max(rows, key=lambda r: r["val_top1"])
    if args.json:
        print(json.dumps({"rows": rows, "best": best, "chance": 1 / classes}))
    else:
        print(f"best: val top-1 {100 * best['val_top1']:.1f}% ({best['res']}x{best['res']}, l2 {best['l2']:g}); "
              f"chance {100 / classes:.1f}%")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"linear_baseline: {e}", file=sys.stderr)
        raise SystemExit(2) from None
