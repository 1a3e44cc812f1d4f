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


SUBCOMMANDS = (_add_summary,)


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
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `alexnet summary | head`: the reader left; say nothing more and do not flush into a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
