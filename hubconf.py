"""torch.hub entry point. Weights come from a local file only; nothing is downloaded.

    model = torch.hub.load("path/to/alexnet", "alexnet", source="local")                      # paper init
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local", variant="owt", num_classes=10)
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local",
                           weights="alexnet-imagenet.safetensors")                               # trained
    model.names[model(x).argmax(1)]                                                              # readable class

With weights, the variant, class count and LRN convention are the file's (given ones must agree), and the
model is in eval mode and carries ``classes``, ``names`` and ``preprocessing`` (crop, normalization, mean,
std in 0-255 units, small: what became of images under 256) from the file. ``pretrained=True`` and unknown
arguments are refused in one line.
"""

import os
import sys

dependencies = ["torch"]

try:
    import alexnet as _package  # noqa: F401  (installed, or already on the path)
except ImportError:  # a plain clone (torch.hub's own download): the package lives under src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))


def alexnet(variant=None, num_classes=None, weights=None, **kwargs):
    """A new AlexNet, or with ``weights`` the trained one in a local file (nothing is downloaded).

    Without weights: ``AlexNet(variant, num_classes, dropout=, lrn=, init=)``, the paper network with 1000
    classes unless told otherwise.
    With weights (a .pt checkpoint or .safetensors file): the network in the file, in eval mode, carrying
    ``classes``, ``names`` and ``preprocessing``; its variant, class count and LRN convention come from the
    file, and any of them given here must agree with it. ``dropout`` still applies (for fine-tuning).
    A contradiction is a UserError and a wrong argument a TypeError, each in one line.
    """
    from alexnet.errors import UserError
    from alexnet.model import AlexNet
    from alexnet.weights import load_model

    # torchvision's old habit. pretrained=False asks for what a plain call gives, so it passes; True would
    # otherwise reach AlexNet as a bare TypeError, or worse, be mistaken for trained weights.
    if kwargs.pop("pretrained", False):
        raise TypeError("pretrained is not supported: nothing is downloaded; pass "
                        "weights='path/to/file.safetensors' (or a .pt checkpoint)")
    unknown = sorted(set(kwargs) - {"dropout", "lrn", "init"})
    if unknown:
        raise TypeError(f"alexnet() got unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"it takes variant, num_classes, weights, dropout, lrn, init")

    if weights is None:
        return AlexNet("paper" if variant is None else variant, 1000 if num_classes is None else num_classes,
                       **kwargs)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be the path of a local .pt or .safetensors file, not {weights!r} "
                        f"(for torchvision's ImageNet weights, convert its .pth with `alexnet import-torchvision`)")
    if "init" in kwargs:
        raise TypeError("init sets a new network's starting weights; it does not apply with weights=")
    lrn = kwargs.get("lrn")
    loaded = load_model(weights)
    asked = (loaded.variant if variant is None else variant,
             len(loaded.classes) if num_classes is None else num_classes,
             # lrn exists only in the paper network; AlexNet ignores it for owt, and so does this check.
             loaded.lrn if lrn is None or loaded.variant != "paper" else lrn)
    if asked != (loaded.variant, len(loaded.classes), loaded.lrn):
        wanted = "the network" if variant is None else f"the {variant} network"
        wanted += f" with {num_classes} classes" if num_classes is not None else ""
        wanted += f" (LRN {lrn})" if lrn is not None and loaded.variant == "paper" else ""
        raise UserError(f"{weights} holds the {loaded.variant} network with {len(loaded.classes)} classes"
                        f"{f' (LRN {loaded.lrn})' if loaded.lrn else ''}, not {wanted} asked for; "
                        f"leave variant, num_classes and lrn out to take them from the file")
    model = loaded.model
    if "dropout" in kwargs:
        _set_dropout(model, kwargs["dropout"])
    model.classes, model.names = loaded.classes, loaded.names
    model.preprocessing = {"crop": loaded.crop, "normalization": loaded.normalization,
                           "mean": loaded.norm.mean, "std": loaded.norm.std, "small": loaded.small}
    return model


def _set_dropout(model, p):
    """The loaded network was built with the default 0.5 (files do not record dropout); fine-tuning may want
    another, and ignoring the argument would hide that it did nothing."""
    from alexnet.train import set_dropout

    if not 0.0 <= p < 1.0:   # AlexNet(dropout=)'s rule
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    set_dropout(model, float(p))
