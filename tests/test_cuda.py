"""The CUDA path where a GPU is present (skipped elsewhere): the Triton LRN and crop chosen by themselves and
right, compile keeping them, and train / evaluate end to end on the device. Elsewhere in the suite the same
kernels run through Triton's interpreter (test_lrn.py, test_transforms.py) and the CUDA process group with
gloo in NCCL's place."""

import json

import pytest
import torch

from alexnet import AlexNet
from alexnet import lrn as lrn_module
from alexnet.lrn import LocalResponseNorm
from conftest import run_cli as cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def post_relu(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 200).clamp_min(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_on_cuda_is_the_triton_kernel_and_equals_the_reference(dtype, channels_last):
    a = post_relu(8, 96, 27, 27)
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm.from_convention("paper", towers=2)
    x = a.to("cuda", dtype).requires_grad_()
    assert lrn_module._fused_ok(x)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = lrn(x)
    y.backward(g.to("cuda", dtype))
    exact_in = x.detach().double().cpu().requires_grad_()
    exact = lrn.reference(exact_in)
    exact.backward(g.to(dtype).double())
    assert y.dtype == x.grad.dtype == dtype and y.stride() == x.stride()
    rtol = 2**-8 if dtype == torch.bfloat16 else 1e-5     # bf16: rounded to nearest once, half an ulp
    torch.testing.assert_close(y.double().cpu(), exact.detach(), rtol=rtol, atol=1e-6)
    torch.testing.assert_close(x.grad.double().cpu(), exact_in.grad, rtol=rtol,
                               atol=rtol * exact_in.grad.abs().max().item())


@pytest.mark.parametrize("per_pixel", [True, False])
def test_the_training_crop_on_cuda_is_the_triton_kernel_and_equals_the_cpus(per_pixel, monkeypatch):
    from alexnet.data import transforms
    from alexnet.data.transforms import Normalize, crop

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (5, 256, 256, 3), generator=g, dtype=torch.uint8)
    mean = torch.rand(256, 256, 3, generator=g) * 255 if per_pixel else torch.tensor([100.0, 110.0, 120.0])
    norm = Normalize(mean, torch.tensor([50.0, 60.0, 70.0]))
    tops, lefts = torch.randint(0, 30, (9,), generator=g), torch.randint(0, 30, (9,), generator=g)
    flips, sources = torch.arange(9) % 2 == 0, torch.randint(0, 5, (9,), generator=g)
    shift = torch.randn(9, 3, generator=g) * 20
    args = (tops, lefts, flips, 227, norm, sources, shift)
    on_cpu = crop(images, *args)
    kernel, calls = transforms.kernels.crop_cuda(), []
    monkeypatch.setattr(kernel, "crop", lambda *a, triton_crop=kernel.crop: calls.append(1) or triton_crop(*a))
    on_gpu = crop(images.cuda(), *args)
    assert calls and on_gpu.is_cuda and on_gpu.shape == on_cpu.shape == (9, 3, 227, 227)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-4)


def test_copies_to_the_gpu_keep_their_values_and_a_normalisation_goes_once():
    from alexnet.data.transforms import Normalize, to_device

    dev = torch.device("cuda", torch.cuda.current_device())
    t = torch.arange(10)
    on = to_device(t, dev)                         # through pinned memory, not waited for
    assert on.device == dev and torch.equal(on.cpu(), t)
    norm = Normalize(torch.rand(8, 8, 3) * 255, torch.tensor([50.0, 60.0, 70.0]))
    assert norm.on(dev) is norm.on(dev) and torch.equal(norm.on(dev).mean.cpu(), norm.mean)


def test_the_compiled_network_on_cuda_equals_eager(monkeypatch):
    # Full float32 products on both sides (cuDNN would otherwise take TF32 where it likes).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=10).cuda().to(memory_format=torch.channels_last).eval()   # no dropout
    x = torch.randn(4, 3, 227, 227, device="cuda").to(memory_format=torch.channels_last)
    eager = model(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model)(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3 * eager.abs().max().item())
    for got, want in zip((p.grad for p in model.parameters()), grads):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_train_and_evaluate_end_to_end_on_cuda(tiny_folders, tmp_path):
    data, _ = tiny_folders
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--out", run, "--epochs", "2", "--batch-size", "2", "--workers", "0",
            "--device", "cuda", "--lr", "0.001")
    assert r.returncode == 0, r.stderr
    assert "cuda" in (run / "config.yaml").read_text()
    r = cli("evaluate", "--checkpoint", run / "best.pt", "--data", data, "--device", "cuda", "--crops", "10", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["images"] == 6 and 0 <= got["top1"] <= 1


def test_the_cuda_process_group_takes_cpu_and_cuda_tensors_and_objects():
    # One process (two NCCL ranks cannot share a GPU): the group exactly as setup() makes it on CUDA.
    import socket

    import torch.distributed as td

    from alexnet.distributed import backend_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    device = torch.device("cuda", 0)
    td.init_process_group(backend=backend_for(device), init_method=f"tcp://127.0.0.1:{port}", rank=0,
                          world_size=1, device_id=device)
    try:
        for t in (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0], device=device)):
            td.all_reduce(t, op=td.ReduceOp.MAX)
            assert t.tolist() == [1.0, 2.0]
        out = [None]
        td.all_gather_object(out, {"rank": 0})
        assert out == [{"rank": 0}]
        sub = td.new_group([0])
        t = torch.ones(3, device=device)
        td.all_reduce(t, group=sub)
        td.all_reduce(torch.ones(3), group=sub)
        td.barrier()
        assert t.tolist() == [1.0, 1.0, 1.0]
    finally:
        td.destroy_process_group()


def test_compile_under_bf16_autocast_trains_on_cuda():
    from alexnet.bench.train import paper_step

    torch._dynamo.reset()
    step = paper_step(8, torch.device("cuda"), torch.bfloat16, net_of=torch.compile)
    losses = [float(step()) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_dense_views_on_cuda_equal_the_cpus():
    from alexnet.data.transforms import Normalize
    from alexnet.dense import dense_probabilities

    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=5, init="kaiming").eval()
    norm = Normalize(torch.full((256, 256, 3), 110.0), torch.tensor([60.0, 60.0, 60.0]))   # a mean image
    g = torch.Generator().manual_seed(0)
    views = [[torch.randint(0, 256, (227 + 32 * (n % 2), 259, 3), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (291, 291 + 32 * n, 3), generator=g, dtype=torch.uint8)] for n in range(3)]
    cpu = dense_probabilities(model.to_fully_convolutional().eval(), views, norm, torch.device("cpu"), batch_size=2)
    gpu = dense_probabilities(model.to("cuda").to_fully_convolutional().eval(), views, norm, torch.device("cuda"),
                              batch_size=2)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)   # TF32 is off by default for matmuls


def test_building_the_towers_leaves_the_gpus_dropout_stream_as_it_was():
    """Each rank's dropout on a GPU draws from that GPU's generator, seeded per rank before the towers are
    built: building them must not reseed it (both towers drew the same masks when it did)."""
    from alexnet import parallel

    class Whole:
        def split(self, full):
            return full

    torch.manual_seed(1)
    stream = torch.cuda.get_rng_state()
    parallel.build(lambda: torch.nn.Linear(3, 2), 0, Whole())
    assert torch.equal(torch.cuda.get_rng_state(), stream)
