"""torch.hub entry point. Weights come from a local file only; nothing is downloaded.

    model = torch.hub.load("path/to/alexnet", "alexnet", source="local")                      # paper init
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local", variant="owt",
                           weights="alexnet-imagenet.safetensors")                               # trained
    model.names[model(x).argmax(1)]                                                              # readable class

With weights, the model is in eval mode and carries ``classes``, ``names`` and ``preprocessing``
(crop, normalization, mean, std in 0-255 units) from the file.
"""

import os
import sys

dependencies = ["torch"]

try:
    import alexnet as _package  # noqa: F401  (installed, or already on the path)
except ImportError:  # a plain clone (torch.hub's own download): the package lives under src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))


def alexnet(variant="paper", num_classes=1000, weights=None, **kwargs):
    """AlexNet(variant, num_classes, **kwargs); with ``weights`` (a local .pt checkpoint or safetensors
    file) the trained network in it, which must be of that variant and class count."""
    from alexnet.errors import UserError
    from alexnet.model import AlexNet
    from alexnet.weights import load_model

    if weights is None:
        return AlexNet(variant, num_classes=num_classes, **kwargs)
    loaded = load_model(weights)
    lrn = kwargs.pop("lrn", loaded.lrn)
    if (loaded.variant, len(loaded.classes), loaded.lrn) != (variant, num_classes, lrn if variant == "paper" else None):
        raise UserError(f"{weights} holds the {loaded.variant} network with {len(loaded.classes)} classes"
                        f"{f' (LRN {loaded.lrn})' if loaded.lrn else ''}, not the {variant} network with "
                        f"{num_classes} classes asked for")
    model = loaded.model
    model.classes, model.names = loaded.classes, loaded.names
    model.preprocessing = {"crop": loaded.crop, "normalization": loaded.normalization,
                           "mean": loaded.norm.mean, "std": loaded.norm.std}
    return model
