"""AlexNet as a fully-convolutional network: one pass over a whole image gives a map of class scores.

A fully-connected layer is a convolution whose filter covers its whole input (cs231n, "Converting FC
layers to CONV layers"): fc6 reads all 256x6x6 of pool5, so it is a 6x6 convolution with 4,096 filters,
its weight row for output j being that filter laid out as flatten() lays out pool5 (channel, row,
column); fc7 and fc8 are 1x1 convolutions. The features keep their towers (grouped conv2, conv4, conv5
and the per-tower LRN) unchanged; fc6, as in the paper, sees both towers.

At the native input (227 paper, 224 owt) pool5 is 6x6 and the map is 1x1: the original logits. Each
extra 32 pixels (the product of the strides, 4 x 2 x 2 x 2) add one row or column of pool5 and so of the
map, position (i, j) scoring the window of ``input_size`` pixels whose top-left corner is (32 i, 32 j):
what the original network gives for that crop, except that the zero padding of the convolutions sees the
window's real surroundings instead of zeros (so the two agree in spirit, not to rounding). owt's
adaptive average pool, an identity at 224, is left out: it would squeeze a larger pool5 back to 6x6
instead of sliding.

    fcn = model.to_fully_convolutional().eval()
    scores = fcn(images)                        # (N, classes, h, w); (h, w) = fcn.map_size(H, W)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.inputs import check_images

STRIDE = 32            # input pixels per step of the score map: conv1's 4 times three 2-pixel pools
POOL5 = 6              # pool5's side at the native input, fc6's filter size


def map_side(side: int, input_size: int, padding: int = 0) -> int:
    """Score-map positions along an input side of ``side`` pixels, by the layers' arithmetic (conv1 11/4
    with ``padding``, three 3/2 pools, fc6 6 wide); 0 when the side is under ``input_size``."""
    if side < input_size:
        return 0
    x = (side + 2 * padding - 11) // 4 + 1
    for _ in range(3):
        x = (x - 3) // 2 + 1
    return x - POOL5 + 1


def fitted_side(side: int, input_size: int) -> int:
    """The largest side ``input_size + 32 k`` not above ``side``: the further pixels, up to 31, add no
    position to the paper network's score map (only what the zero padding of conv2-conv5 sees at the edge);
    owt's padded conv1 would gain one more with the 31st, which trimming to 224 + 32 k gives up."""
    return input_size + (side - input_size) // STRIDE * STRIDE if side >= input_size else side


class FullyConvolutionalAlexNet(nn.Module):
    """An AlexNet whose fc6, fc7 and fc8 are convolutions (see the module docstring). Built by
    ``AlexNet.to_fully_convolutional()``; its weights are a copy, so the two networks train apart.

    The module tree keeps the original's names and indices (``features``, ``classifier``; fc6 is
    ``classifier.0`` in the paper variant, ``classifier.1`` in owt), with 4-d weights in the classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.variant, self.num_classes, self.input_size = model.variant, model.num_classes, model.input_size
        self.stride = STRIDE
        self.features = copy.deepcopy(model.features)
        self.classifier = nn.Sequential(*(_as_conv(m) for m in model.classifier))
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), normalised, H and W at least input_size -> scores (N, classes, h, w)."""
        check_images(x, self.variant)
        if min(x.shape[-2:]) < self.input_size:
            raise ValueError(f"the fully-convolutional {self.variant} network needs images of at least "
                             f"{self.input_size}x{self.input_size}, got {x.shape[-2]}x{x.shape[-1]}")
        return self.classifier(self.features(x))

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the score map for an input of ``height`` x ``width``."""
        padding = self.features[0].padding[0]
        return map_side(height, self.input_size, padding), map_side(width, self.input_size, padding)

    def window(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input pixels that map position (i, j) scores."""
        top, left = STRIDE * i, STRIDE * j
        return top, left, top + self.input_size, left + self.input_size

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, num_classes={self.num_classes}, stride={self.stride}"


class MatrixConv2d(nn.Conv2d):
    """A stride-1, unpadded convolution computed as the matrix product it is: the weight (out, C*k*k) times
    the input's k x k patches. oneDNN re-lays out a convolution's weight at every call, which for fc6's
    38 million weights costs more than the product itself at small batches (a batch of 2 was 8x slower
    per image than a batch of 32, measured on a Zen 4 CPU); a matrix product reads the weight as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k = self.kernel_size[0]
        h, w = h - k + 1, w - k + 1
        weight = self.weight.flatten(1)                                         # (out, C*k*k)
        # Sizes spelled out rather than -1: an empty batch has no elements to infer a -1 from.
        if k == 1:
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, weight.shape[1])    # free in channels_last memory
        else:
            rows = F.unfold(x, k).transpose(1, 2).reshape(n * h * w, weight.shape[1])   # (positions, C*k*k)
        # As a Linear computes it (F.linear), so that autocast and the CPU's kernels treat it as one.
        y = F.linear(rows, weight, self.bias)
        return y.view(n, h, w, weight.shape[0]).permute(0, 3, 1, 2)              # NCHW, channels_last memory


def _as_conv(module: nn.Module) -> nn.Module:
    """A Linear as the convolution it is, the first one (fc6) over pool5's 256x6x6 and the others 1x1;
    anything else (ReLU, Dropout) as it is."""
    if not isinstance(module, nn.Linear):
        return copy.deepcopy(module)
    side = POOL5 if module.in_features == 256 * POOL5 * POOL5 else 1
    channels = module.in_features // (side * side)
    w = module.weight
    # Made on the meta device: a default init of fc6's 38 million weights would only be overwritten.
    conv = MatrixConv2d(channels, module.out_features, kernel_size=side, device="meta", dtype=w.dtype)
    conv = conv.to_empty(device=w.device)
    with torch.no_grad():
        # flatten() read pool5 as (channel, row, column): the same order view() gives the filter.
        conv.weight.copy_(w.view(module.out_features, channels, side, side))
        conv.bias.copy_(module.bias)
    conv.weight.requires_grad_(w.requires_grad)
    conv.bias.requires_grad_(module.bias.requires_grad)
    return conv
