"""AlexNet as a fully-convolutional network (fully_convolutional.py), each claim checked against something
the conversion code does not compute: the original network's logits, the map's size worked out layer by
layer, the original head run on each 6x6 window of pool5, and the NumPy reference.

Relative error is max|a - b| / max|b|, b being the independent value. Value checks run in float64, where
"equal to rounding" can be asserted tightly on any machine; one float32 check bounds what a user sees.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import alexnet
from alexnet.lrn import LocalResponseNorm
from alexnet.reference import AlexNet as ReferenceAlexNet

VARIANTS = ("paper", "owt")
CLASSES = 5
FC6 = {"paper": 0, "owt": 1}      # fc6's index in the classifier (owt's starts with a Dropout)


def rel_err(a, b) -> float:
    """max|a - b| / max|b|: b is the independent value."""
    a, b = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, dtype=np.float64) for t in (a, b))
    return float(np.abs(a - b).max() / np.abs(b).max())


def random_model(variant: str) -> alexnet.AlexNet:
    """He-initialised weights keep activations O(1) to fc8 on normalised images; biases are made non-zero so
    that the conversion's bias copies are checked too."""
    torch.manual_seed(0)
    model = alexnet.AlexNet(variant, num_classes=CLASSES, init="kaiming")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def converted():
    """converted(variant, dtype) -> (model, model.to_fully_convolutional()), built once per module (drawing
    60M weights takes seconds); the float64 model is the float32 one widened. A test that changes a network
    copies it."""
    cache = {}

    def get(variant: str, dtype=torch.float64):
        if (variant, dtype) not in cache:
            model = random_model(variant) if dtype == torch.float32 else copy.deepcopy(get(variant, torch.float32)[0])
            model = model.to(dtype)
            cache[variant, dtype] = model, model.to_fully_convolutional()
        return cache[variant, dtype]

    return get


def images(n: int, height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """Normalised images: zero mean, unit variance."""
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(1), dtype=dtype)


def map_side_by_hand(variant: str, side: int) -> int:
    """The score map's side for an input side, layer by layer (model.py's comments).
    A conv or pool output side is (S + 2 pad - F) // stride + 1."""
    s = (side + 2 * (0 if variant == "paper" else 2) - 11) // 4 + 1   # conv1: 11x11 stride 4, pad 0 (owt: 2)
    s = (s - 3) // 2 + 1                                               # pool1: 3x3 stride 2 (norm1 keeps it)
    s = (s + 2 * 2 - 5) // 1 + 1                                       # conv2: 5x5, pad 2
    s = (s - 3) // 2 + 1                                               # pool2
    s = (s + 2 * 1 - 3) // 1 + 1                                       # conv3: 3x3, pad 1
    s = (s + 2 * 1 - 3) // 1 + 1                                       # conv4
    s = (s + 2 * 1 - 3) // 1 + 1                                       # conv5
    s = (s - 3) // 2 + 1                                               # pool5
    return (s - 6) // 1 + 1                                            # fc6: 6x6, no pad; fc7, fc8 1x1 keep it


# --------------------------------------------------------------------------- the native size: the logits

@pytest.mark.parametrize("variant", VARIANTS)
def test_at_the_native_size_the_map_is_the_logits_to_rounding(converted, variant):
    model, fcn = converted(variant)
    x = images(2, model.input_size, model.input_size)
    with torch.no_grad():
        logits, scores = model(x), fcn(x)
    assert scores.shape == (2, CLASSES, 1, 1)
    # float64 rounding is ~1e-16 per operation; measured ~4e-15 relative here.
    assert rel_err(scores[:, :, 0, 0], logits) <= 1e-12


@pytest.mark.parametrize("variant", VARIANTS)
def test_in_float32_the_native_map_is_the_logits_within_float32_rounding(converted, variant):
    model, fcn = converted(variant, torch.float32)
    x = images(2, model.input_size, model.input_size, torch.float32)
    with torch.no_grad():
        logits, scores = model(x), fcn(x)
    # The features are the same modules; only fc6-fc8 sum in another order (a convolution kernel instead of a
    # matrix product), over 9,216 products for fc6: float32's 6e-8 per step times sqrt(9216) ~ 6e-6 of the
    # terms' size. Measured ~1e-6 of the logits' scale here (AMD EPYC); 1e-4 leaves room for other kernels.
    assert rel_err(scores[:, :, 0, 0], logits) <= 1e-4


# --------------------------------------------------------------------------- larger inputs: the map's size

SIZES = [  # variant, input (H, W), map (h, w) worked out by hand with map_side_by_hand's steps
    ("paper", (256, 256), (1, 1)), ("paper", (320, 320), (3, 3)), ("paper", (384, 384), (5, 5)),
    ("paper", (320, 384), (3, 5)), ("paper", (384, 256), (5, 1)),
    ("owt", (256, 256), (2, 2)), ("owt", (320, 320), (4, 4)), ("owt", (384, 384), (6, 6)),
    ("owt", (320, 384), (4, 6)), ("owt", (384, 256), (6, 2)),
]


@pytest.mark.parametrize("variant,size,expected", SIZES, ids=[f"{v}-{h}x{w}" for v, (h, w), _ in SIZES])
def test_the_map_size_follows_the_layer_arithmetic(converted, paper64, variant, size, expected):
    _, fcn = converted(variant, torch.float32)
    assert tuple(map_side_by_hand(variant, s) for s in size) == expected
    assert fcn.map_size(*size) == expected
    with torch.no_grad():
        assert fcn(images(1, *size, dtype=torch.float32)).shape == (1, CLASSES, *expected)
    if variant == "paper":
        assert paper64[1].map_size(*size) == expected


# owt's conv1 pads by 2: one pixel under a step of 32 already gives the next step's positions.
@pytest.mark.parametrize("side", [255, 319])
def test_owt_map_size_at_one_pixel_under_a_step(converted, side):
    _, fcn = converted("owt", torch.float32)
    with torch.no_grad():
        shape = fcn(images(1, side, side, dtype=torch.float32)).shape[-2:]
    assert tuple(shape) == (map_side_by_hand("owt", side),) * 2 == fcn.map_size(side, side)


# --------------------------------------------------------------------------- larger inputs: the map's values

@pytest.mark.parametrize("variant", VARIANTS)
def test_every_map_position_is_the_original_head_on_its_pool5_window(converted, variant):
    # Not the logits of the matching crop: inside a large image the convolutions' zero padding sees real
    # pixels. The exact claim is about pool5: position (i, j) is fc6-fc8 on pool5's 6x6 window at (i, j).
    model, fcn = converted(variant)
    x = images(2, 320, 384)
    with torch.no_grad():
        scores, pool5 = fcn(x), model.features(x)
        h, w = pool5.shape[-2] - 5, pool5.shape[-1] - 5
        assert scores.shape == (2, CLASSES, h, w) and (h, w) == (map_side_by_hand(variant, 320),
                                                                 map_side_by_hand(variant, 384))
        for i in range(h):
            for j in range(w):
                window = torch.flatten(pool5[:, :, i:i + 6, j:j + 6], 1)
                assert rel_err(scores[:, :, i, j], model.classifier(window)) <= 1e-12, (i, j)


# --------------------------------------------------------------------------- a copy with the same structure

def _fcs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.classifier if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fc6_to_fc8_become_convolutions_of_the_same_weights(converted, variant):
    model, fcn = converted(variant, torch.float32)
    fc6, fc7, fc8 = _fcs(fcn)
    assert all(isinstance(m, nn.Conv2d) for m in (fc6, fc7, fc8)) and fc6 is fcn.classifier[FC6[variant]]
    assert [tuple(m.weight.shape) for m in (fc6, fc7, fc8)] == [(4096, 256, 6, 6), (4096, 4096, 1, 1),
                                                                 (CLASSES, 4096, 1, 1)]
    assert fc6.groups == 1   # fc6 sees both towers, as in the paper
    for conv, linear in zip((fc6, fc7, fc8), _fcs(model)):
        assert torch.equal(conv.weight.flatten(1), linear.weight) and torch.equal(conv.bias, linear.bias)
    # fc6's filter entry (o, c, r, k) weighs what flatten() put at c * 36 + r * 6 + k: pool5[c, r, k].
    c, r, k = 17, 4, 2
    assert fc6.weight[9, c, r, k] == _fcs(model)[0].weight[9, c * 36 + r * 6 + k]
    # owt's adaptive average pool, an identity at 224, would squeeze a larger pool5 back to 6x6.
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in fcn.modules())


def test_the_paper_towers_are_kept(converted):
    model, fcn = converted("paper", torch.float32)

    def towers(net):
        return ([m.groups for m in net.features if isinstance(m, nn.Conv2d)],
                [(m.towers, m.size, m.alpha, m.beta, m.k) for m in net.features if isinstance(m, LocalResponseNorm)])

    assert towers(fcn) == towers(model)
    assert towers(fcn)[0] == [1, 2, 1, 2, 2] and [t[0] for t in towers(fcn)[1]] == [2, 2]
    assert all(torch.equal(a, b) for a, b in zip(fcn.features.state_dict().values(),
                                                 model.features.state_dict().values()))


def test_the_converted_network_owns_its_weights(converted):
    model = copy.deepcopy(converted("paper", torch.float32)[0])
    fcn = model.to_fully_convolutional()
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not storages & {p.untyped_storage().data_ptr() for p in fcn.parameters()}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    fcn.train()
    fcn(images(1, 227, 227, torch.float32)).square().sum().backward()
    torch.optim.SGD(fcn.parameters(), lr=0.1).step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(fcn.classifier[0].weight.flatten(1), model.classifier[0].weight)   # fcn did move

    fcn_before = {k: v.clone() for k, v in fcn.state_dict().items()}
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
        model.classifier[0].bias.add_(1.0)
    assert all(torch.equal(fcn.state_dict()[k], v) for k, v in fcn_before.items())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_train_or_eval_mode_carries_over(variant, training):
    with torch.device("meta"):   # structure only: no weights to draw
        model = alexnet.AlexNet(variant, num_classes=CLASSES).train(training)
    assert {m.training for m in model.to_fully_convolutional().modules()} == {training}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_too_small_image_is_refused_with_its_size(converted, variant):
    _, fcn = converted(variant, torch.float32)
    side = fcn.input_size
    with pytest.raises(ValueError, match=f"{side - 1}x{side + 40}"):
        fcn(torch.zeros(1, 3, side - 1, side + 40))


@pytest.mark.parametrize("variant, size, expected", [("paper", (259, 291), (2, 3)), ("owt", (256, 288), (2, 3))])
def test_an_empty_batch_gives_an_empty_map_of_the_images_size(converted, variant, size, expected):
    # AlexNet answers (0, classes) for no images; its fully-convolutional form answers (0, classes, h, w).
    # expected: the layer arithmetic by hand (paper: 32 and 64 pixels past 227; owt's padded conv1 gains one
    # step at 256), and the shape a batch of one gets.
    _, fcn = converted(variant, torch.float32)
    with torch.no_grad():
        one = fcn(torch.zeros(1, 3, *size))
        for memory in (torch.contiguous_format, torch.channels_last):
            empty = fcn(torch.zeros(0, 3, *size).contiguous(memory_format=memory))
            assert empty.shape == (0, CLASSES, *expected) == (0, *one.shape[1:])


# --------------------------------------------------------------------------- the NumPy reference

@pytest.fixture(scope="module")
def paper64(converted):
    """The paper network in float64: torch's conversion and the NumPy reference's."""
    model, fcn = converted("paper")
    net = ReferenceAlexNet({k: v.numpy() for k, v in model.state_dict().items()})
    return fcn, net.to_fully_convolutional()


@pytest.mark.parametrize("size,expected", [((227, 227), (1, 1)), ((259, 291), (2, 3))], ids=["227", "259x291"])
def test_the_numpy_reference_map_equals_torch(paper64, size, expected):
    fcn, reference = paper64
    x = images(1, *size)
    with torch.no_grad():
        scores = fcn(x).numpy()
    got = reference.forward(x.numpy())
    assert got.shape == scores.shape == (1, CLASSES, *expected)
    # The whole network in float64, two implementations: measured ~1e-15 relative.
    assert rel_err(got, scores) <= 1e-10


def test_the_numpy_reference_refuses_a_too_small_image_with_its_size(paper64):
    with pytest.raises(ValueError, match="226x300"):
        paper64[1].forward(np.zeros((1, 3, 226, 300)))


@pytest.mark.parametrize("kernel, size", [(6, (7, 9)), (1, (3, 4))])
@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last])
def test_the_matrix_product_form_is_torchs_convolution(kernel, size, memory):
    from alexnet.fully_convolutional import MatrixConv2d

    torch.manual_seed(0)
    conv = MatrixConv2d(16, 8, kernel_size=kernel).double()
    x = torch.randn(3, 16, *size, dtype=torch.float64).contiguous(memory_format=memory)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)
