"""The input each network takes, and the checks that say so in one line instead of an error from inside a
layer: the paper network's 227x227 (fc6 takes exactly a 6x6 pool5), owt's 224x224 (any side from 63:
its pool5 is pooled to 6x6), and a batch (N, 3, H, W)."""

from __future__ import annotations

import torch

from alexnet.choices import INPUT_SIZE


def check_pool5(x: torch.Tensor) -> None:
    """The paper network's fc6 takes a 6x6 pool5; any other size is the wrong input size, so say that
    rather than let fc6 fail with a shape mismatch."""
    if x.shape[-2:] != (6, 6):
        size = INPUT_SIZE["paper"]
        raise ValueError(f"the paper network needs {size}x{size} input (any side from {size} to "
                         f"{PAPER_LARGEST_INPUT} gives the 6x6 pool5 fc6 takes), but pool5 is "
                         f"{x.shape[-2]}x{x.shape[-1]}; resize or crop the images to {size}x{size}")


# conv1 (11, stride 4, no padding) and three 3/2 pools keep pool5 at 6x6 for sides 227 to 258; 259 makes it
# 7x7 (tests/test_model.py runs both edges).
PAPER_LARGEST_INPUT = 258
# The smallest side conv1-pool5 reduce to at least 1x1 (conv1 stride 4, padding 0 or 2, three 3/2 pools);
# below it PyTorch fails deep inside with "Output size is too small" (tested at both edges).
SMALLEST_INPUT = {"paper": 67, "owt": 63}


def check_images(x: torch.Tensor, variant: str) -> None:
    """A batch (N, 3, H, W) large enough for ``variant``'s features, or a ValueError that says what to do,
    not an error from inside a layer: one image (3, H, W) would reach the LRN as 3 "images" of H channels
    (a wrong answer at some sizes, an error about towers at others); a CIFAR-sized image ends in pool3."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (N, 3, H, W), got {type(x).__name__}; "
                        f"convert with torch.as_tensor(...)")
    if not x.is_floating_point():
        raise TypeError(f"expected floating-point images, normalised as the network was trained, got {x.dtype} "
                        f"(alexnet.data.transforms.center_view(images, loaded.crop, loaded.norm) makes them "
                        f"from uint8 (N, H, W, 3) images, loaded = alexnet.weights.load_model(...))")
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (N, 3, H, W), got a tensor of shape {tuple(x.shape)}; "
                         f"for one image use x[None]")
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels (N, 3, H, W), got a tensor of shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < SMALLEST_INPUT[variant]:
        size = INPUT_SIZE[variant]
        need = f"{size}x{size} input" if variant == "paper" else \
            f"images of at least {SMALLEST_INPUT[variant]}x{SMALLEST_INPUT[variant]} (it was made for {size}x{size})"
        raise ValueError(f"the {variant} network needs {need}, got {x.shape[-2]}x{x.shape[-1]}; resize the "
                         f"images to {size}x{size}")
