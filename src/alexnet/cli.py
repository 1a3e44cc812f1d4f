"""The `alexnet` command: parse argv, call the library, print. Nothing else lives here.

Every subcommand has --help. Bad input (an unknown choice, a non-positive count, a missing path, or a
UserError raised by the library) ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from alexnet.errors import UserError
from alexnet.lrn import LRN_CONVENTIONS
from alexnet.model import VARIANTS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse's default prints the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- argument types: each rejects bad values with a message argparse turns into one line ----

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


# ---- subcommands ----

def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="per-layer output shapes, parameters and multiply-adds",
                       description="Per-layer output shape, parameters and multiply-adds of the network, "
                                   "counted from the modules, with totals.")
    p.add_argument("--variant", choices=VARIANTS, default="paper",
                   help="paper: the 2012 network (227x227, LRN, two towers); owt: torchvision's (default: paper)")
    p.add_argument("--num-classes", type=positive_int, default=1000, help="outputs of fc8 (default: 1000)")
    p.add_argument("--lrn", choices=tuple(LRN_CONVENTIONS), default="paper",
                   help="LRN convention of the paper variant (default: paper)")
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="input height and width (default: 227 for paper, 224 for owt)")
    p.add_argument("--json", action="store_true",
                   help='print {"layers": [...], "params": N, "macs": N, ...} instead of a table')
    p.set_defaults(run=_run_summary)


def _run_summary(args) -> int:
    import torch

    from alexnet.model import AlexNet
    from alexnet.summary import format_summary, summarize

    # The meta device gives every shape without allocating or initialising 60M parameters.
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
    p.add_argument("--out", required=True, type=Path, help="folder to write (must be empty or a demo set)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args) -> int:
    from alexnet.data.demo import write_demo_set

    out = write_demo_set(args.out, seed=args.seed)
    print(out)
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _add_train(sub) -> None:
    import dataclasses

    from alexnet.config import TrainConfig

    p = sub.add_parser("train", help="train AlexNet (the paper's recipe, or a preset); resumable; torchrun for DDP",
                       description="Train AlexNet on DATA/train, validating on DATA/val each epoch. Flags override "
                                   "the preset. Under torchrun it runs data-parallel (DDP).",
                       epilog="examples:  alexnet train --preset demo --out runs/demo;  "
                              "alexnet train --data /imagenet --out runs/paper;  "
                              "torchrun --nproc_per_node=2 -m alexnet train --data DIR --out RUN;  "
                              "alexnet train --out RUN --resume")
    types = {"int": _non_negative_int, "float": float, "str": str}
    special = {"epochs": positive_int, "batch_size": positive_int, "patience": positive_int,
               "step_epochs": positive_int, "log_every": positive_int, "lr": _positive_float,
               "lr_gamma": _positive_float, "dropout": _fraction, "momentum": _fraction,
               "label_smoothing": _fraction, "data": existing_path}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
            continue
        kind = f.type.replace(" | None", "")
        p.add_argument(flag, type=special.get(f.name, types[kind]), choices=meta["choices"], default=None,
                       metavar=None if meta["choices"] else f.name.upper(),
                       help=f"{meta['help']} (paper default: {f.default})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    import dataclasses

    from alexnet.config import TrainConfig, resolve
    from alexnet.train import train

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if "data" in given:
        given["data"] = str(given["data"])
    config = resolve(given.pop("preset", "paper"), given)
    train(config, resume=args.resume, given=given)
    return 0


SUBCOMMANDS = (_add_summary, _add_demo_data, _add_train)



def build_parser() -> argparse.ArgumentParser:
    from alexnet import __version__

    parser = _Parser(prog="alexnet", description="AlexNet (Krizhevsky et al., 2012), faithful to the paper.")
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except UserError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        # The training loop's own ends: a signal (already reported, last.pt written) or a diverged loss.
        from alexnet.train import NonFiniteLoss, Stopped

        if isinstance(e, Stopped):
            return e.exit_code
        if isinstance(e, NonFiniteLoss):
            print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `alexnet summary | head`: the reader left; say nothing more and do not flush into a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
