"""How long a step, and a 90-epoch ImageNet run, take on N GPUs: compute against communication.

    alexnet plan --gpus N --link-gbps L [--per-gpu-img-s X] [--batch B] [--towers] [--json]

A first-order model, every assumption of which is printed with the figures (``assumptions``):

  compute     (B / N) / X seconds: each GPU runs the whole network on B/N images at X img/s (X measured
              on one H200 by `alexnet bench gpu` unless given). With towers each GPU runs half of every
              layer on its pair's 2B/N images: the same multiply-adds, assumed at the same speed.
  all-reduce  the ring's 2(R-1)/R x G / (L / 8) seconds over R replicas (G: the fp32 gradient bytes; R = N,
              or N/2 with towers, where each tower's replicas all-reduce its half) plus 2(R-1) message
              latencies. DDP overlaps it with the backward pass, taken as 2/3 of compute; --overlap is the
              share of the backward it can hide behind (1: all of it, 0: none).
  towers      the activations parallel.exchange_bytes counts, for the pair's batch, over the link, plus one
              latency for each of the 9 exchanges; never hidden: every exchange stops both towers.

The smallest batch reported is the smallest multiple of R for which the communication left exposed
is at most the compute (at least half of a step computes); it is found from the same costs as the step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache

from alexnet.errors import UserError

# README "On a GPU": alexnet train's paper step, bf16, batch 256, on one H200 (alexnet bench gpu).
H200_PAPER_IMG_S = 10_033
H200_MEASURED_BATCH = 256
IMAGENET_TRAIN_IMAGES = 1_281_167
PAPER_EPOCHS = 90
# Backward ~ 2x forward (a weight gradient and an input gradient for every forward product).
BACKWARD_SHARE = 2 / 3
GRADIENT_ELEMENT_BYTES = 4      # DDP all-reduces the fp32 parameters' fp32 gradients, autocast or not
ACTIVATION_BYTES = {"bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class Setup:
    """What the planner is asked about; every field is a flag of `alexnet plan`."""
    gpus: int
    link_gbps: float                       # per GPU and direction, gigabits per second
    per_gpu_img_s: float = H200_PAPER_IMG_S
    batch: int | None = None               # global; None: H200_MEASURED_BATCH per GPU
    towers: bool = False
    variant: str = "paper"
    overlap: float = 1.0
    latency_us: float = 0.0
    precision: str = "bf16"                # of the activations the towers exchange
    epochs: int = PAPER_EPOCHS
    images: int = IMAGENET_TRAIN_IMAGES

    @property
    def replicas(self) -> int:
        """Processes that all-reduce the same gradients: all of them, or one per pair with towers."""
        return self.gpus // 2 if self.towers else self.gpus

    @property
    def global_batch(self) -> int:
        return self.batch if self.batch is not None else H200_MEASURED_BATCH * self.gpus


@dataclass(frozen=True)
class Costs:
    """A step's seconds as straight lines in the global batch B, so that one description serves both the
    step's estimate and the search for the smallest batch."""
    compute_per_image: float     # compute = this x B
    exchange_per_image: float    # the towers' exchanges: this x B + exchange_fixed
    exchange_fixed: float
    all_reduce: float            # the same whatever B: the gradients' size does not depend on it
    hideable_share: float        # of compute: overlap x backward share

    def compute(self, batch: int) -> float:
        return self.compute_per_image * batch

    def exchange(self, batch: int) -> float:
        return self.exchange_per_image * batch + self.exchange_fixed

    def hidden(self, batch: int) -> float:
        return min(self.all_reduce, self.hideable_share * self.compute(batch))

    def exposed(self, batch: int) -> float:
        return self.exchange(batch) + self.all_reduce - self.hidden(batch)

    def step(self, batch: int) -> float:
        return self.compute(batch) + self.exposed(batch)

    def comm_under_compute(self, batch: int) -> bool:
        return self.exposed(batch) <= self.compute(batch)


# ---- the pieces ----

@lru_cache
def parameter_counts(variant: str) -> tuple[int, int]:
    """(the whole network's parameters, the larger tower's): a tower holds the first half (rounded up)
    of every tensor's rows, as parallel.TowerAlexNet cuts them."""
    import torch

    from alexnet.model import AlexNet
    from alexnet.parallel import TOWERS

    with torch.device("meta"):   # shapes only: nothing allocated or initialised
        params = list(AlexNet(variant).parameters())
    whole = sum(p.numel() for p in params)
    tower = sum(-(-p.shape[0] // TOWERS) * (p.numel() // p.shape[0]) for p in params)
    return whole, tower


def link_bytes_per_second(link_gbps: float) -> float:
    return link_gbps * 1e9 / 8


def ring_all_reduce_seconds(nbytes: float, ranks: int, link_gbps: float, latency_s: float = 0.0) -> float:
    """A ring all-reduce: each rank sends and receives 2(R-1)/R of the buffer, in 2(R-1) messages
    (reduce-scatter, then all-gather)."""
    if ranks < 2:
        return 0.0
    steps = 2 * (ranks - 1)
    return steps / ranks * nbytes / link_bytes_per_second(link_gbps) + steps * latency_s


def tower_exchange(batch_per_pair: int, precision: str) -> dict[str, int]:
    """parallel.exchange_bytes for a pair's batch, and how many exchanges (messages) a step makes."""
    from alexnet.parallel import exchange_bytes

    counted = exchange_bytes(batch_per_pair, 1000, ACTIVATION_BYTES[precision])
    exchanges = sum(k.startswith(("forward_", "backward_")) for k in counted)
    return {"bytes": counted["total"], "exchanges": exchanges}


def costs(setup: Setup, overlap: float | None = None) -> Costs:
    """The per-step costs of ``setup``; ``overlap`` replaces setup.overlap (0 for the no-overlap figures)."""
    whole, tower = parameter_counts(setup.variant)
    held = tower if setup.towers else whole
    latency = setup.latency_us * 1e-6
    exchange_per_image = exchange_fixed = 0.0
    if setup.towers:
        one = tower_exchange(1, setup.precision)   # exchange_bytes is linear in the batch
        # Each of the replicas' pairs sends its own batch's activations: B / replicas images.
        exchange_per_image = one["bytes"] / setup.replicas / link_bytes_per_second(setup.link_gbps)
        exchange_fixed = one["exchanges"] * latency
    share = setup.overlap if overlap is None else overlap
    return Costs(compute_per_image=1 / (setup.gpus * setup.per_gpu_img_s),
                 exchange_per_image=exchange_per_image, exchange_fixed=exchange_fixed,
                 all_reduce=ring_all_reduce_seconds(held * GRADIENT_ELEMENT_BYTES, setup.replicas, setup.link_gbps,
                                                    latency),
                 hideable_share=share * BACKWARD_SHARE)


def run_seconds(step_seconds: float, batch: int, epochs: int = PAPER_EPOCHS,
                images: int = IMAGENET_TRAIN_IMAGES) -> float:
    """``epochs`` passes over ``images`` at ``batch`` images per ``step_seconds``."""
    return epochs * images / (batch / step_seconds)


def smallest_batch(c: Costs, unit: int) -> int | None:
    """The smallest multiple of ``unit`` whose exposed communication is at most its compute, or None when
    no batch is: when the towers' exchanges alone grow faster with the batch than the compute does.

    exposed <= compute splits into two straight lines (the all-reduce fully hidden, or not):
      (compute - exchange) per image x B >= exchange_fixed
      (compute - exchange + hideable x compute) per image x B >= exchange_fixed + all_reduce
    """
    bound = 0.0
    for slope, need in ((c.compute_per_image - c.exchange_per_image, c.exchange_fixed),
                        ((1 + c.hideable_share) * c.compute_per_image - c.exchange_per_image,
                         c.exchange_fixed + c.all_reduce)):
        if slope <= 0:
            if need > 0 or slope < 0:
                return None
            continue
        bound = max(bound, need / slope)
    # The bound is exact in real numbers; rounding can put it one unit off, so the test decides.
    k = max(1, math.ceil(bound / unit))
    while not c.comm_under_compute(k * unit):
        k += 1
    while k > 1 and c.comm_under_compute((k - 1) * unit):
        k -= 1
    return k * unit


def hidden_from(c: Costs, unit: int) -> int | None:
    """The smallest multiple of ``unit`` from which the all-reduce hides entirely behind the backward
    pass (None without overlap)."""
    if c.all_reduce == 0:
        return unit
    if c.hideable_share == 0:
        return None
    k = max(1, math.ceil(c.all_reduce / (c.hideable_share * c.compute_per_image) / unit))
    while c.hidden(k * unit) < c.all_reduce:
        k += 1
    while k > 1 and c.hidden((k - 1) * unit) >= c.all_reduce:
        k -= 1
    return k * unit


# ---- the plan ----

def check(setup: Setup) -> None:
    """Refuse what no run could be: a UserError (one line, exit 2) for each."""
    for flag, value in (("gpus", setup.gpus), ("link-gbps", setup.link_gbps), ("per-gpu-img-s", setup.per_gpu_img_s),
                        ("batch", setup.global_batch), ("epochs", setup.epochs), ("images", setup.images)):
        if not value > 0:
            raise UserError(f"--{flag} must be positive, got {value}")
    if setup.latency_us < 0:
        raise UserError(f"--latency-us must be non-negative, got {setup.latency_us}")
    # Beyond these no machine is (and the batch search would count past 2^53, where +1 changes nothing).
    for flag, value, low, high in (("link-gbps", setup.link_gbps, 1e-3, 1e6),
                                   ("per-gpu-img-s", setup.per_gpu_img_s, 1e-3, 1e9),
                                   ("latency-us", setup.latency_us, 0.0, 1e9)):
        if not low <= value <= high:
            raise UserError(f"--{flag} must be from {low:g} to {high:g}, got {value:g}")
    if setup.towers and setup.variant != "paper":
        raise UserError("only the paper network has towers (--variant paper)")
    if setup.towers and setup.gpus % 2:
        raise UserError(f"--towers puts the two towers of each replica on 2 GPUs: --gpus must be even, "
                        f"got {setup.gpus}")
    if not 0 <= setup.overlap <= 1:
        raise UserError(f"--overlap is a share of the backward pass, 0 to 1, got {setup.overlap}")
    if setup.global_batch % setup.replicas:
        over = _count(setup.replicas, "tower pair" if setup.towers else "GPU")
        raise UserError(f"--batch {setup.global_batch} does not split evenly over {over}; use a multiple "
                        f"of {setup.replicas}")
    if setup.global_batch > setup.images:   # no full step in an epoch: its times would mean nothing
        raise UserError(f"a global batch of {setup.global_batch:,} images is more than an epoch's {setup.images:,} "
                        f"(--images): fewer GPUs or a smaller --batch")


def plan(setup: Setup) -> dict:
    """Every figure of ``setup``: the step split into compute and communication (with the overlap
    asked for and with none), the run's time, the smallest batches, and the assumptions behind them."""
    check(setup)
    batch, unit = setup.global_batch, setup.replicas
    whole, tower = parameter_counts(setup.variant)
    c, none = costs(setup), costs(setup, overlap=0.0)
    step, step_none = c.step(batch), none.step(batch)
    out = {
        "setup": asdict(setup) | {"batch": batch},
        "params": whole,
        "params_per_gpu": tower if setup.towers else whole,
        "gradient_bytes": (tower if setup.towers else whole) * GRADIENT_ELEMENT_BYTES,
        "replicas": setup.replicas,
        "batch_per_replica": batch // unit,
        "seconds": {"compute": c.compute(batch), "backward": BACKWARD_SHARE * c.compute(batch),
                    "all_reduce": c.all_reduce, "all_reduce_hidden": c.hidden(batch),
                    "all_reduce_exposed": c.all_reduce - c.hidden(batch), "towers_exchange": c.exchange(batch),
                    "step": step, "step_no_overlap": step_none},
        "images_per_sec": batch / step,
        "images_per_sec_no_overlap": batch / step_none,
        "run_seconds": run_seconds(step, batch, setup.epochs, setup.images),
        "run_seconds_no_overlap": run_seconds(step_none, batch, setup.epochs, setup.images),
        "smallest_batch": smallest_batch(c, unit),
        "smallest_batch_no_overlap": smallest_batch(none, unit),
        "all_reduce_hidden_from_batch": hidden_from(c, unit),
    }
    if setup.towers:
        out["towers_exchange"] = tower_exchange(batch // unit, setup.precision)
    out["assumptions"] = assumptions(setup, out)
    return out


def assumptions(setup: Setup, r: dict) -> list[str]:
    default_rate = setup.per_gpu_img_s == H200_PAPER_IMG_S
    lines = [
        f"each GPU trains at {setup.per_gpu_img_s:,g} img/s"
        + (f" (the paper network's step in bf16 at batch {H200_MEASURED_BATCH}, measured on one H200 by "
           f"alexnet bench gpu)" if default_rate else " (given)")
        + ", whatever its share of the batch",
        f"backward = {Fraction(BACKWARD_SHARE).limit_denominator(12)} of compute; the all-reduce can hide "
        f"behind {setup.overlap:g} of the backward (DDP overlaps them)",
        "one replica: no all-reduce" if setup.replicas == 1 else
        f"gradients are fp32 ({GRADIENT_ELEMENT_BYTES} bytes x {r['params_per_gpu']:,} parameters per GPU), "
        f"all-reduced by one ring over the {setup.replicas} replicas: 2(R-1)/R of them over each link; DDP's "
        f"buckets are not modelled",
        f"link: {setup.link_gbps:g} Gb/s per GPU and direction, {setup.latency_us:g} us per message, "
        f"nothing else on it",
        f"{setup.epochs} epochs of {setup.images:,} images (ImageNet's training set unless given); data "
        f"loading and evaluation keep up and take no time",
    ]
    if setup.towers:
        lines += [
            f"towers: GPUs 2k and 2k+1 hold the two towers of replica k; each tower's "
            f"{_count(setup.replicas, 'replica')} all-reduce that tower's half of the gradients",
            f"a tower runs half of every layer on its pair's {r['batch_per_replica']} images, as fast per "
            f"multiply-add as the whole network",
            f"towers exchange {setup.precision} activations (parallel.exchange_bytes), "
            f"{r['towers_exchange']['exchanges']} exchanges a step, never hidden, not sharing the link with "
            f"the all-reduce",
        ]
    return lines


# ---- text ----

def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(r: dict) -> str:
    s, sec = r["setup"], r["seconds"]
    mb = 1e6
    how = f"2 towers x {_count(r['replicas'], 'replica')}" if s["towers"] else "data parallel"
    per = "per tower pair" if s["towers"] else "per GPU"
    lines = [f"AlexNet ({s['variant']}) on {_count(s['gpus'], 'GPU')}, {how}, global batch {s['batch']:,} "
             f"({r['batch_per_replica']} {per}), {s['link_gbps']:g} Gb/s links"]

    def row(name: str, seconds: float, note: str = "") -> str:
        return f"  {name:<30} {duration(seconds):>10}  {note}".rstrip()

    lines.append(row("compute", sec["compute"], f"of which backward {duration(sec['backward'])}"))
    if s["towers"]:
        x = r["towers_exchange"]
        lines.append(row("towers' exchanges", sec["towers_exchange"],
                         f"{x['bytes'] / mb:.1f} MB each way, {x['exchanges']} exchanges, never hidden"))
    if r["replicas"] == 1:
        lines.append(row("all-reduce", 0.0, "none: one replica"))
    else:
        lines += [row("all-reduce (ring)", sec["all_reduce"],
                      f"{r['gradient_bytes'] / mb:.1f} MB of fp32 gradients over {r['replicas']} replicas"),
                  row("  hidden behind the backward", sec["all_reduce_hidden"], f"overlap {s['overlap']:g}"),
                  row("  exposed", sec["all_reduce_exposed"])]
    lines += [row("step", sec["step"], f"{r['images_per_sec']:,.0f} img/s"),
              row("step, no overlap", sec["step_no_overlap"], f"{r['images_per_sec_no_overlap']:,.0f} img/s"),
              f"{s['epochs']} epochs of {s['images']:,} images: {duration(r['run_seconds'])} "
              f"(no overlap: {duration(r['run_seconds_no_overlap'])})",
              f"smallest batch keeping the exposed communication at most the compute: "
              f"{_batch(r['smallest_batch'], 'none')} (overlap {s['overlap']:g}), "
              f"{_batch(r['smallest_batch_no_overlap'], 'none')} with no overlap"
              + (_NEVER if r["smallest_batch_no_overlap"] is None else ""),
              *([] if r["replicas"] == 1 else
                [f"the all-reduce hides entirely behind the backward from batch "
                 f"{_batch(r['all_reduce_hidden_from_batch'], 'none (no overlap)')}"])]
    lines += [f"assumes: {a}" for a in r["assumptions"]]
    return "\n".join(lines)


# Only the towers' exchanges grow with the batch; the all-reduce does not.
_NEVER = ": the towers' exchanges grow faster with the batch than the compute"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _batch(b: int | None, none: str) -> str:
    return none if b is None else f"{b:,}"
