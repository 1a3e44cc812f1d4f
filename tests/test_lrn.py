"""LRN against a direct loop over the paper's formula, against torch.nn.LocalResponseNorm, and per tower."""

import os
import pwd
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet import kernels
from alexnet import lrn as lrn_module
from alexnet.choices import LRN_NAMES
from alexnet.kernels import build
from alexnet.lrn import LRN_CONVENTIONS, LocalResponseNorm
from conftest import interpreted

# torch.func's first use scripts a helper of torch's own, and torch 2.14 warns that jit.script is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(params=["native", "banded"])
def impl(request, monkeypatch):
    """Run a test through the fused C kernel and through the banded-matrix fallback."""
    if request.param == "banded":
        monkeypatch.setattr(lrn_module, "_fused_ok", lambda x: False)
    return request.param


def loop_lrn(a: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0, towers=1) -> torch.Tensor:
    """Paper section 3.3, written out channel by channel:
    b[i] = a[i] / (k + alpha * sum_{j=max(lo, i-n/2)}^{min(hi, i+n/2)} a[j]^2)^beta, within i's tower."""
    c = a.shape[1]
    per_tower = c // towers
    b = torch.empty_like(a)
    for i in range(c):
        lo = (i // per_tower) * per_tower
        hi = lo + per_tower - 1
        s = sum(a[:, j] ** 2 for j in range(max(lo, i - size // 2), min(hi, i + size // 2) + 1))
        b[:, i] = a[:, i] / (k + alpha * s) ** beta
    return b


def relu_like(*shape, scale=30.0, seed=0):
    # Post-ReLU activations of a real size: large enough that the sum term matters next to k.
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).clamp_min(0)


@pytest.mark.parametrize("towers", [1, 2])
def test_paper_lrn_matches_direct_loop_of_paper_formula(towers):
    a = relu_like(3, 12, 5, 4, scale=300.0)
    lrn = LocalResponseNorm.from_convention("paper", towers=towers)
    expected = loop_lrn(a, alpha=1e-4, k=2.0, towers=towers)
    torch.testing.assert_close(lrn(a), expected, rtol=1e-12, atol=0)
    # The sum term must actually matter at this scale, or the test would pass for any alpha.
    assert (lrn(a) - a / 2.0**0.75).abs().max() > 1e-2 * a.abs().max()


@pytest.mark.parametrize("name,torch_args", [
    ("paper", dict(size=5, alpha=5e-4, beta=0.75, k=2.0)),          # paper alpha 1e-4 per term = 5e-4 / 5
    ("cuda-convnet", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)),
    ("caffe", dict(size=5, alpha=1e-4, beta=0.75, k=1.0)),
])
def test_conventions_match_torch_local_response_norm(name, torch_args):
    a = relu_like(2, 16, 6, 6, scale=300.0, seed=1)
    ours = LocalResponseNorm.from_convention(name, towers=1)
    torch.testing.assert_close(ours(a), nn.LocalResponseNorm(**torch_args)(a), rtol=1e-10, atol=1e-12)


def test_conventions_differ_as_documented():
    c = LRN_CONVENTIONS
    assert (c["paper"].alpha, c["paper"].k, c["paper"].alpha_over_size) == (1e-4, 2.0, False)
    assert LocalResponseNorm.from_convention("cuda-convnet").alpha == pytest.approx(2e-5)
    assert LocalResponseNorm.from_convention("caffe").k == 1.0
    assert tuple(c) == LRN_NAMES   # what --lrn offers (choices.py, read without torch) is what is here


def test_towers_are_kept_apart():
    a = relu_like(1, 96, 3, 3, scale=300.0, seed=2) + 1.0  # no zeros: a zero stays zero whatever its window
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    bumped = a.clone()
    bumped[:, 48] += 1000.0  # first channel of tower 1, adjacent to channel 47 of tower 0
    before, after = lrn(a), lrn(bumped)
    torch.testing.assert_close(after[:, :48], before[:, :48], rtol=0, atol=0)
    assert (after[:, 49:51] != before[:, 49:51]).all()  # its neighbours inside tower 1 do feel it
    # Without towers, channel 47 would have felt channel 48.
    single = LocalResponseNorm.from_convention("paper", towers=1)
    assert (single(bumped)[:, 46:48] != single(a)[:, 46:48]).all()


def test_the_networks_lrn_is_torchs_within_a_tower_and_over_all_channels_once_towers_is_1(impl):
    from alexnet import AlexNet

    norm1 = AlexNet(lrn="caffe").layer("norm1")
    a = relu_like(2, 96, 5, 5, scale=300.0, seed=3).float()
    caffe = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)   # Caffe's LRN: one window over all 96
    per_tower = torch.cat([caffe(a[:, :48]), caffe(a[:, 48:])], 1)
    torch.testing.assert_close(norm1(a), per_tower, rtol=1e-5, atol=1e-6)
    # The README's table holds within a tower: at the boundary (channels 46-49) the windows differ.
    assert ((norm1(a)[:, 46:50] - caffe(a)[:, 46:50]).abs() > 1e-3 * caffe(a)[:, 46:50].abs()).any()
    norm1.towers = 1   # what bvlc_alexnet computed
    torch.testing.assert_close(norm1(a), caffe(a), rtol=1e-5, atol=1e-6)


def test_gradient_matches_finite_differences():
    a = relu_like(2, 8, 3, 3, scale=30.0, seed=3).requires_grad_()
    lrn = LocalResponseNorm(size=5, alpha=1e-2, beta=0.75, k=2.0, towers=2)
    assert torch.autograd.gradcheck(lrn, (a,), eps=1e-6, atol=1e-8)


def test_channels_not_divisible_by_towers_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        LocalResponseNorm(towers=2)(torch.zeros(1, 5, 2, 2))


def test_unknown_convention_is_a_clear_error():
    with pytest.raises(ValueError, match="choose from paper"):
        LocalResponseNorm.from_convention("tf")


def test_the_c_kernel_builds_here():
    # Otherwise every "native" test below would quietly test the fallback.
    assert kernels.lrn_cpu() is not None


def test_loading_the_kernels_leaves_the_processs_subnormals_alone():
    # Linked with -ffast-math, each shared object set flush-to-zero in the thread that loaded it (gcc's
    # crtfastmath): every later float of the user's process lost its subnormals, in that thread only.
    script = ("import numpy, torch\n"
              "from alexnet import kernels\n"
              "assert kernels.lrn_cpu() is not None and kernels.crop_cpu() is not None\n"
              "print(float(torch.tensor([1e-39]) * 1.0), float(numpy.float32(1e-39) * numpy.float32(1)))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    products = [float(v) for v in r.stdout.split()]   # float32's 1e-39 is subnormal (under 1.18e-38), not 0
    assert len(products) == 2 and all(abs(v / 1e-39 - 1) < 1e-6 for v in products), products


@pytest.mark.parametrize("size", [5, 4, 3, 21])   # even windows lean left; 21 exceeds the padded fast path
@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_paths_equal_the_reference_in_float32(impl, size, towers, channels_last):
    a = relu_like(4, 96, 13, 11, scale=200.0, seed=4).float()
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm(size=size, alpha=1e-4, beta=0.75, k=2.0, towers=towers)
    x1, x2 = a.clone().requires_grad_(), a.double().requires_grad_()
    y, ref = lrn(x1), lrn.reference(x2)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    torch.testing.assert_close(x1.grad.double(), x2.grad, rtol=1e-5, atol=1e-6 * x2.grad.abs().max().item())
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("path", ["native", "banded", "reference"])
@pytest.mark.parametrize("beta", [0.5, 1.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_beta_other_than_the_papers_is_torchs_per_tower(path, beta, channels_last, monkeypatch):
    # Every convention has beta 0.75, which the C kernel computes without powf: any other beta takes its
    # general branch. Expected: torch.nn.LocalResponseNorm (alpha divided by the size) on each tower, float64.
    a = relu_like(2, 16, 5, 4, scale=300.0, seed=9)
    lrn = LocalResponseNorm(size=5, alpha=1e-4, beta=beta, k=2.0, towers=2)
    theirs = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=beta, k=2.0)
    x = a.clone().requires_grad_()
    expected = torch.cat([theirs(x[:, :8]), theirs(x[:, 8:])], 1)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    if path == "native":
        assert kernels.lrn_cpu() is not None and lrn_module._fused_ok(a.float())   # else this would test nothing
    elif path == "banded":
        monkeypatch.setattr(lrn_module, "_fused_ok", lambda x: False)
    if path == "reference":
        x, run, tol = a.clone().requires_grad_(), lrn.reference, dict(rtol=1e-10, atol=1e-12)
    else:
        x, run, tol = a.float().requires_grad_(), lrn, dict(rtol=1e-5, atol=1e-6)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y = run(x)
    (grad,) = torch.autograd.grad(y, x, g.to(x.dtype))
    torch.testing.assert_close(y.double(), expected.detach(), **tol)
    torch.testing.assert_close(grad.double(), expected_grad, **tol)
    # beta must matter here: the paper's 0.75 gives other values.
    assert not torch.allclose(expected, LocalResponseNorm(5, 1e-4, 0.75, 2.0, towers=2).reference(a), rtol=1e-2)


@pytest.mark.parametrize("name", ["cuda-convnet", "caffe"])
def test_fast_paths_follow_each_convention(impl, name):
    a = relu_like(2, 32, 7, 7, scale=300.0, seed=6).float().to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention(name, towers=2)
    torch.testing.assert_close(lrn(a).double(), lrn.reference(a.double()), rtol=1e-5, atol=1e-6)


def test_gradient_in_another_layout_than_the_input(impl):
    # Autograd may hand back an NCHW gradient for a channels_last input.
    a = relu_like(2, 96, 9, 9, scale=200.0, seed=7).float().to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    g = torch.randn(2, 96, 9, 9, generator=torch.Generator().manual_seed(0))
    x1, x2 = a.clone().requires_grad_(), a.double().requires_grad_()
    lrn(x1).backward(g)
    lrn.reference(x2).backward(g.double())
    torch.testing.assert_close(x1.grad.double(), x2.grad, rtol=1e-5, atol=1e-6 * x2.grad.abs().max().item())


def test_bf16_is_computed_in_float32_and_rounded_once(impl):
    a = relu_like(2, 96, 9, 9, scale=200.0, seed=8).bfloat16().to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    x = a.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lrn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    y.backward(g)
    exact_in = a.double().requires_grad_()
    exact = lrn.reference(exact_in)
    exact.backward(g.double())
    assert y.dtype == x.grad.dtype == torch.bfloat16
    # Rounded to bf16 once, at the end: within one bf16 ulp (2^-8 relative) of the exact value.
    torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=0)
    torch.testing.assert_close(x.grad.double(), exact_in.grad, rtol=2**-8,
                               atol=2**-8 * exact_in.grad.abs().max().item())


def test_without_a_compiler_it_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.warns(UserWarning, match="PyTorch fallback"):
        assert build.load.__wrapped__("lrn_cpu") is None
    monkeypatch.setenv("ALEXNET_NATIVE", "0")
    assert build.load.__wrapped__("lrn_cpu") is None
    assert not list(tmp_path.rglob("*.so*"))


def test_a_compiler_given_with_its_arguments_builds_a_kernel_others_can_load(monkeypatch, tmp_path):
    # CC="ccache gcc" was run as one program name (the slower fallback, with a warning); a built kernel was
    # mode 0711 (mkstemp's 0600, made executable), which another user sharing ALEXNET_CACHE could not open.
    import shutil
    import stat
    import warnings

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    monkeypatch.delenv("ALEXNET_NATIVE", raising=False)
    monkeypatch.setenv("CC", f"{compiler} -g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.load.__wrapped__("crop_cpu") is not None
    (built,) = tmp_path.rglob("crop_cpu-*.so")
    assert stat.S_IMODE(built.stat().st_mode) & 0o055 == 0o055   # readable and loadable by group and others


@pytest.mark.parametrize("home", ["unknown", "read-only"])
def test_without_a_home_to_write_the_kernel_is_built_in_the_users_temporary_folder(monkeypatch, tmp_path, home):
    # A container run as a user without a password entry (no home at all), or a shared machine's read-only
    # home: the kernel is still built, where this user can write, and not traded for the slower path.
    monkeypatch.delenv("ALEXNET_CACHE", raising=False)
    monkeypatch.delenv("ALEXNET_NATIVE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if home == "unknown":
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.delenv("HOME", raising=False)
        monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
        with pytest.raises(RuntimeError):
            Path.home()
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", "/proc/alexnet-cannot-be-made-here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.load.__wrapped__("lrn_cpu") is not None
    assert [p.parent for p in tmp_path.rglob("lrn_cpu-*.so")] == [tmp_path / f"alexnet-cache-{os.getuid()}" / "kernels"]
    assert (tmp_path / f"alexnet-cache-{os.getuid()}").stat().st_mode & 0o777 == 0o700


def test_a_spare_cache_folder_another_could_write_to_is_not_loaded_from(monkeypatch, tmp_path):
    # The temporary folder is everyone's: a folder of that name that others may write to could hold their
    # kernel for this process to load. Refused, and the kernel is had the slower way.
    monkeypatch.delenv("ALEXNET_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/alexnet-cannot-be-made-here")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"alexnet-cache-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    with pytest.warns(UserWarning, match="not a private folder of this user's.*PyTorch fallback"):
        assert build.load.__wrapped__("lrn_cpu") is None
    assert not list(planted.rglob("*"))


# The Triton kernels (CUDA's fused path) run here on CPU tensors through Triton's interpreter.
@pytest.fixture(scope="module")
def triton_lrn():
    yield from interpreted("alexnet.kernels.lrn_triton")


def triton_against_reference(triton_lrn, lrn, a, grad, dtype):
    """The Triton forward and backward in ``dtype`` next to the float64 reference of the same inputs."""
    x, g = a.to(dtype), grad.to(dtype)
    y = triton_lrn.lrn_forward(x, lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.towers)
    dx = triton_lrn.lrn_backward(x, g, lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.towers)
    exact_in = x.double().requires_grad_()
    exact = lrn.reference(exact_in)
    exact.backward(g.double())
    assert y.dtype == dx.dtype == dtype and y.stride() == dx.stride() == x.stride()
    return y.double(), dx.double(), exact.detach(), exact_in.grad


# 7 and 13 channels a tower and 5x9 pixels divide no block; even windows lean left as in the reference.
@pytest.mark.parametrize("size", [5, 3, 7, 4])
@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_lrn_equals_the_reference_in_float32(triton_lrn, size, towers, channels_last):
    a = relu_like(2, 14 if towers == 2 else 13, 5, 9, scale=200.0, seed=size).float()
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(size))     # NCHW whatever a's layout
    lrn = LocalResponseNorm(size=size, alpha=1e-4, beta=0.75, k=2.0, towers=towers)
    y, dx, exact, exact_grad = triton_against_reference(triton_lrn, lrn, a, g, torch.float32)
    torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-6 * exact.abs().max().item())
    torch.testing.assert_close(dx, exact_grad, rtol=1e-5, atol=1e-6 * exact_grad.abs().max().item())


@pytest.mark.parametrize("name", list(LRN_CONVENTIONS))
def test_triton_lrn_follows_each_convention(triton_lrn, name):
    a = relu_like(2, 32, 3, 5, scale=300.0, seed=6).float().to(memory_format=torch.channels_last)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(2)).to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention(name, towers=2)
    y, dx, exact, exact_grad = triton_against_reference(triton_lrn, lrn, a, g, torch.float32)
    torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-6 * exact.abs().max().item())
    torch.testing.assert_close(dx, exact_grad, rtol=1e-5, atol=1e-6 * exact_grad.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_lrn_computes_half_precision_in_float32_and_rounds_once(triton_lrn, dtype):
    a = relu_like(2, 96, 3, 5, scale=200.0, seed=8).to(memory_format=torch.channels_last)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    y, dx, exact, exact_grad = triton_against_reference(triton_lrn, lrn, a, g, dtype)
    # Within one ulp of the exact value (2^-7 relative for bf16's 8 significant bits, 2^-10 for fp16's
    # 11): the interpreter rounds float32 to bf16 towards zero, a GPU to nearest (half an ulp).
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(y, exact, rtol=ulp, atol=0)
    torch.testing.assert_close(dx, exact_grad, rtol=ulp, atol=ulp * exact_grad.abs().max().item())


def test_compile_keeps_the_fused_lrn_as_one_node_each_way():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    compiled = torch.compile(lrn, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)
    a = relu_like(2, 96, 9, 9, scale=200.0, seed=9).float().to(memory_format=torch.channels_last)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    x, exact_in = a.clone().requires_grad_(), a.double().requires_grad_()
    compiled(x).backward(g)
    exact = lrn.reference(exact_in)
    exact.backward(g.double())
    ops = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count("alexnet.lrn.default") == 1 and ops.count("alexnet.lrn_backward.default") == 1, ops
    torch.testing.assert_close(x.grad.double(), exact_in.grad, rtol=1e-5, atol=1e-6 * exact_in.grad.abs().max().item())


def test_the_kernel_checks_are_constants_to_the_compiler_as_torch_marks_them():
    def ours():
        return True

    def torchs():
        return True

    kernels.constant_to_the_compiler(ours)
    torch.compiler.assume_constant_result(torchs)
    assert vars(ours) == vars(torchs) != {}


def test_the_cuda_kernels_load_by_their_loaders_or_say_why_not(monkeypatch, recwarn):
    # The loaders CUDA tensors go through (a function named like the module would be replaced by it on import).
    pytest.importorskip("triton")
    lrn, crop = kernels.lrn_cuda(), kernels.crop_cuda()
    assert callable(lrn.lrn_forward) and callable(lrn.lrn_backward) and callable(crop.crop)
    monkeypatch.setitem(sys.modules, "triton", None)          # as where Triton is not installed
    with pytest.warns(UserWarning, match="Triton is not available .*; the training crop on CUDA uses PyTorch's ops"):
        assert kernels.crop_cuda.__wrapped__() is None
    with pytest.warns(UserWarning, match="Triton is not available .*; LRN on CUDA uses the slower PyTorch fallback"):
        assert kernels.lrn_cuda.__wrapped__() is None
    monkeypatch.setenv("ALEXNET_NATIVE", "0")                 # the fallbacks asked for: no warning
    recwarn.clear()
    assert kernels.crop_cuda.__wrapped__() is None and kernels.lrn_cuda.__wrapped__() is None
    assert not recwarn.list


def test_compile_under_autocast_without_the_fused_kernel(monkeypatch):
    # The PyTorch-ops path, traced under bf16 autocast, once left autocast off for every later layer.
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    monkeypatch.setattr(lrn_module, "_fused_ok", lambda x: False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), LocalResponseNorm.from_convention("paper", towers=2),
                        nn.Conv2d(8, 4, 3, groups=2))
    x = torch.rand(2, 3, 12, 12) * 100
    torch._dynamo.reset()
    def boxed(gm, example_inputs):
        return make_boxed_func(gm.forward)

    compiled = torch.compile(net, backend=aot_autograd(fw_compiler=boxed, bw_compiler=boxed))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, got = net(x), compiled(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), eager.float(), rtol=2**-7, atol=2**-7 * eager.abs().max().item())


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_c_kernel_keeps_no_residue_after_a_spike(channels_last):
    # One large activation early in a tower, ordinary ones after it: a running float sum of squares would
    # carry the spike's rounding residue into every later channel's window.
    a = relu_like(2, 96, 6, 7, scale=2.0, seed=11)
    a[:, 3] = 1e4
    a[:, 50, 2, 3] = 1e4
    a = a.float()
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    x, exact_in = a.clone().requires_grad_(), a.double().requires_grad_()
    assert lrn_module._fused_ok(x)
    lrn(x).backward(g)
    exact = lrn.reference(exact_in)
    exact.backward(g.double())
    torch.testing.assert_close(lrn(a).double(), exact, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(x.grad.double(), exact_in.grad, rtol=1e-5, atol=1e-7)


def spiked_lrn(value, size, towers, dtype, layout):
    """Output and input gradient of LRN over input with `value` at one place (image 0, channel 3, pixel
    (1, 2)), their float64 reference from the same values, and the channels at that pixel whose output and
    whose gradient the value's window reaches (the gradient's reach is the window's window)."""
    a = relu_like(2, 48, 3, 5, scale=30.0, seed=12) + 1.0
    a[0, 3, 1, 2] = value
    a = a.to(dtype)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(13)).to(dtype)
    if layout != "nchw":
        a = a.to(memory_format=torch.channels_last)
    if layout == "channels_last":
        g = g.to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm(size=size, towers=towers)
    x, exact_in = a.clone().requires_grad_(), a.double().requires_grad_()
    y = lrn(x)
    y.backward(g)
    exact = lrn.reference(exact_in)
    exact.backward(g.double())
    below, above = size // 2, (size - 1) // 2
    reach_y = torch.zeros(48, dtype=torch.bool)
    reach_y[max(3 - above, 0):3 + below + 1] = True
    reach_g = torch.zeros(48, dtype=torch.bool)
    reach_g[max(3 - above - below, 0):3 + below + above + 1] = True
    return (y.double(), exact, reach_y), (x.grad.double(), exact_in.grad, reach_g)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last, NCHW gradient"])
@pytest.mark.parametrize("size,towers", [(5, 2), (21, 1)])   # 21: channels_last takes the blocked path too
def test_a_non_finite_or_huge_activation_changes_only_what_its_window_reaches(impl, value, dtype, layout, size,
                                                                              towers):
    # The C kernel's blocked path kept a running sum of squares over channels (add the entering one, subtract
    # the leaving one): one inf made inf - inf = NaN in every later channel of its tower, and a spike of 1e8
    # left a 1e-4 relative residue in every later window, in both directions. The banded product multiplied
    # an inf by the band's zeros: NaN in every channel of its pixel.
    assert lrn_module._fused_ok(torch.zeros(1, 8, 1, 1, dtype=dtype)) == (impl == "native")
    rtol = 1e-5 if dtype == torch.float32 else 2**-8
    for got, exact, reach in spiked_lrn(value, size, towers, dtype, layout):
        if value == 1e8:
            reach = torch.zeros_like(reach)     # finite: the reference holds everywhere
        outside = torch.ones(got.shape, dtype=torch.bool)
        outside[0, reach, 1, 2] = False
        assert exact[outside].isfinite().all()
        torch.testing.assert_close(got[outside], exact[outside], rtol=rtol,
                                   atol=rtol * exact[outside].abs().max().item())


def torch_per_tower(lrn: LocalResponseNorm):
    """torch.nn.LocalResponseNorm on each tower's channels: an implementation independent of ours (it takes
    alpha for the whole window, ours per term)."""
    theirs = nn.LocalResponseNorm(lrn.size, alpha=lrn.alpha * lrn.size, beta=lrn.beta, k=lrn.k)
    return lambda x: torch.cat([theirs(t) for t in x.chunk(lrn.towers, 1)], 1)


def hessian_vector_product(f, x, w, v):
    """d/dx of <v, dL/dx> for L = |w f(x)|^2, by double backward: the second backward also runs through
    the first one's dependence on the incoming gradient (2 w^2 f(x))."""
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad((f(x) * w).square().sum(), x, create_graph=True)
    return torch.autograd.grad((g * v).sum(), x)[0]


def hvp_inputs(seed):
    # Large enough (x100) that the window sum is comparable to k in every convention, so the terms of the
    # second derivative through the scales are not negligible.
    g = torch.Generator().manual_seed(seed)
    x, w, v = (torch.randn(2, 16, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    return (x * 100).float().double(), w, v                   # x exact in float32 too


@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("name", list(LRN_CONVENTIONS))
def test_second_derivatives_pass_gradgradcheck_in_float64(name, towers):
    g = torch.Generator().manual_seed(12)
    a = (torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64) * 100).requires_grad_()
    lrn = LocalResponseNorm.from_convention(name, towers=towers)
    assert torch.autograd.gradgradcheck(lrn, (a,), eps=1e-6, atol=1e-8)
    x, w, v = hvp_inputs(13)
    torch.testing.assert_close(hessian_vector_product(lrn, x, w, v),
                               hessian_vector_product(lrn.reference, x, w, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("towers", [1, 2])
@pytest.mark.parametrize("name", list(LRN_CONVENTIONS))
def test_hessian_vector_products_in_float32_equal_the_reference(impl, name, towers):
    lrn = LocalResponseNorm.from_convention(name, towers=towers)
    x, w, v = hvp_inputs(14)
    exact = hessian_vector_product(lrn.reference, x, w, v)
    ours = hessian_vector_product(lrn, x.float(), w.float(), v.float())
    # Each entry goes through some 30 float32 roundings (three window sums of 5 terms, powers, products)
    # of values no larger than the largest entry, each within eps/2: 64 eps of that entry leaves headroom.
    # A second derivative that missed the terms through the scales is off by tens of percent.
    tol = 64 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(ours.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())


def test_first_order_backward_keeps_the_fast_kernels(impl, monkeypatch):
    def graph_asked_for(*args):
        raise AssertionError("the differentiable formula ran for a first-order backward")

    monkeypatch.setattr(lrn_module, "_differentiable_grad", graph_asked_for)
    a = relu_like(2, 16, 3, 3, scale=200.0, seed=15).float()
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(4))
    x, exact_in = a.clone().requires_grad_(), a.double().requires_grad_()
    lrn(x).backward(g)
    lrn.reference(exact_in).backward(g.double())
    torch.testing.assert_close(x.grad.double(), exact_in.grad, rtol=1e-5, atol=1e-6 * exact_in.grad.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("towers", [1, 2])
def test_torch_func_jacobians_equal_torchs_lrn(dtype, towers):
    lrn = LocalResponseNorm.from_convention("paper", towers=towers)
    a = relu_like(2, 8, 2, 3, scale=200.0, seed=16).to(dtype)
    expected = torch.autograd.functional.jacobian(torch_per_tower(lrn), a.double())
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for jacobian in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jacobian(lrn)(a).double(), expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_sample_gradients_by_vmap_of_grad_equal_a_loop(dtype):
    lrn = LocalResponseNorm.from_convention("caffe", towers=2)
    a = relu_like(3, 16, 4, 5, scale=200.0, seed=17).to(dtype)
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(6), dtype=dtype)

    def loss(xi, wi):
        return (lrn(xi[None]) * wi).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss))(a, w)
    for xi, wi, got in zip(a, w, per_sample):
        x = xi.double().requires_grad_()
        (torch_per_tower(lrn)(x[None]) * wi.double()).square().sum().backward()
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(got.double(), x.grad, rtol=tol, atol=tol * x.grad.abs().max().item())


def test_per_sample_gradients_of_the_paper_network_equal_a_loop():
    from torch.func import functional_call, grad, vmap

    from alexnet import AlexNet

    # float64: in float32 the conv1 gradient of this untrained network differs by 1e-2 between two correct
    # evaluation orders, whatever the LRN does.
    torch.manual_seed(0)
    net = AlexNet("paper", num_classes=10).eval().double()
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    y = torch.tensor([1, 7])
    features = {k: p.detach() for k, p in net.named_parameters() if k.startswith("features")}  # the LRN's side

    def loss(params, xi, yi):
        return nn.functional.cross_entropy(functional_call(net, params, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(features, x, y)
    for i in range(len(x)):
        net.zero_grad()
        loss(dict(net.named_parameters()), x[i], y[i]).backward()
        for k, p in net.named_parameters():
            if k in features:
                torch.testing.assert_close(per_sample[k][i], p.grad, rtol=1e-8, atol=1e-10 * p.grad.abs().max().item())


@pytest.mark.parametrize("shape,layout", [
    ((2, 8, 10), torch.contiguous_format),
    ((2, 8, 3, 4, 5), torch.contiguous_format),
    ((2, 8, 3, 4, 5), torch.channels_last_3d),
])
@pytest.mark.parametrize("towers", [1, 2])
def test_3d_and_5d_input_is_torchs_lrn_per_tower(impl, shape, layout, towers):
    lrn = LocalResponseNorm.from_convention("paper", towers=towers)
    a = relu_like(*shape, scale=200.0, seed=18).float().to(memory_format=layout)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    x, exact_in = a.clone().requires_grad_(), a.double().requires_grad_()
    y = lrn(x)
    y.backward(g)
    exact = torch_per_tower(lrn)(exact_in)
    exact.backward(g.double())
    assert y.shape == shape and y.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-6 * exact.abs().max().item())
    torch.testing.assert_close(x.grad.double(), exact_in.grad, rtol=1e-5, atol=1e-6 * exact_in.grad.abs().max().item())
    torch.testing.assert_close(lrn.reference(exact_in), exact, rtol=1e-10, atol=1e-12)


def test_input_without_a_channel_axis_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(N, C, \.\.\.\).*got \(8, 10\)"):
        LocalResponseNorm()(torch.zeros(8, 10))


@pytest.mark.parametrize("kwargs,match", [
    (dict(towers=2.0), "towers must be a positive int, got 2.0"),
    (dict(towers=0), "towers must be a positive int, got 0"),
    (dict(size=True), "size must be a positive int, got True"),
    (dict(size=5.5), "size must be a positive int, got 5.5"),
    (dict(alpha="1e-4"), "alpha must be a real number"),
])
def test_bad_settings_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalResponseNorm(**kwargs)
