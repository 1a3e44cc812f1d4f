"""Post-training int8 quantization of a trained AlexNet, for inference on CPUs.

    int8 = quantize_int8(model, batches)     # batches: normalised (N, 3, S, S) float inputs, as model takes
    logits = int8(x)                         # same input, same (N, num_classes) float32 logits

Why: a CPU without bf16 (AVX2 only) runs fp32 at its matmul peak already; int8 products do about twice
the work per instruction. Static quantization (activation ranges fixed from calibration batches, PyTorch's
FX graph mode) is what a user would pick for a convolutional network: it needs no retraining and keeps
whole conv-ReLU-pool chains in int8 between layers.

What stays float: the LRN layers (no int8 kernel exists, and their per-pixel division by a power of a
window sum would not survive 8 bits), and fc8, whose output is the logits themselves: quantized, they are
rounded to steps of (logit range) / 127, which alone moved 3% of the demo network's predictions (see
FLOAT_LAYERS). fc8 is under 1% of the multiply-adds, so keeping it float costs no measurable speed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from alexnet.data.transforms import center_view
from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet
from alexnet.weights import LoadedModel

CPU_ONLY = ("--precision int8 runs on the CPU only (PyTorch's quantized kernels are CPU-only): use --device cpu, "
            "or bf16/fp16 on a GPU")

# Images a calibration sees by default. On the demo network (as below, fc8 in float): 32, 64, 256 and 512
# train images gave mean |logit - fp32| 0.086, 0.082, 0.075, 0.067, argmax = fp32's on 99.3-99.7% of
# val, top-1 90.0-90.3%; calibration took 7, 6, 14 and 27 s on 2 cores. The ranges settle early; 256 is
# a few seconds more than the fixed cost of converting 61M weights. (CALIBRATION_IMAGES: in choices.py.)

# Images per calibration forward pass, whatever batches the caller reads them in. The x86 qconfig's
# HistogramObserver rescales its histogram batch by batch, so the ranges (and every int8 output after
# them) depend on how the same images are split: with the user's --batch-size, a speed setting, 1 and 64
# gave different losses. 64 is evaluate's default --batch-size, so that evaluate's default numbers are
# those it gave before; its largest activation (conv1's, 64x96x55x55 floats) is 74 MB.
CALIBRATION_BATCH = 64

# Layers kept in float besides LRN, by paper name. Measured on the trained demo network (paper variant,
# 10 classes, 300 val images, centre view, calibrated on 256 train images; fp32 top-1 90.0%):
#   all int8                 top-1 88.7%, argmax = fp32's on 96.3%, mean |logit - fp32| 0.18
#   fc8 float                top-1 90.3%, argmax = fp32's on 99.7%, mean |logit - fp32| 0.075
#   conv1 float              top-1 88.3%, 96.3%, 0.18 (the input's 7-bit rounding is not what hurts)
#   conv1 and fc8 float      top-1 89.7%, 99.7%, 0.071, and slower
# Per-tensor instead of per-channel weights: 89.3%, 96.3%, 0.18 (no better; per-channel is the default).
FLOAT_LAYERS: tuple[str, ...] = ("fc8",)


def engine() -> str:
    """The quantized kernel library for this CPU: "x86" (fbgemm and oneDNN, AVX2 or better), else ARM's."""
    supported = torch.backends.quantized.supported_engines
    for name in ("x86", "qnnpack"):
        if name in supported:
            return name
    raise UserError("--precision int8 needs PyTorch's quantized CPU kernels, which this PyTorch build lacks")


class Int8AlexNet(nn.Module):
    """The quantized graph, and what the network it came from was (variant, classes, input size)."""

    def __init__(self, net: nn.Module, source: AlexNet) -> None:
        super().__init__()
        self.net = net
        self.variant, self.num_classes, self.input_size = source.variant, source.num_classes, source.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), already normalised, float32 on the CPU -> logits (N, num_classes) float32."""
        return self.net(x)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, num_classes={self.num_classes}, int8"


def quantize_int8(model: AlexNet, batches: Iterable[torch.Tensor], *, per_channel: bool = True,
                  float_layers: Iterable[str] = FLOAT_LAYERS) -> Int8AlexNet:
    """An int8 copy of ``model`` whose activation ranges come from running ``batches`` through it.

    The images run in batches of CALIBRATION_BATCH however ``batches`` splits them, so the same images in
    the same order give the same network. ``model`` is left as it was. per_channel: one weight scale per
    output channel (the default, as the x86 backend recommends) or one per layer; float_layers: paper names
    ("conv1", "fc8") kept in float.
    """
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise UserError(CPU_ONLY)
    backend = engine()
    torch.backends.quantized.engine = backend   # process-wide: convert_fx packs weights for this engine
    net = _traceable(model)
    names = _module_names(model)
    unknown = [n for n in float_layers if n not in names]
    if unknown:
        raise ValueError(f"no layer {', '.join(unknown)} in the {model.variant} network")

    qconfig = get_default_qconfig(backend)
    if not per_channel:
        from torch.ao.quantization import QConfig, default_weight_observer
        qconfig = QConfig(activation=qconfig.activation, weight=default_weight_observer)
    mapping = QConfigMapping().set_global(qconfig).set_object_type(LocalResponseNorm, None)
    for name in float_layers:
        mapping.set_module_name(names[name], None)
    # LRN's forward branches on the input (native kernel or not), which FX cannot trace; kept a leaf, it
    # runs as the float module between a dequantize and a quantize.
    custom = PrepareCustomConfig().set_non_traceable_module_classes([LocalResponseNorm])

    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao's pt2e flow; that flow
        # needs another package and torch.export, and this one is still what ships inside PyTorch.
        warnings.simplefilter("ignore")
        example = torch.zeros(1, 3, model.input_size, model.input_size)
        prepared = prepare_fx(net, mapping, example_inputs=(example,), prepare_custom_config=custom)
        seen = 0
        with torch.inference_mode():
            for x in rebatch(batches, CALIBRATION_BATCH):
                prepared(x.float())
                seen += len(x)
        if not seen:
            raise UserError("--precision int8: no readable image to calibrate on")
        int8 = convert_fx(prepared)
    return Int8AlexNet(int8, model).eval()


def rebatch(batches: Iterable[torch.Tensor], size: int) -> Iterable[torch.Tensor]:
    """The rows of ``batches``, in order, in batches of ``size`` (the last one what is left)."""
    held: list[torch.Tensor] = []
    count = 0
    for x in batches:
        while len(x):
            part, x = x[:size - count], x[size - count:]
            held.append(part)
            count += len(part)
            if count == size:
                yield torch.cat(held)
                held, count = [], 0
    if held:
        yield torch.cat(held)


def _traceable(model: AlexNet) -> nn.Sequential:
    """A copy of ``model`` as one Sequential: AlexNet.forward checks pool5's size with Python control flow,
    which FX cannot trace. A deep copy, so that observers and fusion never touch the caller's network."""
    head = [copy.deepcopy(model.avgpool)] if model.variant == "owt" else []
    net = nn.Sequential(copy.deepcopy(model.features), *head, nn.Flatten(), copy.deepcopy(model.classifier))
    return net.float().to(memory_format=torch.contiguous_format).eval()


def _module_names(model: AlexNet) -> dict[str, str]:
    """Paper layer name -> the module's qualified name in _traceable's Sequential ("conv1" -> "0.0")."""
    names = [f"0.{i}" for i in range(len(model.features))]
    if model.variant == "owt":
        names.append("1")
    classifier = 3 if model.variant == "owt" else 2     # Sequential(features, [avgpool,] Flatten, classifier)
    names += [f"{classifier}.{j}" for j in range(len(model.classifier))]
    return {layer: qualified for (layer, _), qualified in zip(model.named_layers(), names, strict=True)}


def spread(total: int, n: int) -> list[int]:
    """n indices spread evenly over range(total) (all of them when n >= total): samples in class order
    then file order give every class its share, and the same ones every time."""
    if n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def quantize_loaded(loaded: LoadedModel, images: Iterable[torch.Tensor]) -> Int8AlexNet:
    """The int8 copy of a loaded network, calibrated on uint8 (N, 256, 256, 3) batches seen as at test time
    (the centre crop, the network's own normalisation), so the ranges are those evaluation will meet."""
    return quantize_int8(loaded.model, (center_view(b, loaded.crop, loaded.norm) for b in images if len(b)))


def require_cpu(device: torch.device) -> None:
    if device.type != "cpu":
        raise UserError(CPU_ONLY)
