"""What starting from trained weights buys on a small set of new classes (`alexnet train --weights`).

    python benchmarks/finetune.py --data data/demo --out /tmp/finetune     # about 11 min on a 2-core CPU

From the demo set (`alexnet demo-data`) it makes two sets of links, no copies: PRE, seven of its classes
with all their images, and NEW, the other three classes (rings, vertical stripes, waves by default) with
only --few training images each and all their validation images. It trains the paper network on PRE with
the demo preset, then on NEW twice with the same recipe and --epochs: from scratch, and from PRE's
best.pt (`--weights`: every layer but fc8, and PRE's per-channel normalisation); then from the weights
again with conv1-5 frozen (`--freeze features`) and with all but fc8 frozen (`--freeze all-but-fc8`). NEW's
classes are not among PRE's, so the weights bring features, not answers. A last run from scratch gets
--scratch-epochs. It prints each run's val top-1 per epoch and training speed, and the table as JSON on its
last line. `--pre RUN` takes an earlier PRE run (OUT/runs/pre) instead of training one.

It replaces only what it makes in OUT: the link sets OUT/pre and OUT/new, and its own runs under OUT/runs
(pre, new-scratch, new-from-weights, new-frozen-features, new-only-fc8, new-scratch-long); anything else
there, a run of yours in OUT/runs included, stays.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from alexnet.errors import UserError

HELD_OUT = ("rings", "vstripes", "waves")
RUNS = ("new-scratch", "new-from-weights", "new-frozen-features", "new-only-fc8", "new-scratch-long")


def link_set(data: Path, out: Path, classes: list[str], few: int | None) -> None:
    for split in ("train", "val"):
        for cls in classes:
            folder = out / split / cls
            folder.mkdir(parents=True)
            files = sorted(f for f in (data / split / cls).iterdir() if f.is_file())
            for f in files[:few] if split == "train" and few else files:
                (folder / f.name).symlink_to(f.resolve())


def only_links(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but folders and links, as link_set leaves it: one with a file of
    its own is not this script's to delete."""
    return all(f.is_symlink() or f.is_dir() for f in folder.rglob("*"))


def clear(out: Path, keep_pre: bool) -> None:
    """Removes what an earlier call made in ``out``, and nothing of anyone else's."""
    for name in ("pre", "new"):
        folder = out / name
        if folder.exists() and (folder.is_symlink() or not folder.is_dir() or not only_links(folder)):
            raise UserError(f"--out: {folder} is not a set of links this script made; "
                            f"move it away or choose another --out")
    for name in ("pre", "new"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RUNS + (() if keep_pre else ("pre",)):
        shutil.rmtree(out / "runs" / name, ignore_errors=True)


def train(name: str, data: Path, out: Path, *flags: str) -> dict:
    run = out / "runs" / name
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alexnet", "train", "--preset", "demo", "--data", str(data),
                           "--out", str(run), *flags], stdout=subprocess.DEVNULL)
    if done.returncode:   # its own message is already on stderr, above this one
        raise UserError(f"alexnet train of run {name} ({run}) ended with exit status {done.returncode}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    top1 = [round(100 * r["val_top1"], 1) for r in rows]
    speed = round(sum(r["images_per_sec"] for r in rows) / len(rows), 1)
    result = {"run": name, "epochs": len(rows), "val_top1_per_epoch": top1, "final": top1[-1], "best": max(top1),
              "train_images_per_sec": speed, "seconds": round(time.perf_counter() - start, 1)}
    print(f"{name}: val top-1 per epoch {top1}, {speed} img/s in training, {result['seconds']} s in all", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the demo set (alexnet demo-data --out DIR)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the linked sets and the runs (only this script's own are replaced)")
    p.add_argument("--held-out", default=",".join(HELD_OUT), help="the new classes (comma-separated)")
    p.add_argument("--few", type=int, default=20, help="training images per new class (default: 20)")
    p.add_argument("--epochs", type=int, default=10, help="epochs on the new classes (default: 10)")
    p.add_argument("--scratch-epochs", type=int, default=30, help="epochs of the longer run from scratch")
    p.add_argument("--workers", default="0", help="--workers of every run (default: 0)")
    p.add_argument("--pre", action="store_true", help="keep OUT/runs/pre from an earlier call instead of training it")
    args = p.parse_args(argv)

    if not (args.data / "train").is_dir():
        p.error(f"--data: {args.data / 'train'} is not a folder; make the demo set with alexnet demo-data --out DIR")
    classes = sorted(d.name for d in (args.data / "train").iterdir() if d.is_dir())
    held = args.held_out.split(",")
    if not set(held) < set(classes):
        p.error(f"--held-out must name some of {', '.join(classes)}")
    weights = args.out / "runs" / "pre" / "best.pt"
    if args.pre and not weights.is_file():
        p.error(f"--pre: {weights} does not exist")
    clear(args.out, args.pre)
    link_set(args.data, args.out / "pre", [c for c in classes if c not in held], None)
    link_set(args.data, args.out / "new", held, args.few)
    common = ("--workers", args.workers)
    new = ("--epochs", str(args.epochs), "--weights", str(weights), *common)
    runs = [] if args.pre else [train("pre", args.out / "pre", args.out, *common)]
    runs += [train("new-scratch", args.out / "new", args.out, "--epochs", str(args.epochs), *common),
             train("new-from-weights", args.out / "new", args.out, *new),
             train("new-frozen-features", args.out / "new", args.out, *new, "--freeze", "features"),
             train("new-only-fc8", args.out / "new", args.out, *new, "--freeze", "all-but-fc8"),
             train("new-scratch-long", args.out / "new", args.out, "--epochs", str(args.scratch_epochs), *common)]
    print(json.dumps({"held_out": held, "few": args.few, "runs": runs}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"finetune: {e}", file=sys.stderr)
        raise SystemExit(2) from None
