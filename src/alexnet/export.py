"""Weights for use elsewhere: safetensors with their meaning (see weights.py), or an ONNX model.

The ONNX model is the network alone: float32 input (N, 3, crop, crop), already normalised as the
metadata says, to logits (N, num_classes), with a free batch dimension. Its metadata_props carry the
classes, names and preprocessing as JSON; a per-pixel mean image is too large for them and stays in
the safetensors export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from alexnet.errors import UserError
from alexnet.files import atomic_write
from alexnet.weights import LoadedModel, load_model, preprocessing_description, save_weights

FORMATS = ("safetensors", "onnx")


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> LoadedModel:
    """Write the network in ``checkpoint`` (training .pt or safetensors) to ``out`` as ``fmt``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    loaded = load_model(checkpoint)
    if fmt == "safetensors":
        save_weights(loaded, out)
    else:
        export_onnx(loaded, out)
    return loaded


def export_onnx(loaded: LoadedModel, out: str | Path, opset: int | None = None) -> None:
    """``loaded``'s network as one self-contained .onnx file (weights inside, not beside it)."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before tracing)
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    model = loaded.model.eval()
    # Batch 2, not 1: torch.export would take a batch of 1 for a constant and fix it in the graph.
    example = torch.zeros(2, 3, loaded.crop, loaded.crop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals mean nothing to a user
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, opset_version=opset,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    norm = loaded.norm
    prep = preprocessing_description(loaded)
    if not norm.per_pixel:
        prep["mean"] = norm.mean.tolist()
    prep["std"] = None if norm.std is None else norm.std.tolist()
    program.model.metadata_props.update({
        "variant": loaded.variant, "num_classes": str(len(loaded.classes)), "lrn": loaded.lrn or "none",
        "classes": json.dumps(loaded.classes), "names": json.dumps(loaded.names),
        "preprocessing": json.dumps(prep), "metrics": json.dumps(loaded.metrics), "source": loaded.source})
    atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
