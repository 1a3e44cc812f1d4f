"""torch.hub entry point. Weights come from a local file only; nothing is downloaded.

    model = torch.hub.load("path/to/alexnet", "alexnet", source="local")                      # paper init
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local", variant="owt", num_classes=10)
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local",
                           weights="alexnet-imagenet.safetensors")                               # trained
    [model.names[i] for i in model(x).argmax(1).tolist()]                                        # readable classes

With weights, the variant, class count and LRN convention are the file's (given ones must agree), and the
model is in eval mode and carries ``classes``, ``names`` and ``preprocessing`` (crop, normalization, mean,
std in 0-255 units, small: what became of images under 256) from the file. ``pretrained=True`` and unknown
arguments are refused in one line.

The code is this directory's: its src/alexnet is put first on the path, ahead of any installed alexnet
(another checkout's, say). A process that has already imported alexnet from elsewhere keeps that one,
since Python imports a package once; a warning names both.
"""

import os
import sys
import warnings

dependencies = ["torch"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")


def _import_package():
    """alexnet from this directory's src/ where there is one (a checkout, or torch.hub's own download),
    else the installed one; a warning where the process already holds another."""
    ours = os.path.join(_SRC, "alexnet")
    if not os.path.isdir(ours):
        import alexnet
        return alexnet
    # Left on the path after the import: spawned worker processes (DataLoader, torchrun) rebuild sys.path
    # from this one and must import the same package.
    if _SRC in sys.path:
        sys.path.remove(_SRC)
    sys.path.insert(0, _SRC)
    import alexnet
    where = os.path.dirname(os.path.realpath(getattr(alexnet, "__file__", None) or ours))
    if where != os.path.realpath(ours):   # imported before this hub load, from elsewhere
        warnings.warn(f"this process already imported alexnet from {where}; torch.hub runs that code, not "
                      f"{ours} (a package is imported once per process: load from a fresh Python to use this "
                      f"checkout's)", stacklevel=2)
    return alexnet


_import_package()


def alexnet(variant=None, num_classes=None, weights=None, **kwargs):
    """A new AlexNet, or with ``weights`` the trained one in a local file (nothing is downloaded).

    Without weights: ``AlexNet(variant, num_classes, dropout=, lrn=, init=)``, the paper network with 1000
    classes unless told otherwise.
    With weights (a .pt checkpoint or .safetensors file): the network in the file, in eval mode, carrying
    ``classes``, ``names`` and ``preprocessing``; its variant, class count and LRN convention come from the
    file, and any of them given here must agree with it. Dropout is the training run's where the file records
    it (a .pt checkpoint does, a .safetensors file does not: 0.5 then); ``dropout`` given here overrides it
    (for fine-tuning).
    A contradiction is a UserError and a wrong argument a TypeError, each in one line.
    """
    from alexnet.errors import UserError
    from alexnet.model import AlexNet, check_positive_int
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
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes")
    loaded = load_model(weights)
    # owt has no LRN; "paper" passes there as AlexNet lets it (every variant's old default).
    if loaded.variant == "owt" and lrn not in (None, "paper"):
        raise UserError(f"{weights} holds the owt network, which has no LRN layers, so lrn={lrn!r} would do "
                        f"nothing; leave lrn out")
    asked = (loaded.variant if variant is None else variant,
             len(loaded.classes) if num_classes is None else num_classes,
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
    """The loaded network has its training run's dropout (a checkpoint records it) or the default 0.5 (a
    safetensors file does not); fine-tuning may want another, and ignoring the argument would hide that it
    did nothing."""
    from alexnet.model import check_dropout
    from alexnet.train import set_dropout

    set_dropout(model, check_dropout(p))   # AlexNet(dropout=)'s rule
