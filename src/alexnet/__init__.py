"""alexnet: the 2012 AlexNet, faithful to the paper, fast, and usable."""

from alexnet.lrn import LRN_CONVENTIONS, LocalResponseNorm
from alexnet.model import INPUT_SIZE, VARIANTS, AlexNet
from alexnet.summary import format_summary, summarize

__all__ = ["AlexNet", "LocalResponseNorm", "LRN_CONVENTIONS", "VARIANTS", "INPUT_SIZE", "summarize", "format_summary"]
__version__ = "0.1.0"
