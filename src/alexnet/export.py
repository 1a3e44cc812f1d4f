"""Weights for use elsewhere: safetensors with their meaning (see weights.py), or an ONNX model.

The ONNX model comes in two forms, both with a free batch dimension and the classes, names and
preprocessing as JSON in their metadata_props:

  network alone   float32 (N, 3, crop, crop), already normalised as the metadata says -> logits. A
                  per-pixel mean image is too large for the metadata and stays in the safetensors export:
                  a mean-image model in this form cannot be fed from its .onnx file alone.
  image input     uint8 (N, 256, 256, 3) RGB, the fixed preprocessing done (shorter side resized to 256,
                  bilinear, then the centre 256x256: decode.resize_center) -> logits and probabilities.
                  The graph holds the rest of what `alexnet predict` does with 1 view: the centre crop,
                  the mean (the mean image's own centre crop) and std, the NCHW layout.

The image input starts at 256x256, not at the crop, because that is where the mean image's pixels are
defined: the graph then picks the crop position exactly as predict does (torchvision's rounding, 14 for
227) and the user has only the resize to reproduce.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from alexnet.choices import EXPORT_FORMATS
from alexnet.data.decode import FIXED_SIZE, PAD_FILL
from alexnet.data.transforms import view_positions
from alexnet.errors import UserError
from alexnet.files import head, replaceable, utf8_text, write_or_say
from alexnet.weights import LoadedModel, load_model, preprocessing_description, save_weights

FORMATS = EXPORT_FORMATS


def export(checkpoint: str | Path, fmt: str, out: str | Path, image_input: bool = False) -> LoadedModel:
    """Write the network in ``checkpoint`` (training .pt or safetensors) to ``out`` as ``fmt``.

    image_input: ONNX only; the graph takes uint8 images and preprocesses them itself (see the module doc)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if image_input and fmt != "onnx":
        raise UserError(f"image input (--image-input) is an ONNX option; {fmt} keeps the preprocessing's tensors "
                        f"beside the weights instead")
    loaded = load_model(checkpoint)
    if fmt == "safetensors":
        save_weights(loaded, out)
    else:
        export_onnx(loaded, out, image_input=image_input)
    return loaded


def export_onnx(loaded: LoadedModel, out: str | Path, opset: int | None = None, image_input: bool = False) -> None:
    """``loaded``'s network as one self-contained .onnx file (weights inside, not beside it). An existing
    ``out`` is replaced only where it is an ONNX file from torch.onnx (UserError otherwise)."""
    replaceable(out, is_onnx_file, "an ONNX network from torch.onnx")
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before tracing)
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    model = loaded.model.eval()
    if image_input:
        model = ImageInput(loaded).eval()
        # Batch 2, not 1: torch.export would take a batch of 1 for a constant and fix it in the graph.
        example = torch.zeros(2, FIXED_SIZE, FIXED_SIZE, 3, dtype=torch.uint8)
        outputs = ["logits", "probabilities"]
    else:
        example = torch.zeros(2, 3, loaded.crop, loaded.crop)
        outputs = ["logits"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals mean nothing to a user
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, opset_version=opset,
                                    input_names=["images"], output_names=outputs,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.model.metadata_props.update(_metadata(loaded, image_input))
    # A failed write (a full disk, a folder that cannot hold it) is one line, as the safetensors export's is.
    write_or_say(out, lambda tmp: program.save(tmp, external_data=False),
                 need=sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def is_onnx_file(path: Path) -> bool:
    """An ONNX file torch.onnx wrote: a ModelProto whose first fields are its IR version (field 1, a varint)
    and "pytorch" as its producer (field 2). "pytorch" anywhere in the first bytes was not enough: a
    checkpoint written on a host named pytorch-job-0 has it there (the zip names its folder after the
    temporary file), and so do pytorch_model.bin and a requirements.txt of pytorch-lightning."""
    return re.match(rb"\x08[\x80-\xff]{0,9}[\x00-\x7f]\x12\x07pytorch", head(path, 32)) is not None


def _metadata(loaded: LoadedModel, image_input: bool) -> dict[str, str]:
    norm = loaded.norm
    prep = preprocessing_description(loaded)
    if not norm.per_pixel:
        prep["mean"] = norm.mean.tolist()
    prep["std"] = None if norm.std is None else norm.std.tolist()
    if image_input:
        top, left, _ = _centre(loaded.crop)
        prep["in_graph"] = f"centre {loaded.crop}x{loaded.crop} crop at (top {top}, left {left}), mean, std, NCHW"
        # A network trained on padded small images must be fed them padded, or it sees other pictures.
        pad = (f" (shorter side under {FIXED_SIZE}: padded with {PAD_FILL} instead, unscaled, as "
               f"decode.pad_small does)") if loaded.small == "pad" else ""
        contract = (f"images: uint8 (N, {FIXED_SIZE}, {FIXED_SIZE}, 3) RGB, shorter side resized to {FIXED_SIZE} "
                    f"(bilinear){pad} and centre-cropped to {FIXED_SIZE}x{FIXED_SIZE}; outputs: logits and "
                    f"probabilities (N, {len(loaded.classes)})")
    else:
        contract = (f"images: float32 (N, 3, {loaded.crop}, {loaded.crop}), normalised as preprocessing says; "
                    f"output: logits (N, {len(loaded.classes)})")
    return {"variant": loaded.variant, "num_classes": str(len(loaded.classes)), "lrn": loaded.lrn or "none",
            "classes": json.dumps(loaded.classes), "names": json.dumps(loaded.names), "input": contract,
            "preprocessing": json.dumps(prep), "metrics": json.dumps(loaded.metrics),
            "source": utf8_text(loaded.source)}   # a path: its bytes may be of another encoding than UTF-8


def _centre(crop: int) -> tuple[int, int, bool]:
    # predict's 1-view test crop (transforms.center_view), so the graph reads the same pixels.
    return view_positions(FIXED_SIZE, FIXED_SIZE, crop)[4]


class ImageInput(nn.Module):
    """uint8 (N, 256, 256, 3) RGB -> (logits, probabilities): `alexnet predict`'s 1-view path after decoding.

    Only the mean image's pixels under the crop are kept: they are all that predict reads of it.
    """

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.network = loaded.model
        self.crop = loaded.crop
        self.top, self.left, _ = _centre(loaded.crop)
        mean = loaded.norm.mean.float()
        if loaded.norm.per_pixel:
            mean = mean[self.top:self.top + self.crop, self.left:self.left + self.crop]
        self.register_buffer("mean", mean.contiguous())
        # The paper feeds raw 0-255 values minus the mean: no std, so no Div node in the graph either.
        self.register_buffer("std", None if loaded.norm.std is None else loaded.norm.std.float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[:, self.top:self.top + self.crop, self.left:self.left + self.crop].float() - self.mean
        if self.std is not None:
            x = x / self.std
        logits = self.network(x.permute(0, 3, 1, 2))
        return logits, logits.softmax(1)
