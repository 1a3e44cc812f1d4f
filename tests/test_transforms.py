"""Training crops, the 10 test views and PCA colour noise, checked against slices, torchvision and statistics."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from alexnet.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Draws, Normalize, PCANoise, _crop_gather, _crop_loop,
                                     center_view, crop, ten_views, train_views)
from conftest import interpreted

ZERO = Normalize(torch.zeros(3))


def batch(n=4, size=256, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def nchw(images):
    return images.permute(0, 3, 1, 2).float()


def position_coded(n=4, size=256, seed=0):
    """Images whose red channel is the column and green the row (blue random): any crop says where it is from."""
    images = batch(n, size, seed)
    ramp = torch.arange(size, dtype=torch.uint8)
    images[..., 0] = ramp[None, None, :]
    images[..., 1] = ramp[None, :, None]
    return images


def find_offset(view, image, size):
    """(top, left, mirrored) of ``view`` in a position-coded ``image``, verified pixel for pixel."""
    top = int(view[1, 0, 0])
    mirrored = bool(view[0, 0, 0] > view[0, 0, -1])
    left = int(view[0, 0, -1] if mirrored else view[0, 0, 0])
    expected = image[:, top:top + size, left:left + size]
    assert torch.equal(view, expected.flip(-1) if mirrored else expected), "view is not a crop of the image"
    return top, left, mirrored


@pytest.mark.parametrize("size", [227, 224])
def test_train_crops_are_crops_of_the_image_in_range(size):
    images = position_coded(4)
    x = train_views(images, size, ZERO, generator=torch.Generator().manual_seed(1))
    assert x.shape == (4, 3, size, size) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    for n in range(4):
        top, left, _ = find_offset(x[n], nchw(images)[n], size)
        assert 0 <= top <= 256 - size and 0 <= left <= 256 - size


def test_train_positions_cover_the_range_and_half_are_mirrored():
    # Small images whose red channel is the column and green the row: a crop's first pixel is its position.
    g = torch.Generator().manual_seed(2)
    n, side, size = 2000, 40, 11                                  # 30 possible offsets, as 256 -> 227
    ramp = torch.arange(side, dtype=torch.uint8)[None, :].expand(side, side)
    images = torch.stack([ramp, ramp.T, ramp], -1).expand(n, side, side, 3).contiguous()
    x = train_views(images, size, ZERO, generator=g)
    first_col, last_col = x[:, 0, 0, 0], x[:, 0, 0, -1]
    mirrored = first_col > last_col
    lefts = torch.where(mirrored, last_col, first_col).long()
    tops = x[:, 1, 0, 0].long()
    assert set(tops.tolist()) == set(range(30)) and set(lefts.tolist()) == set(range(30))
    # Binomial(2000, 0.5): 6 standard deviations is about 134.
    assert abs(int(mirrored.sum()) - n / 2) < 134


def test_same_generator_seed_gives_same_augmentation():
    images = batch(4)
    pca = PCANoise(torch.tensor([0.2, 0.02, 0.004]), torch.eye(3))
    a = train_views(images, 227, ZERO, pca, generator=torch.Generator().manual_seed(5))
    b = train_views(images, 227, ZERO, pca, generator=torch.Generator().manual_seed(5))
    c = train_views(images, 227, ZERO, pca, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mean_image_is_subtracted_at_the_pixels_it_belongs_to():
    images = position_coded(3)
    mean = torch.rand(256, 256, 3) * 255
    g = torch.Generator().manual_seed(3)
    raw = train_views(images, 227, ZERO, generator=torch.Generator().manual_seed(3))
    normed = train_views(images, 227, Normalize(mean), generator=g)
    # Whatever crop and mirror each image got, it must equal (image - mean image) cropped the same way.
    full = nchw(images) - mean.permute(2, 0, 1)
    for n in range(3):
        top, left, mirrored = find_offset(raw[n], nchw(images)[n], 227)
        expected = full[n, :, top:top + 227, left:left + 227]
        torch.testing.assert_close(normed[n], expected.flip(-1) if mirrored else expected)


@pytest.mark.parametrize("size", [227, 224])
def test_ten_views_are_five_crops_and_the_reflection_of_each(size):
    # Paper section 4.1: "the four corner patches and the center patch as well as their horizontal reflections".
    images = batch(3)
    views = ten_views(images, size, ZERO)
    assert views.shape == (3, 10, 3, size, size)
    x = nchw(images)
    five = TF.five_crop(x, size)   # torchvision's corners and centre crop
    assert torch.equal(views[:, 0], x[..., :size, :size])            # top-left
    assert torch.equal(views[:, 1], x[..., :size, -size:])           # top-right
    assert torch.equal(views[:, 2], x[..., -size:, :size])           # bottom-left
    assert torch.equal(views[:, 3], x[..., -size:, -size:])          # bottom-right
    for i in range(5):
        assert torch.equal(views[:, i], five[i]), i
        assert torch.equal(views[:, 5 + i], TF.horizontal_flip(five[i])), i
    # torchvision's ten_crop holds the same ten where 256 - size is even; where odd (227), its centre crop of
    # the mirrored image is one pixel off the reflected centre crop.
    tv = TF.ten_crop(x, size)
    assert torch.equal(views[:, 9], tv[9]) == (size == 224)


def test_center_view_equals_torchvision_center_crop_with_imagenet_normalisation():
    images = batch(2)
    norm = Normalize.create("imagenet")
    got = center_view(images, 224, norm)
    expected = TF.normalize(TF.center_crop(nchw(images), [224, 224]) / 255,
                            [m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD])
    torch.testing.assert_close(got, expected)


def test_gather_and_loop_crops_agree():
    images = batch(5)
    mean = torch.rand(256, 256, 3) * 255
    g = torch.Generator().manual_seed(4)
    tops, lefts = torch.randint(0, 30, (7,), generator=g), torch.randint(0, 30, (7,), generator=g)
    flips, sources = torch.rand(7, generator=g) < 0.5, torch.randint(0, 5, (7,), generator=g)
    for m in (mean, torch.tensor([100.0, 110.0, 120.0])):
        args = (images, m, tops, lefts, flips, sources, 227, m.dim() == 3)
        torch.testing.assert_close(_crop_gather(*args), _crop_loop(*args))


@pytest.mark.parametrize("convention", ["paper", "cuda-convnet"])
def test_pca_noise_has_the_stated_distribution(convention):
    eigvals = torch.tensor([0.2175, 0.0188, 0.0045])
    eigvecs = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    eigvecs, _ = torch.linalg.qr(eigvecs)  # the published constants are orthonormal to 4 digits only
    pca = PCANoise(eigvals, eigvecs, convention=convention)
    n = 20000
    shifts = pca.sample(n, torch.Generator().manual_seed(0)).double()   # (n, 3), 0-255 units
    alphas = shifts @ eigvecs.double() / 255.0                           # coordinates along p_i
    scale = eigvals.double() if convention == "paper" else eigvals.double().sqrt()
    alphas = alphas / scale                                               # should be N(0, 0.1), independent
    assert alphas.mean(0).abs().max() < 6 * 0.1 / math.sqrt(n)
    torch.testing.assert_close(alphas.std(0), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.03, atol=0)
    corr = torch.corrcoef(alphas.T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 6 / math.sqrt(n)
    within_one_sd = (alphas.abs() < 0.1).double().mean(0)
    assert ((within_one_sd - 0.6827).abs() < 0.02).all()  # Gaussian, not merely the right variance


def test_pca_noise_shifts_every_pixel_of_an_image_by_the_same_colour():
    images = batch(4)
    pca = PCANoise(torch.tensor([0.2, 0.02, 0.004]), torch.linalg.qr(torch.randn(3, 3))[0])
    clean = train_views(images, 227, ZERO, generator=torch.Generator().manual_seed(9))
    noisy = train_views(images, 227, ZERO, pca, generator=torch.Generator().manual_seed(9))
    shift = noisy - clean
    per_image = shift[:, :, :1, :1]
    torch.testing.assert_close(shift, per_image.expand_as(shift), rtol=0, atol=1e-4)
    assert shift.abs().amax() > 0.1
    # And that shift is the one the generator draws after the crop positions and flips.
    g = torch.Generator().manual_seed(9)
    torch.randint(0, 30, (4,), generator=g), torch.randint(0, 30, (4,), generator=g), torch.rand(4, generator=g)
    torch.testing.assert_close(per_image.flatten(1), pca.sample(4, g))


FIELDS = ("tops", "lefts", "flips", "normal")


def test_per_sample_draws_depend_only_on_seed_epoch_and_index():
    idx = torch.tensor([5, 9, 2, 7, 1_281_166])
    whole = Draws.per_sample(idx, epoch=3, seed=1, height=256, width=256, size=227)
    halves = [Draws.per_sample(idx[:2], 3, 1, 256, 256, 227), Draws.per_sample(idx[2:], 3, 1, 256, 256, 227)]
    order = torch.tensor([4, 2, 0, 3, 1])
    shuffled = Draws.per_sample(idx[order], 3, 1, 256, 256, 227)
    for field in FIELDS:
        assert torch.equal(getattr(whole, field), torch.cat([getattr(h, field) for h in halves]))
        assert torch.equal(getattr(whole, field)[order], getattr(shuffled, field))
    for other in (Draws.per_sample(idx, epoch=4, seed=1, height=256, width=256, size=227),
                  Draws.per_sample(idx, epoch=3, seed=2, height=256, width=256, size=227)):
        assert not torch.equal(whole.tops, other.tops) and not torch.equal(whole.lefts, other.lefts)
        assert not (whole.normal == other.normal).any()
    assert whole.tops.dtype == whole.lefts.dtype == torch.long and whole.flips.dtype == torch.bool
    assert whole.normal.dtype == torch.float64 and whole.normal.shape == (5, 3)
    assert not Draws.per_sample(idx, 3, 1, 256, 256, 227, flip=False).flips.any() and whole.flips.any()
    empty = Draws.per_sample(torch.zeros(0, dtype=torch.int64), 3, 1, 256, 256, 227)
    assert [tuple(getattr(empty, f).shape) for f in FIELDS] == [(0,), (0,), (0,), (0, 3)]
    assert empty.tops.dtype == torch.long and empty.flips.dtype == torch.bool and empty.normal.dtype == torch.float64
    with pytest.raises(ValueError, match="larger than"):
        Draws.per_sample(idx, 3, 1, 256, 200, 227)


MASK, GOLDEN = 2**64 - 1, 0x9E3779B97F4A7C15


def mix64(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def reference_draws(seed, epoch, index, crops=30):
    """The same hash on Python ints: splitmix64 streams keyed by (seed, epoch, stream), read at ``index``."""
    key = mix64(((mix64(((seed & MASK) + GOLDEN) & MASK) ^ epoch) + GOLDEN) & MASK)
    h = [mix64((mix64(((key ^ stream) + GOLDEN) & MASK) + index * GOLDEN) & MASK) for stream in range(9)]
    radius = [math.sqrt(-2 * math.log(((h[3 + k] >> 11) + 1) / 2**53)) for k in range(3)]
    normal = [r * math.cos(2 * math.pi * (h[6 + k] >> 11) / 2**53) for k, r in enumerate(radius)]
    return (h[0] >> 32) * crops >> 32, (h[1] >> 32) * crops >> 32, bool(h[2] >> 63), normal


def test_per_sample_draws_equal_an_independent_pure_python_hash():
    # Pinned: changing these changes every run's augmentation, so resumed runs would not match.
    pinned = {(0, 0, 0): (15, 23, True, [-1.6149393879368, 0.3353335096724, -0.7935846641182]),
              (1, 3, 5): (19, 8, False, [0.3645241711370, -1.2998241145452, 1.3246967414037]),
              (12345, 89, 1_281_166): (12, 26, True, [-0.8220706546673, 0.8010755924402, 0.3739506774918]),
              (2**40, 0, 7): (11, 25, False, [2.0988141557852, -0.1876065317302, -0.4320703000498])}
    for (seed, epoch, index), (top, left, flip, normal) in pinned.items():
        ref = reference_draws(seed, epoch, index)
        assert ref[:3] == (top, left, flip) and ref[3] == pytest.approx(normal, abs=1e-12)
    for seed, epoch in ((0, 0), (12345, 89), (2**40, 7)):
        idx = list(range(0, 2_000_000, 9973)) + [2**40 + 3]
        d = Draws.per_sample(torch.tensor(idx), epoch, seed, 256, 256, 227)
        refs = [reference_draws(seed, epoch, i) for i in idx]
        assert d.tops.tolist() == [r[0] for r in refs] and d.lefts.tolist() == [r[1] for r in refs]
        assert d.flips.tolist() == [r[2] for r in refs]
        torch.testing.assert_close(d.normal, torch.tensor([r[3] for r in refs], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def chi_square(values, k):
    counts = torch.bincount(values, minlength=k).double()
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


def ks_distance(x):
    """Kolmogorov-Smirnov distance of the sample ``x`` from the standard normal CDF."""
    x = sorted(x)
    n = len(x)
    cdf = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    return max(max((i + 1) / n - c, c - i / n) for i, c in enumerate(cdf))


def test_per_sample_draws_have_the_right_distributions():
    n = 30_000
    d = Draws.per_sample(torch.arange(n) + 10**9, epoch=2, seed=7, height=256, width=256, size=227)
    # 30 equally likely positions: chi-square on 29 degrees of freedom is 29 +- 7.6; 70 is p ~ 3e-5.
    bound = 70
    for crops in (d.tops, d.lefts):
        assert set(crops.tolist()) == set(range(30)) and chi_square(crops, 30) < bound
    # The bound has power: 5 random bits folded onto 30 positions (a modulo bias), or 29 positions, fail it.
    bits = torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(0))
    assert chi_square(bits % 30, 30) > 10 * bound and chi_square(bits * 29 // 32, 30) > 10 * bound
    assert abs(d.flips.double().mean() - 0.5) < 0.015                   # 5 sd
    z = d.normal
    assert z.mean(0).abs().max() < 0.03 and (z.std(0) - 1).abs().max() < 0.02
    assert max(ks_distance(z[:, k].tolist()) for k in range(3)) < 0.015    # sqrt(n) D = 2.6: p ~ 3e-6
    assert ks_distance((z[:, 0] * 1.1).tolist()) > 0.015                    # and a 10% wider normal fails it
    # Nothing drawn for a sample predicts its other draws, or its neighbour's.
    columns = torch.stack([d.tops.double(), d.lefts.double(), d.flips.double(), *z.T, d.tops.roll(1).double()])
    corr = torch.corrcoef(columns) - torch.eye(len(columns), dtype=torch.float64)
    assert corr.abs().max() < 0.03                                          # 1 / sqrt(n) = 0.006


def test_wrong_batches_are_clear_errors():
    with pytest.raises(ValueError, match="uint8 batch"):
        center_view(torch.zeros(2, 3, 256, 256, dtype=torch.uint8), 227, ZERO)
    with pytest.raises(ValueError, match="larger than"):
        ten_views(batch(1, size=200), 227, ZERO)
    with pytest.raises(ValueError, match="needs the training set"):
        Normalize.create("mean-image")


def test_crop_handles_a_single_source_image_many_times():
    images = batch(1)
    out = crop(images, torch.tensor([0, 29]), torch.tensor([0, 29]), torch.tensor([False, True]), 227, ZERO,
               sources=torch.tensor([0, 0]))
    assert torch.equal(out[0], nchw(images)[0, :, :227, :227])
    assert torch.equal(out[1], nchw(images)[0, :, 29:, 29:].flip(-1))


@pytest.fixture(scope="module")
def triton_crop():
    """CUDA's crop kernel, run here on CPU tensors through Triton's interpreter."""
    yield from interpreted("alexnet.kernels.crop_triton")


@pytest.mark.parametrize("kernel", ["c", "triton"])
@pytest.mark.parametrize("per_pixel", [True, False])
@pytest.mark.parametrize("with_std", [True, False])
def test_the_fused_crops_equal_slicing_and_the_formula(kernel, per_pixel, with_std, request):
    from alexnet import kernels
    from alexnet.data.transforms import crop_fused

    if kernel == "c":
        assert kernels.crop_cpu() is not None          # else this would test nothing
    else:
        crop_fused = request.getfixturevalue("triton_crop").crop
    images = batch(5)
    g = torch.Generator().manual_seed(8)
    mean = torch.rand(256, 256, 3, generator=g) * 255 if per_pixel else torch.tensor([100.0, 110.0, 120.0])
    norm = Normalize(mean, torch.tensor([50.0, 60.0, 70.0]) if with_std else None)
    tops, lefts = torch.randint(0, 30, (7,), generator=g), torch.randint(0, 30, (7,), generator=g)
    flips, sources = torch.rand(7, generator=g) < 0.5, torch.randint(0, 5, (7,), generator=g)
    shift = torch.randn(7, 3, generator=g) * 20
    got = crop_fused(images, mean, norm.std, shift, sources, tops, lefts, flips, 227, per_pixel)
    for k in range(7):
        t, l = int(tops[k]), int(lefts[k])
        m = mean[t:t + 227, l:l + 227] if per_pixel else mean
        expected = images[sources[k], t:t + 227, l:l + 227].float() - m + shift[k]
        if flips[k]:
            expected = expected.flip(1)
        if with_std:
            expected = expected / norm.std
        torch.testing.assert_close(got[k], expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("path", ["loop", "gather"])
@pytest.mark.parametrize("per_pixel", [True, False])
def test_the_fallback_crops_equal_the_formula_with_pca_shift_and_std(path, per_pixel, monkeypatch):
    # Without the C kernel (no compiler, ALEXNET_NATIVE=0; on CUDA without Triton, the gather), crop() adds the
    # PCA shift and divides by the std itself: (x - mean + shift) / std, written out here in float64.
    from alexnet.data import transforms

    monkeypatch.setattr(transforms, "_have_crop_kernel", lambda: False)
    if path == "gather":
        monkeypatch.setattr(transforms, "_crop_loop", _crop_gather)
    images = batch(5)
    g = torch.Generator().manual_seed(9)
    mean = torch.rand(256, 256, 3, generator=g) * 255 if per_pixel else torch.tensor([100.0, 110.0, 120.0])
    norm = Normalize(mean, torch.tensor([50.0, 60.0, 70.0]))
    tops, lefts = torch.randint(0, 30, (7,), generator=g), torch.randint(0, 30, (7,), generator=g)
    flips, sources = torch.rand(7, generator=g) < 0.5, torch.randint(0, 5, (7,), generator=g)
    shift = torch.randn(7, 3, generator=g) * 20
    got = crop(images, tops, lefts, flips, 227, norm, sources=sources, shift=shift)
    assert got.shape == (7, 3, 227, 227) and got.dtype == torch.float32
    for k in range(7):
        t, l = int(tops[k]), int(lefts[k])
        m = (mean[t:t + 227, l:l + 227] if per_pixel else mean).double()
        expected = (images[sources[k], t:t + 227, l:l + 227].double() - m + shift[k].double()) / norm.std.double()
        if flips[k]:
            expected = expected.flip(1)
        torch.testing.assert_close(got[k].double(), expected.permute(2, 0, 1), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kernel", ["c", "triton"])
def test_the_fused_crops_are_float32_whatever_the_default_dtype(kernel, request):
    # The C kernel writes float32 into a buffer made in the default dtype: under float64, doubles of its bits
    # (1e15 and more), half the buffer never written; Triton's came back float64.
    from alexnet import kernels
    from alexnet.data.transforms import crop_fused

    if kernel == "c":
        assert kernels.crop_cpu() is not None
    else:
        crop_fused = request.getfixturevalue("triton_crop").crop
    images, mean = batch(2), torch.tensor([100.0, 110.0, 120.0])
    args = (images, mean, None, None, torch.tensor([0, 1]), torch.tensor([0, 29]), torch.tensor([29, 0]),
            torch.tensor([False, True]), 227, False)
    expected = crop_fused(*args)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = crop_fused(*args)
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(expected[1], (images[1, 29:, :227].float() - mean).flip(1))


@pytest.mark.parametrize("native", ["1", "0"])
def test_crops_outside_the_images_or_their_mean_image_are_refused_not_read(native, monkeypatch):
    # The C kernel read past the mean image for larger images (NaN crops; a segmentation fault for 3000x3000)
    # and past the images for a crop position outside them; the plain path said neither in words.
    from alexnet import kernels
    from alexnet.data.transforms import _have_crop_kernel
    from alexnet.kernels import build

    monkeypatch.setenv("ALEXNET_NATIVE", native)
    for cached in (kernels.crop_cpu, build.load):
        cached.cache_clear()
    try:
        assert _have_crop_kernel() == (native == "1")
        per_pixel = Normalize(torch.full((256, 256, 3), 100.0))
        for images in (batch(2, size=400), batch(2, size=3000)):
            with pytest.raises(ValueError, match=r"the mean image is 256x256 and the images are (400x400|3000x3000)"):
                center_view(images, 227, per_pixel)
        if native == "1":
            for tops, lefts, sources in (([30], [0], [0]), ([0], [-1], [0]), ([0], [0], [2])):
                with pytest.raises(ValueError, match="a 227x227 crop reaches outside the 2 images of 256x256"):
                    crop(batch(2), torch.tensor(tops), torch.tensor(lefts), torch.tensor([False]), 227, ZERO,
                         sources=torch.tensor(sources))
    finally:
        monkeypatch.undo()
        for cached in (kernels.crop_cpu, build.load):
            cached.cache_clear()


def test_the_cuda_crop_checks_positions_drawn_on_the_cpu(monkeypatch):
    # The Triton kernel masks only its output: a position outside the images read garbage (or faulted) on a GPU.
    from alexnet import kernels
    from alexnet.data.transforms import crop_fused

    on_cuda = crop_fused._backend_fns["cuda"]   # what the op runs for CUDA tensors (run here on CPU ones)
    calls = []
    monkeypatch.setattr(kernels, "crop_cuda", lambda: type("Kernel", (), {"crop": lambda *a: calls.append(a)}))
    images, mean = batch(2), torch.tensor([100.0, 110.0, 120.0])
    for tops, sources in (([30], [0]), ([0], [2])):
        with pytest.raises(ValueError, match="a 227x227 crop reaches outside the 2 images of 256x256"):
            on_cuda(images, mean, None, None, torch.tensor(sources), torch.tensor(tops), torch.tensor([0]),
                    torch.tensor([False]), 227, False)
    assert not calls
    on_cuda(images, mean, None, None, torch.tensor([1]), torch.tensor([29]), torch.tensor([29]), torch.tensor([True]),
            227, False)
    assert len(calls) == 1


def test_compile_keeps_the_fused_crop_as_one_node():
    from alexnet.data.transforms import crop

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    images, norm = batch(3), Normalize(torch.rand(256, 256, 3) * 255, torch.tensor([50.0, 60.0, 70.0]))
    tops, lefts, flips = torch.tensor([0, 7, 29]), torch.tensor([29, 3, 0]), torch.tensor([True, False, True])
    shift = torch.randn(3, 3)
    compiled = torch.compile(crop, backend=keep, fullgraph=True)
    got = compiled(images, tops, lefts, flips, 227, norm, shift=shift)
    ops = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert "alexnet.crop.default" in ops, ops
    torch.testing.assert_close(got, crop(images, tops, lefts, flips, 227, norm, shift=shift))


def test_a_normalisation_is_copied_to_a_device_once():
    from alexnet.data.transforms import to_device

    norm = Normalize(torch.rand(256, 256, 3) * 255, torch.tensor([50.0, 60.0, 70.0]))
    assert norm.on(torch.device("cpu")) is norm
    meta = torch.device("meta")
    moved = norm.on(meta)
    assert moved is norm.on(meta)                  # every later batch finds it there
    assert moved.mean.device == moved.std.device == meta and moved.mean.shape == (256, 256, 3)
    assert norm.mean.device.type == "cpu" and moved.per_pixel
    assert to_device(norm.std, torch.device("cpu")) is norm.std and to_device(norm.std, meta).device == meta
