"""Per-layer output shapes, parameter counts and multiply-adds, counted from the modules themselves.

Shapes come from running the network (on the "meta" device when called from the CLI, so nothing is
allocated); parameters from each module's tensors; multiply-adds from the recorded output shape:
    conv:   output elements x (in_channels / groups) x kernel_h x kernel_w
    linear: output elements x in_features
Biases, ReLU, LRN and pooling add no multiply-adds in this (the usual) count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from alexnet.model import AlexNet, check_positive_int


@dataclass
class LayerSummary:
    name: str            # paper name: conv1, norm1, pool1, fc6, ...
    module: str          # where it lives in the state_dict: features.0, classifier.6, ...
    kind: str            # class name: Conv2d, LocalResponseNorm, ...
    output_shape: list[int]  # per image: [C, H, W] or [features]
    params: int
    macs: int


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def summarize(model: AlexNet, input_size: int | None = None) -> dict:
    """Run one image through ``model`` and describe every layer.

    Returns ``{"variant", "input_shape", "layers": [LayerSummary as dict, ...], "params", "macs",
    "neurons"}``; "neurons" counts conv and fc outputs, the paper's "650,000 neurons".
    """
    size = model.input_size if input_size is None else check_positive_int(input_size, "input_size")
    where = {id(m): f"{prefix}.{i}" for prefix in ("features", "classifier")
             for i, m in enumerate(getattr(model, prefix))}
    where[id(getattr(model, "avgpool", None))] = "avgpool"

    rows: list[LayerSummary] = []
    hooks = []
    for name, module in model.named_layers():
        def record(mod, _inputs, output, name=name):
            rows.append(LayerSummary(
                name=name, module=where[id(mod)], kind=type(mod).__name__,
                output_shape=list(output.shape[1:]),
                params=sum(p.numel() for p in mod.parameters(recurse=False)),
                macs=_macs(mod, output)))
        hooks.append(module.register_forward_hook(record))

    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    neurons = sum(_prod(r.output_shape) for r in rows if r.kind in ("Conv2d", "Linear"))
    return {
        "variant": model.variant,
        "input_shape": [3, size, size],
        "layers": [asdict(r) for r in rows],
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r.macs for r in rows),
        "neurons": neurons,
    }


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def format_summary(summary: dict) -> str:
    """The summary as an aligned text table with totals."""
    header = ("layer", "module", "type", "output (C x H x W)", "params", "multiply-adds")
    body = [("input", "", "", _shape(summary["input_shape"]), "", "")]
    body += [(r["name"], r["module"], r["kind"], _shape(r["output_shape"]),
              f"{r['params']:,}", f"{r['macs']:,}") for r in summary["layers"]]
    total = ("total", "", "", "", f"{summary['params']:,}", f"{summary['macs']:,}")
    widths = [max(len(row[i]) for row in (header, *body, total)) for i in range(len(header))]
    right = {4, 5}

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = (f"AlexNet variant={summary['variant']}, input {_shape(summary['input_shape'])}, "
             f"{summary['neurons']:,} neurons")
    return "\n".join([title, line(header), rule, *map(line, body), rule, line(total)])


def _shape(shape: list[int]) -> str:
    return " x ".join(str(s) for s in shape)
