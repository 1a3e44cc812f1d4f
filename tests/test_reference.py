"""The NumPy reference (alexnet.reference) against central differences and against PyTorch.

Relative error everywhere is max|a - b| / max|b| over one tensor, b being the independent value
(the central difference, or PyTorch's result). Layer checks run on small float64 shapes; the last
group runs the whole paper network at 227x227.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import alexnet
from alexnet.lrn import LRN_CONVENTIONS as TORCH_LRN_CONVENTIONS
from alexnet.lrn import LocalResponseNorm
from alexnet.reference import (
    DROPOUT_FORMS,
    LRN_CONVENTIONS,
    conv_backward,
    conv_forward,
    dropout_backward,
    dropout_forward,
    fc_backward,
    fc_forward,
    lrn_backward,
    lrn_forward,
    maxpool_backward,
    maxpool_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from alexnet.reference import FULLY_CONVOLUTIONAL_LAYERS, LAYERS
from alexnet.reference import AlexNet as ReferenceAlexNet

GRAD_TOL = 1e-6


def rel_err(a, b):
    """max|a - b| / max|b|: b is the independent value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def numeric_grad(f, x, h=1e-5):
    """Central differences of the scalar f() with respect to x, perturbed in place one entry at a time."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        fp = f()
        x[idx] = old - h
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


def projection(rng, shape):
    """A random R, so that L = sum(y * R) has dL/dy = R: a generic upstream gradient."""
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- packaging

def test_lrn_conventions_mirror_the_torch_module():
    assert set(LRN_CONVENTIONS) == set(TORCH_LRN_CONVENTIONS)
    for name, c in TORCH_LRN_CONVENTIONS.items():
        assert LRN_CONVENTIONS[name] == dict(size=c.size, alpha=c.alpha, beta=c.beta, k=c.k,
                                             alpha_over_size=c.alpha_over_size)


# --------------------------------------------------------------------------- gradient checks, layer by layer

def test_fc_gradients_match_central_differences():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 7)), rng.standard_normal((5, 7)), rng.standard_normal(5)
    r = projection(rng, (4, 5))
    dx, dw, db = fc_backward(r, fc_forward(x, w, b)[1])
    loss = lambda: np.sum(fc_forward(x, w, b)[0] * r)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        assert rel_err(analytic, numeric_grad(loss, wrt)) <= GRAD_TOL


CONV_CASES = [
    # (N, C, H, W, O, (kh, kw), stride, pad, groups)
    (2, 4, 7, 7, 6, (3, 3), 1, 1, 1),
    (2, 4, 8, 8, 6, (3, 3), 2, 0, 2),       # stride 2 leaves the last row and column unused
    (1, 4, 9, 10, 4, (5, 5), 3, 2, 2),
    (2, 3, 6, 7, 4, (3, 2), 1, 0, 1),       # non-square kernel
    (1, 3, 19, 19, 4, (11, 11), 4, 0, 1),   # conv1's geometry, small
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[5][0]}x{c[5][1]}-s{c[6]}-p{c[7]}-g{c[8]}")
def test_conv_gradients_match_central_differences(case):
    n, c, h, w_, o, (kh, kw), stride, pad, groups = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((o, c // groups, kh, kw))
    b = rng.standard_normal(o)
    y, cache = conv_forward(x, w, b, stride, pad, groups)
    r = projection(rng, y.shape)
    dx, dw, db = conv_backward(r, cache)
    loss = lambda: np.sum(conv_forward(x, w, b, stride, pad, groups)[0] * r)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        assert rel_err(analytic, numeric_grad(loss, wrt)) <= GRAD_TOL


def test_relu_gradient_matches_central_differences():
    rng = np.random.default_rng(2)
    # Keep every input at least 0.1 from the kink, far beyond the step h.
    x = rng.choice([-1.0, 1.0], size=(3, 4, 5)) * (0.1 + np.abs(rng.standard_normal((3, 4, 5))))
    r = projection(rng, x.shape)
    dx = relu_backward(r, relu_forward(x)[1])
    assert rel_err(dx, numeric_grad(lambda: np.sum(relu_forward(x)[0] * r), x)) <= GRAD_TOL


@pytest.mark.parametrize("size", [5, 4])
@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("alpha_over_size", [False, True])
def test_lrn_gradient_matches_central_differences(size, towers, alpha_over_size):
    rng = np.random.default_rng(3)
    # Activations of a few tens (as after conv1 on 0-255 images) put alpha * sum(a^2) near k, where
    # the cross-channel terms of the gradient are as large as the diagonal ones.
    x = 40 * rng.standard_normal((2, 8, 3, 3))
    kw = dict(size=size, alpha=1e-4, beta=0.75, k=2.0, towers=towers, alpha_over_size=alpha_over_size)
    r = projection(rng, x.shape)
    dx = lrn_backward(r, lrn_forward(x, **kw)[1])
    assert rel_err(dx, numeric_grad(lambda: np.sum(lrn_forward(x, **kw)[0] * r), x)) <= GRAD_TOL


def test_maxpool_gradient_matches_central_differences():
    rng = np.random.default_rng(4)
    # Distinct values 0.1 apart: no ties, and no step h can change which entry wins a window.
    x = 0.1 * rng.permutation(2 * 3 * 9 * 9).reshape(2, 3, 9, 9).astype(np.float64)
    y, cache = maxpool_forward(x)
    assert y.shape == (2, 3, 4, 4)
    r = projection(rng, y.shape)
    dx = maxpool_backward(r, cache)
    assert rel_err(dx, numeric_grad(lambda: np.sum(maxpool_forward(x)[0] * r), x)) <= GRAD_TOL


@pytest.mark.parametrize("form", DROPOUT_FORMS)
@pytest.mark.parametrize("train", [True, False])
def test_dropout_gradient_with_fixed_mask_matches_central_differences(form, train):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 10))
    mask = rng.random(x.shape) < 0.7
    r = projection(rng, x.shape)
    dx = dropout_backward(r, dropout_forward(x, 0.3, train=train, form=form, mask=mask)[1])
    loss = lambda: np.sum(dropout_forward(x, 0.3, train=train, form=form, mask=mask)[0] * r)
    assert rel_err(dx, numeric_grad(loss, x)) <= GRAD_TOL


def test_softmax_cross_entropy_gradient_matches_central_differences():
    rng = np.random.default_rng(6)
    z, labels = 3 * rng.standard_normal((5, 7)), rng.integers(0, 7, size=5)
    dz = softmax_cross_entropy_backward(1.0, softmax_cross_entropy_forward(z, labels)[1])
    assert rel_err(dz, numeric_grad(lambda: softmax_cross_entropy_forward(z, labels)[0], z)) <= GRAD_TOL


# --------------------------------------------------------------------------- the seed's claims

@pytest.mark.parametrize("f", [3, 5, 7, 11])
def test_zero_padding_of_half_the_filter_keeps_the_spatial_size(f):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 13, 16))
    y, _ = conv_forward(x, rng.standard_normal((3, 2, f, f)), np.zeros(3), stride=1, pad=(f - 1) // 2)
    assert y.shape == (1, 3, 13, 16)


@pytest.mark.parametrize("p", [0.5, 0.2])
@pytest.mark.parametrize("form", DROPOUT_FORMS)
def test_test_time_dropout_equals_the_mean_training_output(form, p):
    rng = np.random.default_rng(8)
    x, masks, q = rng.uniform(0.5, 2.0, size=300), 4000, 1 - p
    train, _ = dropout_forward(np.broadcast_to(x, (masks, x.size)), p, train=True, form=form, rng=rng)
    test, _ = dropout_forward(x, p, train=False, form=form)
    # One training output is x * c * Bernoulli(q), c = 1 (paper) or 1/q (inverted): std x c sqrt(pq).
    c = 1.0 if form == "paper" else 1.0 / q
    z = (train.mean(axis=0) - test) / (x * c * np.sqrt(p * q) / np.sqrt(masks))
    assert np.abs(z).max() < 5.0
    np.testing.assert_allclose(test, x * q if form == "paper" else x)


def test_softmax_cross_entropy_is_stable_and_matches_torch():
    rng = np.random.default_rng(9)
    z, labels = rng.standard_normal((4, 6)), rng.integers(0, 6, size=4)
    z[0] += 1e4   # exp(1e4) overflows unless the maximum is taken out first
    loss, cache = softmax_cross_entropy_forward(z, labels)
    zt = torch.tensor(z, requires_grad=True)
    expected = F.cross_entropy(zt, torch.tensor(labels))
    expected.backward()
    assert np.isfinite(loss) and abs(loss - expected.item()) <= 1e-12 * abs(expected.item())
    assert rel_err(softmax_cross_entropy_backward(1.0, cache), zt.grad.numpy()) <= 1e-12


# --------------------------------------------------------------------------- layers against PyTorch

@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[5][0]}x{c[5][1]}-s{c[6]}-p{c[7]}-g{c[8]}")
def test_conv_matches_torch_forward_and_autograd(case):
    n, c, h, w_, o, (kh, kw), stride, pad, groups = case
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c // groups, kh, kw)), rng.standard_normal(o)
    y, cache = conv_forward(x, w, b, stride, pad, groups)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=pad, groups=groups)
    r = projection(rng, y.shape)
    yt.backward(torch.tensor(r))
    assert rel_err(y, yt.detach().numpy()) <= 1e-12
    for analytic, t in zip(conv_backward(r, cache), (xt, wt, bt)):
        assert rel_err(analytic, t.grad.numpy()) <= 1e-12


@pytest.mark.parametrize("convention", sorted(LRN_CONVENTIONS))
@pytest.mark.parametrize("towers", [1, 2])
def test_lrn_matches_the_torch_module_forward_and_autograd(convention, towers):
    rng = np.random.default_rng(11)
    x = 40 * rng.standard_normal((2, 12, 4, 5))
    y, cache = lrn_forward(x, towers=towers, **LRN_CONVENTIONS[convention])
    xt = torch.tensor(x, requires_grad=True)
    yt = LocalResponseNorm.from_convention(convention, towers=towers)(xt)
    r = projection(rng, x.shape)
    yt.backward(torch.tensor(r))
    assert rel_err(y, yt.detach().numpy()) <= 1e-12
    assert rel_err(lrn_backward(r, cache), xt.grad.numpy()) <= 1e-12


def test_lrn_towers_normalise_each_half_on_its_own():
    rng = np.random.default_rng(12)
    x = 40 * rng.standard_normal((2, 10, 3, 3))
    split, _ = lrn_forward(x, towers=2)
    halves = [lrn_forward(x[:, s], towers=1)[0] for s in (slice(0, 5), slice(5, 10))]
    np.testing.assert_array_equal(split, np.concatenate(halves, axis=1))
    # ...and the split matters: one tower over all channels lets channels 4 and 5 see each other.
    assert not np.allclose(split, lrn_forward(x, towers=1)[0])


def test_maxpool_matches_torch_including_ties():
    rng = np.random.default_rng(13)
    x = rng.integers(0, 2, size=(2, 3, 11, 11)).astype(np.float64)   # ties in almost every window
    y, cache = maxpool_forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.max_pool2d(xt, 3, 2)
    r = projection(rng, y.shape)
    yt.backward(torch.tensor(r))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(maxpool_backward(r, cache), xt.grad.numpy())


@pytest.mark.parametrize("layer, shape, kernel, pad", [
    ("maxpool", (1, 1, 2, 2), 3, 0),
    ("conv", (1, 1, 2, 2), 3, 0),
    ("conv", (1, 1, 1, 5), 3, 0),      # one side short: NumPy's "negative dimensions" before
    ("conv", (1, 1, 1, 1), 5, 1),      # too small even padded
], ids=["pool-2x2", "conv-2x2", "conv-1x5", "conv-padded"])
def test_an_input_smaller_than_the_window_is_refused_as_torch_refuses_it(layer, shape, kernel, pad):
    x, w, b = np.zeros(shape), np.zeros((1, 1, kernel, kernel)), np.zeros(1)
    if layer == "maxpool":
        ours, theirs = lambda: maxpool_forward(x, size=kernel), lambda: F.max_pool2d(torch.tensor(x), kernel, 2)
    else:
        ours = lambda: conv_forward(x, w, b, pad=pad)
        theirs = lambda: F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=pad)
    with pytest.raises(RuntimeError):
        theirs()
    h, wd = shape[2] + 2 * pad, shape[3] + 2 * pad
    with pytest.raises(ValueError, match=f"^{layer}: the input is {h}x{wd}.*smaller than the {kernel}x{kernel} window"):
        ours()


def test_raw_pixels_are_normalised_as_the_same_values_in_float():
    # uint8 as images come from disk: x * x wrapped around (2.2x off); int16 overflowed to NaN.
    x = np.random.default_rng(3).integers(0, 256, (2, 6, 4, 4))
    expected = F.local_response_norm(torch.tensor(x, dtype=torch.float64), 5, 5e-4 * 5, 0.75, 2.0).numpy()
    for dtype in (np.uint8, np.int16, np.int64):
        y, _ = lrn_forward(x.astype(dtype), alpha=5e-4)
        assert y.dtype == np.float64 and np.abs(y - expected).max() <= 1e-12 * np.abs(expected).max(), dtype


@pytest.mark.parametrize("call, said", [
    (lambda: conv_forward(np.zeros((3, 8, 8)), np.zeros((2, 3, 3, 3)), np.zeros(2)),
     r"^conv: expected a batch \(N, C, H, W\), got an array of shape \(3, 8, 8\); for one image use x\[None\]"),
    (lambda: maxpool_forward(np.zeros((3, 8, 8))), r"^maxpool: expected a batch .* for one image use x\[None\]"),
    (lambda: lrn_forward(np.zeros((3, 8, 8))), r"^lrn: expected a batch .* for one image use x\[None\]"),
    (lambda: fc_forward(np.zeros((2, 256, 6, 6)), np.zeros((4, 9216)), np.zeros(4)),
     r"^fc: expected a batch \(N, I\); flatten the maps first: x.reshape\(len\(x\), -1\), got .* \(2, 256, 6, 6\)"),
    (lambda: conv_forward(np.zeros((1, 3, 8, 8)), np.zeros((2, 3, 3, 3)), np.zeros(2), stride=0),
     "^conv: stride must be at least 1, got 0"),
    (lambda: maxpool_forward(np.zeros((1, 3, 8, 8)), size=0), "^maxpool: size must be at least 1, got 0"),
    (lambda: lrn_forward(np.zeros((1, 3, 8, 8)), size=0), "^lrn: size must be at least 1, got 0"),
    (lambda: softmax_cross_entropy_forward(np.zeros((3, 4)), np.array([0, -1, 2])),
     r"^softmax cross-entropy: labels must be class indices 0 to 3, got -1 to 2"),
    (lambda: softmax_cross_entropy_forward(np.zeros((3, 4)), np.array([[0], [1], [2]])),
     r"^softmax cross-entropy: labels must be 3 integers, one per row of z, got an array of shape \(3, 1\)"),
    (lambda: softmax_cross_entropy_forward(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0])),
     r"labels must be 3 integers.* dtype float64"),
    (lambda: conv_forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1), pad=-1),
     "^conv: pad must be at least 0, got -1"),
    (lambda: conv_forward(np.zeros((1, 2, 5, 5)), np.zeros((2, 2, 3, 3)), np.zeros(3)),
     r"^conv: expected a weight \(O, C/groups, kh, kw\) and a bias \(O,\).* \(2, 2, 3, 3\) and a bias \(3,\)"),
    (lambda: conv_forward(np.zeros((1, 2, 5, 5)), np.zeros((2, 2, 3)), np.zeros(2)),
     r"^conv: expected a weight .* got a weight \(2, 2, 3\)"),
    (lambda: fc_forward(np.zeros((2, 4)), np.zeros((3, 5)), np.zeros(3)),
     r"^fc: the input has 4 values per sample, the weight \(3, 5\) takes 5"),
    (lambda: fc_forward(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(4)),
     r"^fc: expected a weight \(O, I\) and a bias \(O,\).* a bias \(4,\)"),
], ids=["conv-one-image", "pool-one-image", "lrn-one-image", "fc-maps", "conv-stride-0", "pool-size-0",
        "lrn-size-0", "label-minus-1", "labels-column", "labels-float", "conv-pad-negative", "conv-bias-length",
        "conv-weight-3d", "fc-weight-width", "fc-bias-length"])
def test_a_misshapen_call_is_one_clear_error_where_numpy_would_answer_wrongly_or_obscurely(call, said):
    with pytest.raises(ValueError, match=said):
        call()


def test_an_input_the_window_just_fits_gives_torchs_single_output():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 1, 1)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y, _ = conv_forward(x, w, b, pad=1)        # 1x1 padded to 3x3: exactly one window
    np.testing.assert_allclose(y, F.conv2d(*map(torch.tensor, (x, w, b)), padding=1).numpy(), rtol=1e-12)
    x = rng.standard_normal((2, 3, 3, 3))
    np.testing.assert_array_equal(maxpool_forward(x)[0], F.max_pool2d(torch.tensor(x), 3, 2).numpy())


# --------------------------------------------------------------------------- the whole network against PyTorch

@pytest.fixture(scope="module")
def networks():
    """The paper network in torch (float64 and float32) and in NumPy, one batch through all three."""
    torch.manual_seed(0)
    model = alexnet.AlexNet(variant="paper", num_classes=10).double().eval()
    with torch.no_grad():
        # The paper init (N(0, 0.01)) shrinks activations to nothing by fc8; He init keeps them O(1-100),
        # which also puts LRN in its nonlinear range (alpha * sum(a^2) comparable to k).
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.0, 0.1)
        model.classifier[6].weight.mul_(0.05)   # logits of a few units: softmax not saturated
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 227, 227, generator=gen, dtype=torch.float64) * 255 - 128   # mean-subtracted pixels
    labels = torch.tensor([3, 7])

    model32 = copy.deepcopy(model).float()
    out = {}
    for name, m, xin in (("torch64", model, x), ("torch32", model32, x.float())):
        logits = m(xin)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        out[name] = (loss.item(), logits.detach().double().numpy(),
                     {k: p.grad.double().numpy() for k, p in m.named_parameters()})

    net = ReferenceAlexNet({k: v.detach().numpy() for k, v in model.state_dict().items()})
    logits = net.forward(x.numpy())
    loss, cache = softmax_cross_entropy_forward(logits, labels.numpy())
    out["numpy"] = (loss, logits, net.backward(softmax_cross_entropy_backward(1.0, cache)))
    out["net"], out["x"] = net, x.numpy()
    return out


def test_network_logits_and_every_gradient_match_torch_float64(networks):
    loss, logits, grads = networks["numpy"]
    t_loss, t_logits, t_grads = networks["torch64"]
    assert list(grads) == list(t_grads)   # every parameter, in state_dict order
    errors = {"loss": rel_err(loss, t_loss), "logits": rel_err(logits, t_logits)}
    errors |= {k: rel_err(grads[k], t_grads[k]) for k in t_grads}
    assert max(errors.values()) <= 1e-8, errors


def test_network_matches_torch_float32_within_its_precision(networks):
    loss, logits, grads = networks["numpy"]
    t_loss, t_logits, t_grads = networks["torch32"]
    errors = {"loss": rel_err(t_loss, loss), "logits": rel_err(t_logits, logits)}
    errors |= {k: rel_err(t_grads[k], grads[k]) for k in t_grads}
    assert max(errors.values()) <= 1e-4, errors


def test_paper_dropout_equals_inverted_dropout_with_halved_next_weights(networks):
    # Paper form: y = W (h * m) in training, W (h * q) at test. Inverted form with W' = q W gives
    # q W (h * m / q) and q W h: the same numbers, so the two forms are one network.
    base, x, q = networks["net"], networks["x"], 0.5
    weights = dict(base.params)
    halved = dict(weights, **{k: q * weights[k] for k in ("classifier.3.weight", "classifier.6.weight")})
    for train in (False, True):
        paper = ReferenceAlexNet(weights, dropout_form="paper", seed=5).forward(x, train=train)
        inverted = ReferenceAlexNet(halved, dropout_form="inverted", seed=5).forward(x, train=train)
        assert rel_err(inverted, paper) <= 1e-12
    other_seed = ReferenceAlexNet(weights, dropout_form="paper", seed=6).forward(x, train=True)
    assert rel_err(other_seed, paper) > 1e-3   # the masks really are random, and seeded


def test_an_empty_batch_gives_empty_logits_and_zero_gradients_as_torch_does(networks):
    net = ReferenceAlexNet(dict(networks["net"].params))
    assert net.forward(np.zeros((0, 3, 227, 227))).shape == (0, 10)
    grads = net.backward(np.zeros((0, 10)))
    assert set(grads) == set(net.params) and all(not g.any() for g in grads.values())


def test_network_rejects_wrong_weights_and_input_size(networks):
    weights = dict(networks["net"].params)
    with pytest.raises(ValueError, match="missing"):
        ReferenceAlexNet({k: v for k, v in weights.items() if k != "features.4.bias"})
    with pytest.raises(ValueError, match="features.4"):
        ReferenceAlexNet(dict(weights, **{"features.4.weight": np.zeros((256, 96, 5, 5))}))
    with pytest.raises(ValueError, match="227"):
        networks["net"].forward(networks["x"][:1, :, :224, :224])


# --------------------------------------------------------------------------- the fully-convolutional form

def test_fully_convolutional_layers_are_the_layers_without_flatten_and_with_fc_as_conv():
    fc_as_conv = [(n, "conv" if k == "fc" else k, key) for n, k, key, _ in LAYERS if k != "flatten"]
    assert [(n, k, key) for n, k, key, _ in FULLY_CONVOLUTIONAL_LAYERS] == fc_as_conv
    # A filter as large as its input, at every offset: no stride to skip, no padding to invent.
    assert all(hp == dict(stride=1, pad=0, groups=1) for n, _, _, hp in FULLY_CONVOLUTIONAL_LAYERS if n[:2] == "fc")


def test_fully_convolutional_map_at_227_is_the_networks_logits(networks):
    net, x = networks["net"], networks["x"]
    fcn = net.to_fully_convolutional()
    scores = fcn.forward(x)
    assert scores.shape == (2, net.num_classes, 1, 1)
    # fc as a matrix product against fc as an unfolded 1x1 (or 6x6) convolution: float64 rounding apart.
    assert rel_err(scores[:, :, 0, 0], networks["numpy"][1]) <= 1e-12
    # Its weights are a copy: neither network sees the other change.
    assert not any(np.shares_memory(fcn.params[k], net.params[k]) for k in net.params)
    assert fcn.params["classifier.0.weight"].shape == (4096, 256, 6, 6)
    # Filter entry (o, c, r, k) weighs what flatten() put at c * 36 + r * 6 + k: pool5[c, r, k].
    assert fcn.params["classifier.0.weight"][9, 17, 4, 2] == net.params["classifier.0.weight"][9, 17 * 36 + 4 * 6 + 2]
