"""The choices and defaults the command line offers, held without torch.

Parsing argv reads only this module and config.py: `alexnet --help`, a usage error (`--epochs 0`) and
Ctrl-C or SIGTERM before the work starts answer at once, where importing torch first took seconds (more on
a cold disk). The modules that act on a choice take its names from here, so the two cannot drift apart.
"""

from __future__ import annotations

import re

from alexnet.errors import UserError

# The networks: the paper's, and torchvision's "one weird trick" variant (model.py).
VARIANTS = ("paper", "owt")
INITS = ("paper", "kaiming", "pytorch")
INPUT_SIZE = {"paper": 227, "owt": 224}
# The LRN conventions' names; their numbers are lrn.LRN_CONVENTIONS, keyed by these.
LRN_NAMES = ("paper", "cuda-convnet", "caffe")

# Data (data/decode.py, data/transforms.py, data/jpeg.py).
SMALL = ("upscale", "pad")   # what happens to an image whose shorter side is under 256
NORMALIZATIONS = ("mean-image", "channel", "imagenet")
QUALITY = 90                  # prepare --store jpeg: the quality stored images are encoded at

# Inference: dense evaluation's scales (dense.py), int8 calibration (quantize.py), export formats, the layer
# features and viz read by default.
SCALES = (256, 320, 384)
CALIBRATION_IMAGES = 256
EXPORT_FORMATS = ("safetensors", "onnx")
DEFAULT_LAYER = "relu7"

# `alexnet bench gpu --sections` (bench/gpu.py); "peak" is always measured.
GPU_SECTIONS = ("peak", "train", "lrn", "infer", "data")

# The named settings a --device choice offers; "cuda:N" is accepted besides them (device.py).
DEVICES = ("auto", "cpu", "cuda")
CUDA_DEVICE = re.compile(r"cuda(?::(\d+))?")


def device_setting(text: str) -> str:
    """``text`` if it names a device setting (auto, cpu, cuda or cuda:N), else a one-line UserError."""
    if text in DEVICES or CUDA_DEVICE.fullmatch(text):
        return text
    raise UserError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
