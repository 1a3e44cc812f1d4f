"""The paper's AlexNet (docs/paper-numbers.md section 1) in NumPy, forward and backward, built from :mod:`.layers`.

It reads the state_dict of ``alexnet.AlexNet(variant="paper")`` (as NumPy arrays, same keys) and is
the project's oracle: the tests hold its logits and every parameter gradient equal to PyTorch's.

    net = AlexNet({k: v.double().numpy() for k, v in model.state_dict().items()})
    logits = net.forward(x)                 # x: (N, 3, 227, 227)
    grads = net.backward(dlogits)           # {"features.0.weight": ..., ...}, the state_dict's keys

    fcn = net.to_fully_convolutional()      # fc6-fc8 as convolutions, as alexnet.fully_convolutional
    scores = fcn.forward(images)            # (N, 3, H, W), H, W >= 227 -> (N, classes, h, w)
"""

from __future__ import annotations

import numpy as np

from . import layers as L

# The same three conventions as alexnet.lrn.LRN_CONVENTIONS (a test holds them equal). Copied rather
# than imported because alexnet.lrn imports torch.
LRN_CONVENTIONS = {
    "paper": dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False),
    "cuda-convnet": dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=True),
    "caffe": dict(size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_over_size=True),
}

# Forward order. The keys are the indices in alexnet.AlexNet's features / classifier Sequentials,
# so the state_dict drops in unchanged. Shapes in the comments are per image, CHW.
LAYERS = (
    ("conv1", "conv", "features.0", dict(stride=4, pad=0, groups=1)),    # 3x227x227 -> 96x55x55
    ("relu1", "relu", None, {}),
    ("norm1", "lrn", None, {}),                                         # two towers of 48 channels
    ("pool1", "pool", None, {}),                                        # -> 96x27x27
    ("conv2", "conv", "features.4", dict(stride=1, pad=2, groups=2)),   # -> 256x27x27
    ("relu2", "relu", None, {}),
    ("norm2", "lrn", None, {}),
    ("pool2", "pool", None, {}),                                        # -> 256x13x13
    ("conv3", "conv", "features.8", dict(stride=1, pad=1, groups=1)),   # -> 384x13x13, sees both towers
    ("relu3", "relu", None, {}),
    ("conv4", "conv", "features.10", dict(stride=1, pad=1, groups=2)),  # -> 384x13x13
    ("relu4", "relu", None, {}),
    ("conv5", "conv", "features.12", dict(stride=1, pad=1, groups=2)),  # -> 256x13x13
    ("relu5", "relu", None, {}),
    ("pool5", "pool", None, {}),                                        # -> 256x6x6
    ("flatten", "flatten", None, {}),                                   # -> 9216
    ("fc6", "fc", "classifier.0", {}),                                  # -> 4096
    ("relu6", "relu", None, {}),
    ("drop6", "dropout", None, {}),
    ("fc7", "fc", "classifier.3", {}),                                  # -> 4096
    ("relu7", "relu", None, {}),
    ("drop7", "dropout", None, {}),
    ("fc8", "fc", "classifier.6", {}),                                  # -> num_classes
)

# The same network fully convolutional (alexnet.fully_convolutional): no flatten, and each fc layer a
# convolution whose filter covers its whole input, fc6's 6x6 over pool5 and fc7's and fc8's 1x1. For pool5
# of (h + 5) x (w + 5) the map is h x w; at 227x227 pool5 is 6x6 and the map one position.
FULLY_CONVOLUTIONAL_LAYERS = LAYERS[:15] + (
    ("fc6", "conv", "classifier.0", dict(stride=1, pad=0, groups=1)),  # -> 4096 x h x w, sees both towers
    ("relu6", "relu", None, {}),
    ("drop6", "dropout", None, {}),
    ("fc7", "conv", "classifier.3", dict(stride=1, pad=0, groups=1)),  # -> 4096 x h x w
    ("relu7", "relu", None, {}),
    ("drop7", "dropout", None, {}),
    ("fc8", "conv", "classifier.6", dict(stride=1, pad=0, groups=1)),  # -> num_classes x h x w
)
INPUT_SIZE = 227       # the smallest side that leaves pool5 6x6
STRIDE = 32            # input pixels per map position: conv1's stride 4 times three pools' 2

# Weight shapes; fc8's row count is the number of classes and is read from the weights.
WEIGHT_SHAPES = {
    "features.0": (96, 3, 11, 11),
    "features.4": (256, 48, 5, 5),
    "features.8": (384, 256, 3, 3),
    "features.10": (384, 192, 3, 3),
    "features.12": (256, 192, 3, 3),
    "classifier.0": (4096, 9216),
    "classifier.3": (4096, 4096),
    "classifier.6": (None, 4096),
}


def _check_weights(weights):
    expected = {f"{p}.{s}" for p in WEIGHT_SHAPES for s in ("weight", "bias")}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"not a paper AlexNet state_dict: missing {missing}, unexpected {unexpected}")
    params = {k: np.asarray(v) for k, v in weights.items()}
    for prefix, shape in WEIGHT_SHAPES.items():
        w, b = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
        if len(w.shape) != len(shape) or any(e is not None and e != a for e, a in zip(shape, w.shape)) \
                or b.shape != w.shape[:1]:
            raise ValueError(f"{prefix}: weight {w.shape} and bias {b.shape} do not fit {shape}")
    return params


class AlexNet:
    """The paper network over NumPy arrays; NCHW input of 227x227, logits out.

    Args:
        weights: ``alexnet.AlexNet(variant="paper").state_dict()`` as NumPy arrays (same keys).
            Computation runs in their dtype (and the input's): pass float64 for the checks.
        lrn: "paper", "cuda-convnet" or "caffe" (see LRN_CONVENTIONS).
        dropout: drop probability on the fc6 and fc7 outputs.
        dropout_form: "inverted" (default; train x*m/(1-p), test identity, like torch.nn.Dropout, so
            eval-mode logits equal the torch model's) or "paper" (train x*m, test x*(1-p)).
        seed: seeds the dropout masks drawn in training mode.
    """

    def __init__(self, weights, *, lrn="paper", dropout=0.5, dropout_form="inverted", seed=None):
        if lrn not in LRN_CONVENTIONS:
            raise ValueError(f"unknown LRN convention {lrn!r}; choose from {', '.join(LRN_CONVENTIONS)}")
        if dropout_form not in L.DROPOUT_FORMS:
            raise ValueError(f"unknown dropout form {dropout_form!r}; choose from {', '.join(L.DROPOUT_FORMS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.params = _check_weights(weights)
        self.num_classes = self.params["classifier.6.weight"].shape[0]
        self.lrn = LRN_CONVENTIONS[lrn]
        self.dropout, self.dropout_form = dropout, dropout_form
        self.rng = np.random.default_rng(seed)
        self._caches = None

    def forward(self, x, train=False):
        """Images (N, 3, 227, 227) -> logits (N, num_classes); keeps what backward needs."""
        caches = []
        for _, kind, key, hp in LAYERS:
            if kind == "flatten":
                if x.shape[1:] != (256, 6, 6):
                    raise ValueError(f"pool5 is {x.shape[1:]}, not (256, 6, 6): the paper network needs "
                                     f"(N, 3, 227, 227) input (any side from 227 to 258 gives pool5 6x6)")
                cache, x = x.shape, x.reshape(len(x), 256 * 6 * 6)   # -1 cannot be inferred for N = 0
            else:
                x, cache = _layer_forward(self, kind, key, hp, x, train, self.rng)
            caches.append(cache)
        self._caches = caches
        return x

    def backward(self, dlogits):
        """dL/dlogits (N, num_classes) -> dL/dparameter for every state_dict key, in its order."""
        if self._caches is None:
            raise RuntimeError("backward needs a forward first")
        grads, d = {}, dlogits
        for (name, kind, key, _), cache in zip(reversed(LAYERS), reversed(self._caches)):
            if kind == "conv":
                # conv1's input gradient would be the image's: costly (stride 4 dilates dy 16-fold) and unused.
                d, grads[f"{key}.weight"], grads[f"{key}.bias"] = L.conv_backward(d, cache, need_dx=name != "conv1")
            elif kind == "fc":
                d, grads[f"{key}.weight"], grads[f"{key}.bias"] = L.fc_backward(d, cache)
            elif kind == "relu":
                d = L.relu_backward(d, cache)
            elif kind == "lrn":
                d = L.lrn_backward(d, cache)
            elif kind == "pool":
                d = L.maxpool_backward(d, cache)
            elif kind == "dropout":
                d = L.dropout_backward(d, cache)
            else:
                d = d.reshape(cache)
        return {k: grads[k] for k in self.params}

    def to_fully_convolutional(self):
        """A copy of this network with fc6-fc8 as convolutions (FullyConvolutionalAlexNet)."""
        return FullyConvolutionalAlexNet(self)


class FullyConvolutionalAlexNet:
    """The paper network with fc6, fc7 and fc8 as convolutions (FULLY_CONVOLUTIONAL_LAYERS), evaluation only:
    images (N, 3, H, W), H and W at least 227 -> class scores (N, num_classes, h, w), h = (H - 227) // 32 + 1.
    At 227x227 the map is the logits of ``AlexNet.forward``.

    Built by ``AlexNet.to_fully_convolutional()`` from a copy of its weights, fc6's row for output o reshaped
    to the (256, 6, 6) filter it is: flatten() lays pool5 out as (channel, row, column), and so does reshape().
    LRN convention and dropout (at its test-time form) are the network's.
    """

    def __init__(self, net):
        self.params = {k: _as_conv(v).copy() for k, v in net.params.items()}
        self.num_classes, self.lrn = net.num_classes, dict(net.lrn)
        self.dropout, self.dropout_form = net.dropout, net.dropout_form

    def forward(self, x):
        """Images (N, 3, H, W) -> scores (N, num_classes, h, w); nothing is kept for a backward."""
        if min(x.shape[-2:]) < INPUT_SIZE:
            raise ValueError(f"the fully-convolutional network needs images of at least {INPUT_SIZE}x{INPUT_SIZE} "
                             f"(pool5 6x6), got {x.shape[-2]}x{x.shape[-1]}")
        for _, kind, key, hp in FULLY_CONVOLUTIONAL_LAYERS:
            x, _ = _layer_forward(self, kind, key, hp, x, train=False)
        return x

    def map_size(self, height, width):
        """(h, w) of the score map for an input of ``height`` x ``width``; 0 along a side under 227."""
        return _map_side(height), _map_side(width)


def _map_side(side):
    # Each 32 pixels past 227 add a row of pool5 (its 6 rows become 7) and so a row of the map.
    return 0 if side < INPUT_SIZE else (side - INPUT_SIZE) // STRIDE + 1


def _as_conv(w):
    """A 2-d fc weight as its convolution filters: fc6's over pool5's 256 x 6 x 6, fc7's and fc8's 1x1.
    Anything else (conv weights, biases) as it is."""
    if w.ndim != 2:
        return w
    return w.reshape(w.shape[0], 256, 6, 6) if w.shape[1] == 256 * 6 * 6 else w.reshape(*w.shape, 1, 1)


def _layer_forward(net, kind, key, hp, x, train, rng=None):
    """One row of a layer table (not flatten) with ``net``'s parameters and settings: (y, cache)."""
    if kind == "conv":
        return L.conv_forward(x, net.params[f"{key}.weight"], net.params[f"{key}.bias"], **hp)
    if kind == "fc":
        return L.fc_forward(x, net.params[f"{key}.weight"], net.params[f"{key}.bias"])
    if kind == "relu":
        return L.relu_forward(x)
    if kind == "lrn":
        return L.lrn_forward(x, towers=2, **net.lrn)
    if kind == "pool":
        return L.maxpool_forward(x, size=3, stride=2)
    if kind == "dropout":
        return L.dropout_forward(x, net.dropout, train=train, form=net.dropout_form, rng=rng)
    raise ValueError(f"unknown layer kind {kind!r}")
