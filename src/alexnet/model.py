"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), to be read side by side with docs/paper-numbers.md.

Two variants share one class and one module layout (``features`` then ``classifier``):

  "paper"  the network as published (docs/paper-numbers.md section 1): 227x227 input, LRN after conv1 and conv2,
           overlapping 3/2 max pooling, and the two GPU towers kept apart by groups=2 in conv2, conv4,
           conv5 and in the LRN window. 60,965,224 parameters, 724,406,816 multiply-adds.
  "owt"    torchvision.models.alexnet ("One weird trick", docs/paper-numbers.md section 2): the same module tree and
           state_dict keys, so torchvision's weights load unchanged. 61,100,840 parameters.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import torch
from torch import nn

from alexnet.choices import INITS, VARIANTS
from alexnet.inputs import INPUT_SIZE, check_images, check_pool5
from alexnet.lrn import LRN_CONVENTIONS, LocalResponseNorm


# Readable names for every module, in forward order; summary() and the paper init use them.
LAYER_NAMES = {
    "paper": (
        "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2",
        "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
        "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8",
    ),
    "owt": (
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
        "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5", "avgpool",
        "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8",
    ),
}

# Paper section 5: "We initialized the neuron biases in the second, fourth, and fifth convolutional
# layers, as well as in the fully-connected hidden layers, with the constant 1 ... [and] the remaining
# layers with the constant 0." Weights: zero-mean Gaussian, standard deviation 0.01.
PAPER_INIT_STD = 0.01
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as a plain int: any integer type (NumPy's too) above 0, never a bool (True is not a count,
    however Python counts it); else a ValueError naming ``name``."""
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


def check_dropout(p: Any) -> float:
    """A drop probability as a float in [0, 1): 1 would drop everything and leave nothing to learn from."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1), got {p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return float(p)


def _paper_features(lrn: str) -> nn.Sequential:
    def norm() -> LocalResponseNorm:
        return LocalResponseNorm.from_convention(lrn, towers=2)

    return nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=0),               # conv1  3x227x227 -> 96x55x55
        nn.ReLU(inplace=True),
        norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),                               # pool1  -> 96x27x27
        nn.Conv2d(96, 256, kernel_size=5, stride=1, padding=2, groups=2),    # conv2  -> 256x27x27
        nn.ReLU(inplace=True),
        norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),                               # pool2  -> 256x13x13
        nn.Conv2d(256, 384, kernel_size=3, stride=1, padding=1),             # conv3  -> 384x13x13 (sees both towers)
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, stride=1, padding=1, groups=2),   # conv4  -> 384x13x13
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, stride=1, padding=1, groups=2),   # conv5  -> 256x13x13
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),                               # pool5  -> 256x6x6 = 9216
    )


def _paper_classifier(num_classes: int, dropout: float) -> nn.Sequential:
    # Dropout acts on the outputs of fc6 and fc7 (paper section 4.2).
    return nn.Sequential(
        nn.Linear(256 * 6 * 6, 4096),                                        # fc6
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),                                               # fc7
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, num_classes),                                        # fc8 (softmax lives in the loss)
    )


def _owt_features() -> nn.Sequential:
    # Same indices as torchvision/models/alexnet.py, so state_dict keys match.
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _owt_classifier(num_classes: int, dropout: float) -> nn.Sequential:
    # torchvision drops out the *inputs* of fc6 and fc7.
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    """AlexNet, either as published (``variant="paper"``) or as in torchvision (``variant="owt"``).

    Args:
        variant: "paper" (227x227 input, LRN, two towers) or "owt" (torchvision's layout, 224x224).
        num_classes: size of fc8.
        dropout: drop probability on the fully-connected layers (the paper's 0.5).
        lrn: LRN convention for the paper variant: "paper" (its default), "cuda-convnet" or "caffe". owt has
            no LRN and refuses any other convention; "paper" is let through there because it was every
            variant's default (a training config records it for owt runs too).
        init: "paper" (N(0, 0.01) weights, biases of 1 where the paper says), "kaiming" (He normal,
            zero biases) or "pytorch" (the layers' own defaults, which torchvision's alexnet uses).
            Defaults to "paper" for the paper variant and "pytorch" for owt.
    """

    def __init__(self, variant: str = "paper", num_classes: int = 1000, dropout: float = 0.5, *,
                 lrn: str | None = None, init: str | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        num_classes = check_positive_int(num_classes, "num_classes")
        dropout = check_dropout(dropout)
        if lrn is not None and lrn not in LRN_CONVENTIONS:
            raise ValueError(f"unknown LRN convention {lrn!r}; choose from {', '.join(LRN_CONVENTIONS)}")
        if variant == "owt" and lrn not in (None, "paper"):
            raise ValueError(f"the owt network has no LRN layers, so lrn={lrn!r} would do nothing; "
                             f"lrn applies to the paper variant only")
        lrn = lrn or "paper"
        init = init or ("paper" if variant == "paper" else "pytorch")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")

        self.variant, self.num_classes, self.init = variant, num_classes, init
        self.input_size = INPUT_SIZE[variant]
        if variant == "paper":
            self.lrn = lrn
            self.features = _paper_features(lrn)
            self.classifier = _paper_classifier(num_classes, dropout)
        else:
            self.features = _owt_features()
            # Lets owt take inputs other than 224 exactly as torchvision does; an identity at 224.
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = _owt_classifier(num_classes, dropout)
        if init == "paper":
            self._init_paper()
        elif init == "kaiming":
            self._init_kaiming()

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """Every module in forward order under its paper name: [("conv1", Conv2d), ("relu1", ReLU), ...]."""
        modules = list(self.features)
        if self.variant == "owt":
            modules.append(self.avgpool)
        modules += list(self.classifier)
        return list(zip(LAYER_NAMES[self.variant], modules, strict=True))

    def layer(self, name: str) -> nn.Module:
        """The module called ``name`` ("conv1", "norm2", "fc8", ...)."""
        for layer_name, module in self.named_layers():
            if layer_name == name:
                return module
        raise KeyError(f"no layer {name!r} in the {self.variant} network")

    def _init_paper(self) -> None:
        for name, module in self.named_layers():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=PAPER_INIT_STD)
                nn.init.constant_(module.bias, 1.0 if name in PAPER_BIAS_ONE else 0.0)

    def _init_kaiming(self) -> None:
        # He et al. 2015: variance 2 / fan_in keeps the scale of ReLU activations from layer to layer,
        # where the paper's fixed 0.01 shrinks it (and its biases of 1 then swamp the signal). Measured on
        # the demo set: N(0, 0.01) in the fc layers (torchvision's VGG init) stayed at chance for 4 epochs.
        for _, module in self.named_layers():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc8 with a fresh one of ``num_classes`` outputs (fine-tuning on new classes), initialised
        as ``self.init`` says (for a loaded network, the init its training run recorded)."""
        num_classes = check_positive_int(num_classes, "num_classes")
        old = self.classifier[-1]
        fc8 = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        if self.init == "paper":
            nn.init.normal_(fc8.weight, mean=0.0, std=PAPER_INIT_STD)
            nn.init.zeros_(fc8.bias)
        elif self.init == "kaiming":
            nn.init.kaiming_normal_(fc8.weight, nonlinearity="relu")
            nn.init.zeros_(fc8.bias)
        self.classifier[-1] = fc8
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> pool5 activations (N, 256, 6, 6)."""
        check_images(x, self.variant)
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """pool5 activations (N, 256, 6, 6) -> logits (N, num_classes)."""
        if self.variant == "owt":
            x = self.avgpool(x)
        else:
            check_pool5(x)
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), already normalised -> logits (N, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def to_fully_convolutional(self) -> nn.Module:
        """A copy of this network with fc6-fc8 as convolutions (fully_convolutional.py): the same logits at
        the native input size, a (classes, h, w) map of scores over a larger image."""
        from alexnet.fully_convolutional import FullyConvolutionalAlexNet

        return FullyConvolutionalAlexNet(self)

    def extra_repr(self) -> str:
        lrn = f", lrn={self.lrn!r}" if self.variant == "paper" else ""
        return f"variant={self.variant!r}, num_classes={self.num_classes}, init={self.init!r}{lrn}"


# ---- does a state_dict fit a network? (weights.py and checkpoint.py ask before loading) ----

def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, Any]) -> str:
    """What keeps ``state`` from loading where ``expected`` is: "" when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {_shape(state[k])}, expected {tuple(expected[k].shape)}" for k in expected
             if k in state and (not is_float(state[k]) or state[k].shape != expected[k].shape)]
    parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else "",
             _few(wrong, 2) if wrong else ""]
    return "; ".join(p for p in parts if p)


def guess_network(state: dict[str, Any]) -> str:
    """"the owt network with 1000 classes" when ``state`` fits one exactly, else ""."""
    fc8 = state.get("classifier.6.weight")
    if not is_float(fc8) or fc8.dim() != 2:
        return ""
    for variant in VARIANTS:
        with torch.device("meta"):
            expected = AlexNet(variant, num_classes=fc8.shape[0], init="pytorch").state_dict()
        if not state_mismatch(expected, state):
            return f"the {variant} network with {fc8.shape[0]} classes"
    return ""


def is_float(value: Any) -> bool:
    """A dense floating-point tensor with data (not a sparse one, nor one on the meta device)."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.layout == torch.strided
            and value.device.type != "meta")


def _shape(value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    if value.layout != torch.strided or value.device.type == "meta":
        return f"a {value.layout if value.layout != torch.strided else 'meta'} tensor without values to load"
    return str(tuple(value.shape)) + ("" if value.is_floating_point() else f" of {value.dtype} (not floating point)")


def _few(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def freeze(model: AlexNet, what: str) -> None:
    """Keep layers as they are (FREEZE_CHOICES): their weights take no gradient, so SGD, weight decay and
    momentum leave them alone, and with conv1-5 frozen, backward ends at fc6 (the features need no
    gradient): a step then costs about a forward pass and the classifier's backward."""
    if what == "none":
        return
    fc8 = fc8_prefix(model)
    for name, param in model.named_parameters():
        if name.startswith("features.") if what == "features" else not name.startswith(fc8):
            param.requires_grad_(False)


def fc8_prefix(model: AlexNet) -> str:
    """The name its fc8's parameters start with ("classifier.6." in the paper variant)."""
    last = model.classifier[-1]
    return next(name for name, module in model.named_modules() if module is last) + "."
