"""LARS against its formula, and gradient accumulation against one step over the whole batch."""

import numpy as np
import pytest
import torch

from alexnet import AlexNet
from alexnet.config import resolve
from alexnet.data.transforms import Draws, Normalize, Preprocessing
from alexnet.errors import UserError
from alexnet.lars import LARS, lars
from alexnet.step import TrainStep, sgd


def lars_by_hand(w, b, grads, lrs, momentum, wd, eta):
    """You et al. 2017, Algorithm 1, in float64 NumPy; the bias b is plain momentum SGD without decay."""
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for (gw, gb), lr in zip(grads, lrs):
        wn, gn = np.linalg.norm(w), np.linalg.norm(gw)
        trust = eta * wn / (gn + wd * wn) if wn > 0 and gn > 0 else 1.0
        vw = momentum * vw + lr * trust * (gw + wd * w)
        vb = momentum * vb + lr * gb
        w, b = w - vw, b - vb
    return w, b


def test_lars_follows_its_formula_step_by_step():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(6, 5)), rng.normal(size=6)
    grads = [(rng.normal(size=(6, 5)) * s, rng.normal(size=6)) for s in (1.0, 30.0, 0.01)]   # scales differ
    lrs = [0.5, 2.0, 1.0]
    w, b = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = LARS([{"params": [w]}, {"params": [b], "adapt": False, "weight_decay": 0.0}],
               lr=1.0, momentum=0.9, weight_decay=5e-4, eta=1e-3)
    for (gw, gb), lr in zip(grads, lrs):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    want_w, want_b = lars_by_hand(w0, b0, grads, lrs, 0.9, 5e-4, 1e-3)
    np.testing.assert_allclose(w.detach().numpy(), want_w, rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), want_b, rtol=1e-12)


def test_a_zero_weight_or_gradient_takes_the_plain_learning_rate():
    w = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    w.grad = torch.ones(3, 3, dtype=torch.float64)
    LARS([w], lr=0.1, momentum=0.0, weight_decay=0.0).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1, dtype=torch.float64))


def test_alexnets_weights_are_adapted_and_its_biases_are_not():
    model = AlexNet("paper", num_classes=4)
    opt = lars(model, lr=1.0, momentum=0.9, weight_decay=5e-4, eta=1e-3)
    adapted, plain = opt.param_groups
    assert adapted["adapt"] and all(p.dim() > 1 for p in adapted["params"]) and len(adapted["params"]) == 8
    assert not plain["adapt"] and plain["weight_decay"] == 0 and all(p.dim() == 1 for p in plain["params"])
    with pytest.raises(ValueError, match="eta > 0"):
        LARS(model.parameters(), lr=1.0, eta=0.0)


def _step(accumulate, optimizer):
    torch.manual_seed(0)
    model = AlexNet("paper", num_classes=5, dropout=0.0).train()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 256, 256, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 5, (8,), generator=g)
    draws = Draws.from_generator(8, 256, 256, 227, g)
    opt = optimizer(model)
    step = TrainStep(model, opt, Preprocessing(227, Normalize(torch.full((256, 256, 3), 118.0)), None),
                     torch.device("cpu"), None, 8, accumulate=accumulate)
    loss = step(images, labels, draws, 0.01)
    return loss, model.state_dict(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer", [lambda m: sgd(m, 0.01, 0.9, 5e-4, torch.device("cpu")),
                                       lambda m: lars(m, 0.01, 0.9, 5e-4, 1e-3)], ids=["sgd", "lars"])
def test_four_parts_accumulated_are_one_step_over_the_whole_batch(optimizer):
    loss1, weights1, grads1 = _step(1, optimizer)
    loss4, weights4, grads4 = _step(4, optimizer)
    # The same sums in another order: float32 rounding apart (relative to each tensor's size).
    torch.testing.assert_close(loss4, loss1, rtol=1e-5, atol=0)
    for name in grads1:
        scale = grads1[name].abs().max().item()
        torch.testing.assert_close(grads4[name], grads1[name], rtol=1e-4, atol=1e-4 * scale, msg=name)
        torch.testing.assert_close(weights4[name], weights1[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("values,message", [
    (dict(optimizer="adam"), "optimizer must be one of sgd, lars"),
    (dict(lars_eta=0.0), "lars_eta"),
    (dict(accumulate=0), "accumulate"),
    (dict(optimizer="lars", towers=2), "--optimizer lars needs whole layers"),
    (dict(optimizer="lars", zero_init_fc8=True), "add --no-zero-init-fc8"),
])
def test_bad_large_batch_settings_are_refused(values, message):
    with pytest.raises(UserError, match=message):
        resolve("paper", values)


def test_the_large_batch_preset_is_lars_with_a_warm_up_and_a_cosine():
    c = resolve("large-batch", {})
    assert (c.optimizer, c.schedule, c.variant) == ("lars", "cosine", "paper") and c.warmup_epochs > 0
    assert c.batch_size >= 4096


def test_only_the_last_part_all_reduces_under_ddp(tmp_path):
    # A world of one is enough to count: DDP calls its communication hook once per gradient bucket of every
    # backward that synchronises, and not at all under no_sync.
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel

    td.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        counts = {}
        for accumulate in (1, 4):
            torch.manual_seed(0)
            calls = []

            def hook(state, bucket):
                calls.append(bucket.index())
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            net = DistributedDataParallel(AlexNet("paper", num_classes=5, dropout=0.0))
            net.register_comm_hook(None, hook)
            step = TrainStep(net, sgd(net.module, 0.01, 0.9, 5e-4, torch.device("cpu")),
                             Preprocessing(227, Normalize(torch.full((256, 256, 3), 118.0)), None),
                             torch.device("cpu"), None, 8, accumulate=accumulate)
            g = torch.Generator().manual_seed(1)
            images = torch.randint(0, 256, (8, 256, 256, 3), generator=g, dtype=torch.uint8)
            step(images, torch.randint(0, 5, (8,), generator=g), Draws.from_generator(8, 256, 256, 227, g), 0.01)
            counts[accumulate] = sorted(calls)
        assert counts[1] and counts[4] == counts[1]   # the same buckets, once each: one exchange per step
    finally:
        td.destroy_process_group()
