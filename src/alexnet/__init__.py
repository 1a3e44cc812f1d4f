"""alexnet: the 2012 AlexNet, faithful to the paper, fast, and usable.

The public names below are imported on first use (PEP 562), not here: importing any submodule imports
this package first, and ``alexnet.reference`` (NumPy only) must work where torch is not installed.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "AlexNet": "alexnet.model",
    "VARIANTS": "alexnet.model",
    "INPUT_SIZE": "alexnet.model",
    "LocalResponseNorm": "alexnet.lrn",
    "LRN_CONVENTIONS": "alexnet.lrn",
    "summarize": "alexnet.summary",
    "format_summary": "alexnet.summary",
}

__all__ = ["AlexNet", "LocalResponseNorm", "LRN_CONVENTIONS", "VARIANTS", "INPUT_SIZE", "summarize", "format_summary"]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ provides these
    from alexnet.lrn import LRN_CONVENTIONS, LocalResponseNorm
    from alexnet.model import INPUT_SIZE, VARIANTS, AlexNet
    from alexnet.summary import format_summary, summarize


def __getattr__(name: str):
    if name not in _LAZY:
        # AttributeError (not ImportError) lets `from alexnet import kernels` fall through to the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value   # later lookups find it directly and skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
