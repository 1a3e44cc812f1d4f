"""Val top-1 at equal epochs for growing global batches, plain SGD against LARS (README, "Large batches").

    .venv/bin/python benchmarks/large_batch.py --data data/demo-prepared [--epochs 6] [--out runs/large-batch]

Each run is `alexnet train --preset demo` with the batch, optimiser and learning rate of its row, the
rest unchanged (LARS rows start fc8 at He init, not at zero): linear scaling (lr = base x batch / 32) and
the preset's warm-up, cosine decay, and
`--accumulate` so that every forward pass sees 32 images whatever the batch (the same memory as the demo).
Runs go to OUT/<name>; an interrupted study continues where it stopped (`--resume auto`), and a finished
run is read, not run again. Prints a Markdown table (and --json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PART = 32   # images per forward pass: the demo preset's batch when the README table was measured


def runs(batches: list[int], sgd_base: float, lars_base: float) -> list[dict]:
    rows = []
    for optimizer, base in (("sgd", sgd_base), ("lars", lars_base)):
        for batch in batches:
            rows.append({"name": f"{optimizer}-{batch}", "optimizer": optimizer, "batch": batch,
                         "lr": base * batch / PART, "accumulate": max(1, batch // PART)})
    return rows


def train(row: dict, data: str, out: Path, epochs: int, extra: list[str]) -> list[dict]:
    folder = out / row["name"]
    cmd = [sys.executable, "-m", "alexnet", "train", "--preset", "demo", "--data", data, "--out", str(folder),
           "--epochs", str(epochs), "--batch-size", str(row["batch"]), "--accumulate", str(row["accumulate"]),
           "--optimizer", row["optimizer"], "--lr", f"{row['lr']:g}", "--resume", "auto", *extra]
    if row["optimizer"] == "lars":   # a layer at zero has no norm for LARS to scale by (fc8 starts at He init)
        cmd.append("--no-zero-init-fc8")
    # A run that diverged stopped with status 1 and kept what it learned until then: a result, not a failure,
    # and one to read again rather than to resume (it would diverge again).
    if not (folder / "diverged.json").exists():
        print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode not in (0, 1):
            raise SystemExit(f"{row['name']} failed")
    metrics = folder / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []


def table(results: list[dict], images: int) -> str:
    lines = ["| global batch | optimiser | lr | steps | val top-1 by epoch (%) | final | best |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        top1 = [100 * e["val_top1"] for e in r["epochs"]]
        steps = len(r["epochs"]) * (images // r["batch"])
        final = f"{top1[-1]:.1f}" if top1 else "-"
        best = f"{max(top1):.1f}" if top1 else "-"
        note = "" if len(top1) == r["epochs_asked"] else f" (stopped after {len(top1)}: diverged)"
        lines.append(f"| {r['batch']}{' (' + str(r['accumulate']) + ' parts)' if r['accumulate'] > 1 else ''} | "
                     f"{r['optimizer']} | {r['lr']:g} | {steps} | {', '.join(f'{t:.0f}' for t in top1)}{note} | "
                     f"{final} | {best} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the demo set, prepared (alexnet prepare)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batches", default="32,256,1024", help="global batches, comma-separated")
    p.add_argument("--sgd-lr", type=float, default=0.01, help="SGD's lr at batch 32 "
                   "(the demo preset's when the README table was measured)")
    p.add_argument("--lars-lr", type=float, default=0.125, help="LARS's lr at batch 32 (best of 3 tried at 256)")
    p.add_argument("--out", type=Path, default=Path("runs/large-batch"))
    p.add_argument("--only", default="", help="run only these rows (names such as lars-256, comma-separated)")
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args()
    rows = runs([int(b) for b in args.batches.split(",")], args.sgd_lr, args.lars_lr)
    if args.only:
        rows = [r for r in rows if r["name"] in args.only.split(",")]
    results = [dict(r, epochs=train(r, args.data, args.out, args.epochs, extra), epochs_asked=args.epochs)
               for r in rows]
    images = json.loads((Path(args.data) / "alexnet-prepared.json").read_text())["splits"]["train"]["images"] \
        if (Path(args.data) / "alexnet-prepared.json").exists() else 2400
    print(json.dumps(results, indent=1) if args.json else table(results, images))


if __name__ == "__main__":
    main()
