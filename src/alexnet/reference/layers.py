"""AlexNet's building blocks in NumPy, forward and backward, in the cs231n style.

Every layer is a pair::

    y, cache = <layer>_forward(x, ...)
    dx, ...  = <layer>_backward(dy, cache)

where ``dy`` is dL/dy for some scalar loss L and the backward returns dL/dx (and dL/dparameters).
Shapes follow PyTorch: activations NCHW, conv weights (out, in/groups, kh, kw), linear weights
(out, in). Nothing here knows about torch; the tests prove these functions equal it.
"""

from __future__ import annotations

import numpy as np

DROPOUT_FORMS = ("paper", "inverted")


def _check_batch(what, x, dims=4, shape="(N, C, H, W)"):
    """A batch, as every layer here takes: one image (C, H, W) would otherwise meet a NumPy error about
    broadcasting or unpacking, far from the mistake."""
    if np.ndim(x) != dims:
        one = "; for one image use x[None]" if dims == 4 and np.ndim(x) == 3 else ""
        raise ValueError(f"{what}: expected a batch {shape}, got an array of shape {np.shape(x)}{one}")


def _check_at_least_1(what, **values):
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{what}: {name} must be at least 1, got {value}")


def _check_parameters(what, w, b, dims, w_shape):
    """The weight and bias a layer is given: a wrong one would otherwise meet NumPy's broadcasting or
    unpacking message, which names neither."""
    if np.ndim(w) != dims or np.shape(b) != (np.shape(w)[0],):
        raise ValueError(f"{what}: expected a weight {w_shape} and a bias (O,) with O its first side, "
                         f"got a weight {np.shape(w)} and a bias {np.shape(b)}")


# --------------------------------------------------------------------------- fully-connected

def fc_forward(x, w, b):
    """Fully-connected layer: a matrix product plus a bias.

        y[n, o] = sum_i x[n, i] w[o, i] + b[o]          y = x W^T + b

    x: (N, I), w: (O, I), b: (O,) -> y: (N, O).
    """
    _check_batch("fc", x, 2, "(N, I); flatten the maps first: x.reshape(len(x), -1)")
    _check_parameters("fc", w, b, 2, "(O, I)")
    if np.shape(w)[1] != np.shape(x)[1]:
        raise ValueError(f"fc: the input has {np.shape(x)[1]} values per sample, the weight {np.shape(w)} takes "
                         f"{np.shape(w)[1]}")
    return x @ w.T + b, (x, w)


def fc_backward(dy, cache):
    """dL/dx = dy W,  dL/dW = dy^T x,  dL/db = sum_n dy.   dy: (N, O)."""
    x, w = cache
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# --------------------------------------------------------------------------- convolution

def _im2col(x, kh, kw, stride):
    """Unfold every kh x kw window of an (already padded) x: (N, C, H, W) -> (N, C, kh, kw, Ho, Wo).

    One strided slice per kernel offset (i, j), never a loop over pixels: the slice holds, for every
    output position (p, q), the input pixel x[:, :, stride p + i, stride q + j].
    """
    n, c, h, w = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
    return cols


def _check_window_fits(what, h, w, kh, kw, pad=0):
    """Refuse an input (h x w, padding included) smaller than the window, as torch does: the output-size
    formula would give 0 or a negative side, which NumPy turns into an empty result or a "negative
    dimensions" error."""
    if h < kh or w < kw:
        padded = f" with padding {pad}" if pad else ""
        raise ValueError(f"{what}: the input is {h}x{w}{padded}, smaller than the {kh}x{kw} window")


def _correlate(xp, w, stride, groups):
    """Cross-correlation without padding (what deep learning calls convolution); returns (y, cols).

    Groups split the channels into independent blocks: output block g sees only input block g.
    xp: (N, C, H, W), w: (O, C/groups, kh, kw) -> y: (N, O, Ho, Wo); cols: (N, groups, C/groups kh kw, Ho Wo).
    """
    n, c = xp.shape[:2]
    o, cg, kh, kw = w.shape
    if c != cg * groups or o % groups:
        raise ValueError(f"conv: input has {c} channels, weight {w.shape} with groups={groups} does not fit")
    cols = _im2col(xp, kh, kw, stride)
    ho, wo = cols.shape[-2:]
    cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)
    y = np.matmul(w.reshape(groups, o // groups, cg * kh * kw), cols)        # (N, G, O/G, Ho Wo)
    return y.reshape(n, o, ho, wo), cols


def conv_forward(x, w, b, stride=1, pad=0, groups=1):
    """2-D convolution (cross-correlation, as in every deep learning library) with zero padding.

        y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] xp[n, g(o) C/G + c, stride p + i, stride q + j]

    where xp is x zero-padded by ``pad`` on each side and g(o) is o's group. The output side is
    (H + 2 pad - kh) // stride + 1, so at stride 1 the padding pad = (F - 1) / 2 keeps H.
    x: (N, C, H, W), w: (O, C/groups, kh, kw), b: (O,) -> y: (N, O, Ho, Wo).
    """
    _check_batch("conv", x)
    _check_at_least_1("conv", stride=stride, groups=groups)
    _check_parameters("conv", w, b, 4, "(O, C/groups, kh, kw)")
    if pad < 0:
        raise ValueError(f"conv: pad must be at least 0, got {pad}")
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _check_window_fits("conv", *xp.shape[-2:], *w.shape[-2:], pad)
    y, cols = _correlate(xp, w, stride, groups)
    return y + b[:, None, None], (x.shape, w, stride, pad, groups, cols)


def conv_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv_forward`; ``need_dx=False`` skips dx (a network's first layer).

    The input gradient is itself a convolution, of dy with the spatially flipped filters. From the
    forward sum, each xp[c, u, v] is touched by every (o, p, q, i, j) with stride p + i = u and
    stride q + j = v, so

        dxp[c, u, v] = sum_{o, i, j} d[o, u - i, v - j] w[o, c, i, j],

    where d is dy "dilated": d[o, stride p, stride q] = dy[o, p, q] and zero in between. That is a
    true convolution (index u - i). Pad d with F - 1 zeros on each side and substitute i' = F - 1 - i:

        dxp[c, u, v] = sum_{o, i', j'} dpad[o, u + i', v + j'] w[o, c, F-1-i', F-1-j'],

    a plain cross-correlation, i.e. conv_forward itself, with w flipped in both spatial axes and its
    in/out axes swapped (per group). Rows of xp that no window reached (when stride does not divide
    H + 2 pad - F) get zero gradient; cropping the padding off dxp gives dx.

    The weight gradient pairs dy with the same unfolded windows as the forward:
    dW[o, k] = sum_{n, l} dy[n, o, l] cols[n, k, l];  db[o] = sum_{n, p, q} dy[n, o, p, q].
    """
    (n, c, h, w_), w, stride, pad, groups, cols = cache
    o, cg, kh, kw = w.shape
    ho, wo = dy.shape[-2:]
    dyg = dy.reshape(n, groups, o // groups, ho * wo)
    dw = np.matmul(dyg, cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
    db = dy.sum(axis=(0, 2, 3))
    if not need_dx:
        return None, dw, db

    d = np.zeros((n, o, stride * (ho - 1) + 1, stride * (wo - 1) + 1), dtype=dy.dtype)
    d[:, :, ::stride, ::stride] = dy
    dpad = np.pad(d, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    # (G, O/G, C/G, kh, kw) -> (G, C/G, O/G, kh, kw), flipped: a weight of C outputs over O/G inputs.
    w_flip = w.reshape(groups, o // groups, cg, kh, kw).swapaxes(1, 2)[..., ::-1, ::-1].reshape(c, o // groups, kh, kw)
    dxr, _ = _correlate(dpad, w_flip, 1, groups)
    dxp = np.zeros((n, c, h + 2 * pad, w_ + 2 * pad), dtype=dxr.dtype)
    dxp[:, :, :dxr.shape[2], :dxr.shape[3]] = dxr
    return dxp[:, :, pad:pad + h, pad:pad + w_], dw, db


# --------------------------------------------------------------------------- ReLU

def relu_forward(x):
    """y = max(x, 0), elementwise."""
    return np.maximum(x, 0), x > 0


def relu_backward(dy, cache):
    """dL/dx = dy where x > 0, else 0 (PyTorch's choice at exactly 0, too)."""
    return dy * cache


# --------------------------------------------------------------------------- local response normalisation

def _window_sum(x, before, after, towers):
    """s[c] = sum of x[c - before .. c + after] over the channel axis, clipped at each tower's edges."""
    n, c, h, w = x.shape
    if c % towers:
        raise ValueError(f"LRN over {towers} towers needs a channel count divisible by it, got {c}")
    xt = x.reshape(n, towers, c // towers, h, w)
    # Zero channels beyond a tower's edges contribute nothing: that is the clipping.
    xt = np.pad(xt, ((0, 0), (0, 0), (before, after), (0, 0), (0, 0)))
    ct = c // towers
    s = sum(xt[:, :, m:m + ct] for m in range(before + after + 1))
    return s.reshape(n, c, h, w)


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, towers=1, alpha_over_size=False):
    """Local response normalisation across channels (paper section 3.3):

        b[c] = a[c] / d[c] ** beta,   d[c] = k + alpha' * sum_{c' = c - size//2 .. c + (size-1)//2} a[c']^2

    The window is clipped at the channel edges of c's tower (towers=2: channels [0, C/2) and
    [C/2, C) never mix). alpha' = alpha as printed in the paper; alpha' = alpha / size with
    ``alpha_over_size=True`` (cuda-convnet, Caffe, torch.nn.LocalResponseNorm).
    x: (N, C, H, W) -> same shape.
    """
    _check_batch("lrn", x)
    _check_at_least_1("lrn", size=size, towers=towers)
    if not np.issubdtype(x.dtype, np.floating):   # raw pixels: x * x would wrap around in uint8
        x = x.astype(np.float64)
    a_eff = alpha / size if alpha_over_size else alpha
    d = k + a_eff * _window_sum(x * x, size // 2, (size - 1) // 2, towers)
    scale = d ** -beta
    return x * scale, (x, d, scale, size, a_eff, beta, towers)


def lrn_backward(dy, cache):
    """Every a[j] enters its own numerator and the denominators d[c] of the channels c whose window holds j:

        dL/da[j] = dy[j] d[j]^-beta - 2 alpha' beta a[j] sum_{c : j in window(c)} dy[c] a[c] d[c]^(-beta-1)

    j lies in window(c) iff c lies in the mirrored window around j (size//2 after, (size-1)//2 before),
    clipped at the same tower edges.
    """
    x, d, scale, size, a_eff, beta, towers = cache
    t = dy * x * scale / d
    return dy * scale - 2.0 * a_eff * beta * x * _window_sum(t, (size - 1) // 2, size // 2, towers)


# --------------------------------------------------------------------------- max pooling

def maxpool_forward(x, size=3, stride=2):
    """Max pooling; size 3, stride 2 windows overlap (paper section 3.4).

        y[n, c, p, q] = max_{i, j < size} x[n, c, stride p + i, stride q + j]

    No padding, floor rounding (as nn.MaxPool2d): Ho = (H - size) // stride + 1.
    x: (N, C, H, W) -> y: (N, C, Ho, Wo).
    """
    _check_batch("maxpool", x)
    _check_at_least_1("maxpool", size=size, stride=stride)
    _check_window_fits("maxpool", *x.shape[-2:], size, size)
    win = _im2col(x, size, size, stride)                            # (N, C, size, size, Ho, Wo)
    n, c, _, _, ho, wo = win.shape
    win = win.reshape(n, c, size * size, ho, wo)
    # argmax returns the first maximum in row-major window order, as PyTorch does on ties.
    arg = win.argmax(axis=2)
    return np.take_along_axis(win, arg[:, :, None], axis=2)[:, :, 0], (x.shape, arg, size, stride)


def maxpool_backward(dy, cache):
    """The max is locally a selection, so dy[p, q] flows to the arg-max of window (p, q) only.

    Windows overlap, so an input that wins several windows sums their gradients.
    """
    shape, arg, size, stride = cache
    ho, wo = dy.shape[-2:]
    dx = np.zeros(shape, dtype=dy.dtype)
    for i in range(size):
        for j in range(size):
            # Within one offset (i, j) the strided slice holds distinct pixels, so += cannot collide.
            rows, cols = slice(i, i + stride * (ho - 1) + 1, stride), slice(j, j + stride * (wo - 1) + 1, stride)
            dx[:, :, rows, cols] += dy * (arg == i * size + j)
    return dx


# --------------------------------------------------------------------------- dropout

def dropout_forward(x, p=0.5, train=True, form="paper", rng=None, mask=None):
    """Dropout with drop probability p, keep probability q = 1 - p (paper section 4.2).

        form="paper":     train y = x * m,          test y = x * q   (the paper: "multiply outputs by 0.5")
        form="inverted":  train y = x * m / q,      test y = x       (torch.nn.Dropout)

    with m ~ Bernoulli(q) elementwise, drawn from ``rng`` (a numpy Generator) unless ``mask`` is given.
    Both forms have E[train output] = test output; they differ by the constant q, which the next
    layer's weights absorb.
    """
    if form not in DROPOUT_FORMS:
        raise ValueError(f"unknown dropout form {form!r}; choose from {', '.join(DROPOUT_FORMS)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
    q = 1.0 - p
    if not train:
        factor = q if form == "paper" else 1.0
    else:
        if mask is None:
            if rng is None:
                raise ValueError("training-mode dropout needs an rng (np.random.Generator) or a mask")
            mask = rng.random(x.shape) < q
        mask = np.asarray(mask, dtype=x.dtype)
        factor = mask if form == "paper" else mask / q
    return x * factor, factor


def dropout_backward(dy, cache):
    """y = x * factor with a fixed factor (mask or constant), so dL/dx = dy * factor."""
    return dy * cache


# --------------------------------------------------------------------------- softmax cross-entropy

def softmax_cross_entropy_forward(z, labels):
    """Mean cross-entropy of softmax(z) against integer labels.

        L = (1/N) sum_n [ log sum_k exp(z[n, k]) - z[n, labels[n]] ]

    Subtracting max_k z[n, k] first leaves L unchanged and keeps exp from overflowing.
    z: (N, K), labels: (N,) ints -> scalar L.
    """
    _check_batch("softmax cross-entropy", z, 2, "of scores (N, K)")
    labels = np.asarray(labels)
    # As torch's cross_entropy: labels of another shape would broadcast, and -1 would index the last class.
    if labels.shape != z.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"softmax cross-entropy: labels must be {z.shape[0]} integers, one per row of z, "
                         f"got an array of shape {labels.shape} and dtype {labels.dtype}")
    if labels.size and not 0 <= labels.min() <= labels.max() < z.shape[1]:
        raise ValueError(f"softmax cross-entropy: labels must be class indices 0 to {z.shape[1] - 1}, "
                         f"got {labels.min()} to {labels.max()}")
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = z.shape[0]
    return -log_p[np.arange(n), labels].mean(), (log_p, labels)


def softmax_cross_entropy_backward(dloss, cache):
    """dL/dz[n, k] = (softmax(z)[n, k] - [k == labels[n]]) / N, times the upstream scalar dloss."""
    log_p, labels = cache
    n = log_p.shape[0]
    dz = np.exp(log_p)
    dz[np.arange(n), labels] -= 1.0
    return dz * (dloss / n)
