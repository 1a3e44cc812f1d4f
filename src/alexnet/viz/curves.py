"""Learning curves: loss and top-1/top-5 error against epoch, with the learning-rate drops marked.

Reads RUN/metrics.jsonl as train.py writes it (one object per epoch: epoch, lr, train_loss, val_loss,
val_top1, val_top5, ...). Several runs share the axes, one colour each, so recipes can be compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.ticker import MaxNLocator

from alexnet.errors import UserError
from alexnet.viz.figure import drawable, new_figure, save

SIZE = (1200, 480)                  # pixels
MAX_EPOCH = 1_000_000                # far beyond any run; an axis up to 1e308 cannot be drawn
FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5")
# Without a config.yaml naming the schedule, a fall of at least this factor from one epoch to the next
# after a flat stretch is a drop (the paper's /10, a step schedule's gamma). The last epochs of a cosine
# also fall by 2x or more, but never after a flat stretch.
DROP_FACTOR = 2.0
FLAT = 1.1                          # changed less than this over the previous epoch: flat
# Plateau and step rates change only at drops (warm-up only rises), so any fall past rounding is one.
ANY_FALL = 1.001
# A last fall by more than this is a decay to zero (a cosine's end), never one of a schedule's divisions.
TO_ZERO = 1000.0


@dataclass
class Run:
    name: str
    rows: list[dict]                # metrics.jsonl, one dict per epoch, in epoch order
    schedule: str | None            # from RUN/config.yaml when there is one

    def column(self, key: str) -> list[float]:
        return [float(row[key]) for row in self.rows]


def read_run(path: str | Path) -> Run:
    """RUN (or RUN/metrics.jsonl) as a Run; UserError when there is nothing readable to draw."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == "metrics.jsonl":
        path = path.parent
    if not path.exists():
        raise UserError(f"{path} does not exist (expected a run folder written by alexnet train)")
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder (expected a folder holding metrics.jsonl)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{path} has no metrics.jsonl (alexnet train writes one line to it after each epoch)")
    try:
        text = metrics.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {metrics}: {e}") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        # A run still training may be caught mid-append: its unfinished last line is not an error.
        lines = lines[:-1]
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{metrics}, line {number}: not a JSON object") from None
        missing = [k for k in FIELDS if not isinstance(row, dict) or not _number(row.get(k))]
        if missing:
            raise UserError(f"{metrics}, line {number}: no number for {', '.join(missing)}")
        epoch = row["epoch"]
        # The range first: it holds NaN out, and a JSON integer of 400 digits is no float to test.
        if not (1 <= epoch <= MAX_EPOCH and epoch == int(epoch)):
            raise UserError(f"{metrics}, line {number}: epoch {row['epoch']} is not a whole number from 1 to "
                            f"{MAX_EPOCH:,}")
        rows.append(row)
    if not rows:
        raise UserError(f"{metrics} holds no finished epoch yet")
    # An epoch written twice (a run resumed from a checkpoint older than its last line) counts once, as
    # its latest line says.
    rows = sorted({row["epoch"]: row for row in rows}.values(), key=lambda r: r["epoch"])
    return Run(name=path.name or path.resolve().name, rows=rows, schedule=_schedule(path))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schedule(run: Path) -> str | None:
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    schedule = config.get("schedule") if isinstance(config, dict) else None
    return schedule if isinstance(schedule, str) else None


def lr_drops(run: Run) -> list[tuple[float, float]]:
    """(epoch boundary, factor) where the learning rate was divided: a plateau or step drop, not a cosine.

    metrics.jsonl records each epoch's last rate, so a drop decided at the end of epoch e shows first in
    epoch e + 1's row; it is placed at x = e, the boundary where it took effect.
    """
    if run.schedule == "cosine":
        return []
    known = run.schedule in ("plateau", "step")
    epochs, lrs = run.column("epoch"), run.column("lr")
    if not known and _decays_to_zero(lrs):
        return []
    drops, previous_was_drop = [], False
    for i in range(1, len(lrs)):
        factor = lrs[i - 1] / lrs[i] if lrs[i] > 0 else math.inf if lrs[i - 1] > 0 else 1.0
        if known:
            is_drop = factor >= ANY_FALL
        else:
            flat_before = i == 1 or lrs[i - 2] <= FLAT * lrs[i - 1]
            is_drop = factor >= DROP_FACTOR and (flat_before or previous_was_drop)
        if is_drop:
            drops.append((epochs[i] - 1, factor))
        previous_was_drop = is_drop
    return drops


def _decays_to_zero(lrs: list[float]) -> bool:
    """A rate falling in every epoch after its warm-up and ending near zero: a short cosine, whose first
    fall has no flat stretch before it to tell it from a drop."""
    peak = max(range(len(lrs)), key=lambda i: lrs[i], default=0)
    falls = list(zip(lrs[peak:], lrs[peak + 1:]))
    return bool(falls) and all(b * FLAT < a for a, b in falls) and lrs[-1] * TO_ZERO < lrs[-2]


def draw_curves(runs: list[Run], out: str | Path) -> Path:
    """Loss (left) and error (right) against epoch for every run; returns the file written."""
    fig = new_figure(*SIZE)
    loss_ax, error_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    names = _labels(runs)
    for run, colour, name in zip(runs, colours, names):
        epochs = run.column("epoch")
        marker = "o" if len(epochs) <= 30 else None
        style = dict(color=colour, marker=marker, markersize=3)
        loss_ax.plot(epochs, run.column("train_loss"), "-", label=f"{name} train", **style)
        loss_ax.plot(epochs, run.column("val_loss"), "--", label=f"{name} val", **style)
        error_ax.plot(epochs, [100 * (1 - v) for v in run.column("val_top1")], "-", label=f"{name} top-1", **style)
        error_ax.plot(epochs, [100 * (1 - v) for v in run.column("val_top5")], "--", label=f"{name} top-5", **style)
        for x, factor in lr_drops(run):
            for ax in (loss_ax, error_ax):
                ax.axvline(x, color=colour, linestyle=":", linewidth=1.2)
            text = f"lr /{factor:.3g}" if math.isfinite(factor) else "lr to 0"
            error_ax.annotate(text, (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                              textcoords="offset points", fontsize=8, color=colour)
    loss_ax.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss")
    error_ax.set(title="validation error (1 view)", xlabel="epoch", ylabel="error (%)", ylim=(0, 100))
    # Falling curves leave a loss plot's top right and an error plot's bottom left empty; the error plot's
    # top edge holds the learning-rate notes.
    epochs = {e for run in runs for e in run.column("epoch")}
    for ax, corner in ((loss_ax, "upper right"), (error_ax, "lower left")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no epoch 1.5 on a short run
        if len(epochs) == 1:   # else matplotlib spans 0.95-1.05 and, short of integers, ticks 0.96, 0.98, ...
            ax.set_xlim(min(epochs) - 1, min(epochs) + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=corner)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.11, wspace=0.18)
    if any(lr_drops(run) for run in runs):
        fig.text(0.5, 0.965, "dotted lines: learning rate divided", ha="center", fontsize=9, color="0.3")
    return save(fig, out)


def _labels(runs: list[Run]) -> list[str]:
    names = [drawable(run.name) for run in runs]
    if len(set(names)) < len(names):  # runs/a/demo and runs/b/demo: number them rather than hide one
        names = [f"{i + 1}:{name}" for i, name in enumerate(names)]
    return names
