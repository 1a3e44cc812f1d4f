"""alexnet: the 2012 AlexNet, faithful to the paper, fast, and usable."""

import os

# Transparent huge pages for PyTorch's large CPU buffers: every training step allocates tens of MB of
# fresh activations, and faulting them in 4 KB pages cost more than the LRN (see README, Speed). Read
# by torch at its first allocation, so it must be set before torch is imported; the user's value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from alexnet.lrn import LRN_CONVENTIONS, LocalResponseNorm
from alexnet.model import INPUT_SIZE, VARIANTS, AlexNet
from alexnet.summary import format_summary, summarize

__all__ = ["AlexNet", "LocalResponseNorm", "LRN_CONVENTIONS", "VARIANTS", "INPUT_SIZE", "summarize", "format_summary"]
__version__ = "0.1.0"
