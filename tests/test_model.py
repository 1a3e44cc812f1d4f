"""The network against docs/paper-numbers.md's tables, torchvision, and a stored seeded output."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from alexnet import AlexNet, LocalResponseNorm, summarize
from alexnet.reference import LAYERS, LRN_CONVENTIONS, conv_forward, lrn_forward, maxpool_forward, relu_forward
from alexnet.model import INPUT_SIZE

GOLDEN = Path(__file__).parent / "data" / "golden_forward.json"

# docs/paper-numbers.md section 1, typed in from the paper's arithmetic: (output C, H, W), params (W+b), multiply-adds.
PAPER_TABLE = {
    "conv1": ((96, 55, 55), 34_944, 105_415_200),
    "pool1": ((96, 27, 27), 0, 0),
    "conv2": ((256, 27, 27), 307_456, 223_948_800),
    "pool2": ((256, 13, 13), 0, 0),
    "conv3": ((384, 13, 13), 885_120, 149_520_384),
    "conv4": ((384, 13, 13), 663_936, 112_140_288),
    "conv5": ((256, 13, 13), 442_624, 74_760_192),
    "pool5": ((256, 6, 6), 0, 0),
    "fc6": ((4096,), 37_752_832, 37_748_736),
    "fc7": ((4096,), 16_781_312, 16_777_216),
    "fc8": ((1000,), 4_097_000, 4_096_000),
}


def meta_model(variant="paper", **kw):
    with torch.device("meta"):
        return AlexNet(variant, **kw)


def test_paper_layers_match_spec_table():
    rows = {r["name"]: r for r in summarize(meta_model("paper"))["layers"]}
    for name, (shape, params, macs) in PAPER_TABLE.items():
        assert (tuple(rows[name]["output_shape"]), rows[name]["params"], rows[name]["macs"]) == (shape, params, macs), name
    # LRN keeps the shape of what it normalises.
    assert rows["norm1"]["output_shape"] == [96, 55, 55] and rows["norm2"]["output_shape"] == [256, 27, 27]


def test_paper_totals_match_spec():
    s = summarize(meta_model("paper"))
    assert (s["params"], s["macs"], s["neurons"]) == (60_965_224, 724_406_816, 659_272)
    with pytest.raises(ValueError, match="input_size must be a positive integer, got 0"):   # was taken as 227
        summarize(meta_model("paper"), 0)


def test_owt_totals_match_spec():
    s = summarize(meta_model("owt"))
    assert s["input_shape"] == [3, 224, 224]
    assert (s["params"], s["macs"]) == (61_100_840, 714_188_480)


def test_owt_params_per_layer_match_torchvision():
    ours = {r["module"]: r["params"] for r in summarize(meta_model("owt"))["layers"]}
    with torch.device("meta"):
        tv = torchvision.models.alexnet(weights=None)
    for prefix in ("features", "classifier"):
        for i, m in enumerate(getattr(tv, prefix)):
            assert ours[f"{prefix}.{i}"] == sum(p.numel() for p in m.parameters()), f"{prefix}.{i}"


def test_fc8_follows_num_classes():
    s = summarize(meta_model("paper", num_classes=10))
    assert s["layers"][-1]["output_shape"] == [10]
    assert s["params"] == 60_965_224 - 4_097_000 + 4096 * 10 + 10


def test_paper_module_order_is_the_contract():
    m = meta_model("paper")
    kinds = [type(x) for x in m.features]
    C, R, N, P = nn.Conv2d, nn.ReLU, LocalResponseNorm, nn.MaxPool2d
    assert kinds == [C, R, N, P, C, R, N, P, C, R, C, R, C, R, P]
    assert [type(x) for x in m.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    convs = [x for x in m.features if isinstance(x, C)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0], c.groups) for c in convs] == [
        (11, 4, 0, 1), (5, 1, 2, 2), (3, 1, 1, 1), (3, 1, 1, 2), (3, 1, 1, 2)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in m.features if isinstance(p, P))  # overlapping
    assert all(n.towers == 2 and n.alpha == 1e-4 and n.k == 2.0 for n in m.features if isinstance(n, N))
    assert [d.p for d in m.classifier if isinstance(d, nn.Dropout)] == [0.5, 0.5]


def test_owt_has_torchvisions_state_dict_keys_and_shapes():
    ours = {k: v.shape for k, v in meta_model("owt").state_dict().items()}
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}
    assert ours == theirs


def test_owt_loads_torchvision_weights_and_gives_identical_logits():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    ours = AlexNet("owt")
    ours.load_state_dict(tv.state_dict())  # strict: every key matches
    ours.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_paper_init_statistics():
    torch.manual_seed(0)
    m = AlexNet("paper")
    for name, layer in m.named_layers():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        w = layer.weight.detach().double()
        # Sample std of n Gaussian draws has standard error sigma / sqrt(2n); allow 6 of them.
        tol = 6 * 0.01 / (2 * w.numel()) ** 0.5
        assert abs(w.std().item() - 0.01) < tol, name
        assert abs(w.mean().item()) < 6 * 0.01 / w.numel() ** 0.5, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == expected_bias), name


def test_owt_init_is_pytorch_default_like_torchvision():
    m = AlexNet("owt")
    for name, layer in m.named_layers():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            # kaiming_uniform_(a=sqrt(5)) bounds every weight by 1/sqrt(fan_in).
            assert layer.weight.abs().max() <= fan_in ** -0.5 + 1e-7, name
            assert layer.weight.std() > 0.5 * fan_in ** -0.5 / 3 ** 0.5, name


@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_every_parameter_receives_a_gradient(variant):
    torch.manual_seed(0)
    m = AlexNet(variant, num_classes=10).train()
    size = m.input_size
    x = torch.randn(2, 3, size, size) * 50
    nn.functional.cross_entropy(m(x), torch.tensor([1, 7])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_paper_network_rejects_other_input_sizes_clearly():
    m = AlexNet("paper", num_classes=10).eval()
    with pytest.raises(ValueError, match="needs 227x227 input"):
        m(torch.zeros(1, 3, 224, 224))
    for side in (226, 259):   # just outside the sides that give fc6 its 6x6, as the message says
        with pytest.raises(ValueError, match=r"any side from 227 to 258 gives the 6x6 pool5"):
            m(torch.zeros(1, 3, side, side))
    assert m(torch.zeros(1, 3, 258, 227)).shape == (1, 10)


def test_owt_accepts_other_input_sizes_like_torchvision():
    m = AlexNet("owt", num_classes=10).eval()
    assert m(torch.zeros(1, 3, 256, 256)).shape == (1, 10)


def numpy_pool5(model: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """pool5 of the paper network by the NumPy reference's layers (alexnet.reference): no torch involved."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    a = x.double().numpy()
    for _, kind, key, hp in LAYERS[:[layer[0] for layer in LAYERS].index("flatten")]:
        if kind == "conv":
            a, _ = conv_forward(a, p[f"{key}.weight"], p[f"{key}.bias"], **hp)
        elif kind == "relu":
            a, _ = relu_forward(a)
        elif kind == "lrn":
            a, _ = lrn_forward(a, towers=2, **LRN_CONVENTIONS[model.lrn])
        else:
            assert kind == "pool", kind
            a, _ = maxpool_forward(a, size=3, stride=2)
    return torch.from_numpy(a)


def head_by_hand(model: AlexNet, pool5: torch.Tensor) -> torch.Tensor:
    """fc6 -> ReLU -> fc7 -> ReLU -> fc8 from the state_dict: what the classifier is in eval mode (no dropout)."""
    w = {k: v.double() for k, v in model.state_dict().items()}
    h = torch.flatten(pool5.double(), 1)
    h = F.relu(F.linear(h, w["classifier.0.weight"], w["classifier.0.bias"]))
    h = F.relu(F.linear(h, w["classifier.3.weight"], w["classifier.3.bias"]))
    return F.linear(h, w["classifier.6.weight"], w["classifier.6.bias"])


def test_features_and_head_match_independent_computations():
    torch.manual_seed(0)
    # He init keeps activations O(1) through the layers, so pool5 depends on the image (with the paper's
    # init the biases of 1 would dominate it) and LRN works in its nonlinear range.
    m = AlexNet("paper", num_classes=10, init="kaiming").eval()
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(1)) * 255 - 128
    with torch.no_grad():
        f = m.forward_features(x)
        expected = numpy_pool5(m, x)
        assert f.shape == (2, 256, 6, 6) and (expected[0] - expected[1]).abs().max() > 1e-2 * expected.abs().max()
        torch.testing.assert_close(f.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        logits = head_by_hand(m, expected)
        torch.testing.assert_close(m.forward_head(expected.float()).double(), logits, rtol=1e-4,
                                   atol=1e-4 * logits.abs().max().item())
        torch.testing.assert_close(m(x).double(), logits, rtol=1e-3, atol=1e-3 * logits.abs().max().item())


def test_reset_classifier_replaces_fc8_only():
    torch.manual_seed(0)
    m = AlexNet("paper")
    fc7 = m.layer("fc7").weight.clone()
    m.reset_classifier(5)
    assert m.layer("fc8").out_features == 5 and m.num_classes == 5
    assert torch.all(m.layer("fc8").bias == 0) and abs(m.layer("fc8").weight.std().item() - 0.01) < 1e-3
    assert torch.equal(m.layer("fc7").weight, fc7)


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="vgg"), "unknown variant"),
    (dict(num_classes=0), "positive integer"),
    (dict(num_classes=2.5), "positive integer"),
    (dict(num_classes=True), "positive integer"),    # an int to Python, but no class count
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=float("nan")), "dropout"),
    (dict(lrn="tf"), "LRN convention"),
    (dict(variant="owt", lrn="caffe"), "the owt network has no LRN layers, so lrn='caffe' would do nothing"),
    (dict(init="xavier"), "unknown init"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        AlexNet(**kwargs)


def test_a_dropout_that_is_not_a_number_is_named_in_one_line():
    with pytest.raises(TypeError, match=r"^dropout must be a number in \[0, 1\), got '0.5'$"):
        AlexNet(dropout="0.5")


def test_numpy_integers_are_class_counts_and_numpy_floats_are_dropouts():
    import numpy as np

    with torch.device("meta"):   # structure only: no weights to draw
        m = AlexNet("owt", num_classes=np.int64(10), dropout=np.float64(0.25))
        assert m.layer("fc8").out_features == 10 and type(m.num_classes) is int
        assert [m.layer("drop6").p, m.layer("drop7").p] == [0.25, 0.25]
        m.reset_classifier(np.int64(3))
        assert m.layer("fc8").out_features == 3 and type(m.num_classes) is int
        for bad in (True, 0, 2.5, "3"):
            with pytest.raises(ValueError, match="num_classes must be a positive integer"):
                m.reset_classifier(bad)
    assert "num_classes=3," in m.extra_repr()


@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_the_dropout_asked_for_is_every_dropout_layers_and_zero_turns_training_dropout_off(variant):
    # Not the 0.5 default in either layer (training sets it again each epoch; a network built for use does not).
    for p in (0.3, 0.0):
        with torch.device("meta"):
            m = AlexNet(variant, num_classes=10, dropout=p)
        drops = [d for d in m.modules() if isinstance(d, nn.Dropout)]
        assert len(drops) == 2 and [d.p for d in drops] == [p, p]
        assert [m.layer("drop6").p, m.layer("drop7").p] == [p, p]
    torch.manual_seed(0)
    m = AlexNet(variant, num_classes=10, dropout=0.0)
    x = torch.randn(2, 3, m.input_size, m.input_size) * 50
    with torch.no_grad():
        trained = m.train()(x)
        assert torch.equal(trained, m.eval()(x))


def test_lrn_left_out_means_the_variants_own_and_changes_nothing():
    with torch.device("meta"):
        paper, paper_named = AlexNet("paper"), AlexNet("paper", lrn="paper")
        owt, owt_named = AlexNet("owt"), AlexNet("owt", lrn="paper")   # "paper": the old default for every variant
    assert paper.lrn == "paper" and paper.extra_repr() == paper_named.extra_repr() == \
        "variant='paper', num_classes=1000, init='paper', lrn='paper'"
    assert owt.extra_repr() == owt_named.extra_repr() == "variant='owt', num_classes=1000, init='pytorch'"
    assert not hasattr(owt, "lrn") and not any(isinstance(m, LocalResponseNorm) for m in owt.modules())
    for a, b in ((paper, paper_named), (owt, owt_named)):
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def _golden_outputs() -> dict:
    """Logits and pool5 means of both variants for a fixed seed and input, in eval mode."""
    out = {}
    for variant in ("paper", "owt"):
        torch.manual_seed(0)
        m = AlexNet(variant, num_classes=10).eval()
        size = m.input_size
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255 - 120
        with torch.no_grad():
            f = m.forward_features(x)
            out[variant] = {"logits": m.forward_head(f).tolist(), "pool5_mean": f.mean((2, 3))[:, :16].tolist()}
    return out


def test_seeded_forward_matches_stored_output():
    if os.environ.get("ALEXNET_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(_golden_outputs(), indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    actual = _golden_outputs()
    for variant in ("paper", "owt"):
        for key in ("logits", "pool5_mean"):
            torch.testing.assert_close(torch.tensor(actual[variant][key]), torch.tensor(expected[variant][key]),
                                       rtol=1e-4, atol=1e-5, msg=f"{variant} {key}")
        # The two images must differ, or the stored output would not depend on the convolutions.
        logits = torch.tensor(expected[variant]["logits"])
        assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_kaiming_init_keeps_relu_activation_scale():
    torch.manual_seed(0)
    m = AlexNet("paper", init="kaiming")
    for name, layer in m.named_layers():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            assert abs(layer.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05, name
            assert torch.all(layer.bias == 0), name


def test_one_image_without_its_batch_dimension_is_named_as_such():
    with torch.device("meta"):
        net = AlexNet()
    with pytest.raises(ValueError, match=r"expected a batch of images \(N, 3, H, W\), got .* \(3, 227, 227\)"):
        net(torch.empty(3, 227, 227, device="meta"))
    # forward_features and the fully-convolutional network too: at 239 the LRN would take the image's rows
    # for channels and answer without an error.
    for call in (net.forward_features, net.to_fully_convolutional()):
        with pytest.raises(ValueError, match=r"for one image use x\[None\]"):
            call(torch.empty(3, 239, 239, device="meta"))
    with pytest.raises(ValueError, match=r"expected 3 colour channels \(N, 3, H, W\), got .* \(1, 1, 227, 227\)"):
        net(torch.empty(1, 1, 227, 227, device="meta"))


def test_images_that_are_not_a_float_tensor_are_named_as_such():
    # A NumPy array failed with "'numpy.ndarray' object has no attribute 'dim'", uint8 pixels inside conv1
    # ("Input type (unsigned char) and bias type (float) should be the same").
    with torch.device("meta"):
        net = AlexNet()
    with pytest.raises(TypeError, match="expected a torch.Tensor of images .* got ndarray"):
        net(np.zeros((1, 3, 227, 227), dtype=np.float32))
    with pytest.raises(TypeError, match="expected floating-point images, .* got torch.uint8"):
        net(torch.empty(1, 3, 227, 227, dtype=torch.uint8, device="meta"))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):   # every float type still goes through
        assert net.to(dtype)(torch.empty(1, 3, 227, 227, dtype=dtype, device="meta")).shape == (1, 1000)


@pytest.mark.parametrize("variant, smallest", [("paper", 67), ("owt", 63)])
def test_images_too_small_for_the_features_are_named_as_such(variant, smallest):
    # The smallest side conv1-pool5 take, found by trying each side: below it PyTorch's own error
    # ("Output size is too small") came from inside a pooling layer.
    with torch.device("meta"):
        net = AlexNet(variant)
    assert net.features(torch.empty(1, 3, smallest, smallest, device="meta")).shape[-2:] == (1, 1)
    with pytest.raises(RuntimeError, match="too small"):
        net.features(torch.empty(1, 3, smallest - 1, smallest - 1, device="meta"))
    size = INPUT_SIZE[variant]
    need = f"{size}x{size} input" if variant == "paper" else f"images of at least {smallest}x{smallest}"
    for side in (32, smallest - 1):
        with pytest.raises(ValueError, match=rf"the {variant} network needs {need}.*got {side}x{side}; resize"):
            net(torch.empty(2, 3, side, side, device="meta"))
