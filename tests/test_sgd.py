"""The paper's SGD (section 5): its update rule, the learning rate inside the velocity, and weight decay on
the weights, not the biases; torch.optim.SGD's rule where a preset asks for it; runs recorded before these
settings resume as they were trained."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from alexnet.config import from_dict, resolve
from alexnet.errors import UserError
from alexnet.step import TrainStep, set_lr, sgd
from alexnet.train import train
from conftest import write_image_folders

# Warm-up, a plateau, a division by 10, a cosine-like decline: every way a schedule here moves the rate.
LRS = [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.001, 0.001, 0.0008, 0.0005, 0.0001, 0.00005]
M, WD = 0.9, 5e-4


def layer():
    torch.manual_seed(0)
    return nn.Linear(5, 3).double()


def gradients(lrs):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64))
            for _ in lrs]


def run_optimizer(bias_decay, paper):
    net = layer()
    opt = sgd(net, LRS[0], M, WD, torch.device("cpu"), bias_decay=bias_decay)
    for lr, (gw, gb) in zip(LRS, gradients(LRS)):
        set_lr(opt, lr, M if paper else None)
        net.weight.grad, net.bias.grad = gw.clone(), gb.clone()
        opt.step()
    return net.weight.detach(), net.bias.detach()


def paper_formula(bias_decay, lrs=LRS):
    return paper_formula_given(lrs, gradients(lrs), bias_decay)


def paper_formula_given(lrs, grads, bias_decay=False):
    # Section 5, as printed: v <- 0.9 v - 0.0005 lr w - lr dL/dw;  w <- w + v.
    net = layer()
    w, b = net.weight.detach().clone(), net.bias.detach().clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for lr, (gw, gb) in zip(lrs, grads):
        vw = M * vw - WD * lr * w - lr * gw
        vb = M * vb - (WD if bias_decay else 0.0) * lr * b - lr * gb
        w, b = w + vw, b + vb
    return w, b


def torch_formula(bias_decay, lrs=LRS):
    # torch.optim.SGD's documented rule: b <- m b + g + wd w (b = g + wd w at the first step);  w <- w - lr b.
    net = layer()
    w, b = net.weight.detach().clone(), net.bias.detach().clone()
    bw = bb = None
    for lr, (gw, gb) in zip(lrs, gradients(lrs)):
        dw, db = gw + WD * w, gb + (WD if bias_decay else 0.0) * b
        bw, bb = (dw, db) if bw is None else (M * bw + dw, M * bb + db)
        w, b = w - lr * bw, b - lr * bb
    return w, b


@pytest.mark.parametrize("bias_decay", [False, True])
def test_the_paper_rule_is_section_5s_formula_through_warm_up_and_divisions(bias_decay):
    for got, expected in zip(run_optimizer(bias_decay, paper=True), paper_formula(bias_decay)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bias_decay", [False, True])
def test_the_pytorch_rule_is_torch_optim_sgds(bias_decay):
    for got, expected in zip(run_optimizer(bias_decay, paper=False), torch_formula(bias_decay)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_the_rules_differ_after_the_rate_changes_and_agree_while_it_is_constant():
    paper, pytorch = paper_formula(False), torch_formula(False)
    assert (paper[0] - pytorch[0]).abs().max() > 1e-4   # after a division the paper's velocity keeps the old rate
    constant = [0.01] * len(LRS)
    for a, b in zip(paper_formula(False, constant), torch_formula(False, constant)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_without_bias_decay_only_the_weights_shrink():
    net = layer()
    before = [p.detach().clone() for p in net.parameters()]
    opt = sgd(net, 0.1, M, WD, torch.device("cpu"), bias_decay=False)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(net.weight.detach(), before[0] * (1 - 0.1 * WD), rtol=1e-14, atol=0)
    assert torch.equal(net.bias.detach(), before[1])


def test_the_presets_say_which_rule_and_decay():
    paper, tv, demo, large = (resolve(p, {}) for p in ("paper", "torchvision", "demo", "large-batch"))
    assert (paper.update_rule, paper.bias_decay) == ("paper", False)       # section 5; cuda-convnet's biases
    assert (tv.update_rule, tv.bias_decay) == ("pytorch", True)            # torchvision's reference recipe
    assert (demo.update_rule, demo.bias_decay) == ("pytorch", True)        # the demo recipe as measured
    assert (large.update_rule, large.bias_decay) == ("paper", False)       # what LARS does


@pytest.mark.parametrize("values", [{"bias_decay": True}, {"update_rule": "pytorch"}])
def test_lars_refuses_what_it_does_not_do(values):
    with pytest.raises(UserError, match="--optimizer lars"):
        resolve("large-batch", values)
    with pytest.raises(UserError, match="--optimizer lars"):
        resolve("demo", {"optimizer": "lars", "zero_init_fc8": False} | values)


def test_lars_from_a_preset_with_sgds_settings_is_not_refused_for_them():
    # The demo preset's torch rule and bias decay are SGD's: --optimizer lars from it was refused, naming
    # flags the user never gave.
    c = resolve("demo", {"optimizer": "lars", "zero_init_fc8": False})
    assert (c.optimizer, c.bias_decay, c.update_rule) == ("lars", False, "paper")
    c = resolve("demo", {"optimizer": "lars", "zero_init_fc8": False, "bias_decay": False, "update_rule": "paper"})
    assert (c.bias_decay, c.update_rule) == (False, "paper")


def test_a_configuration_recorded_before_the_settings_existed_reads_as_that_run_trained():
    recorded = resolve("paper", {}).to_dict()
    del recorded["bias_decay"], recorded["update_rule"]
    old = from_dict(recorded, "config")
    assert (old.bias_decay, old.update_rule) == (True, "pytorch")   # what every SGD run did then
    lars = resolve("large-batch", {}).to_dict()
    del lars["bias_decay"], lars["update_rule"]
    assert (from_dict(lars, "config").bias_decay, from_dict(lars, "config").update_rule) == (False, "paper")


def flat_colours(root):
    rng = np.random.default_rng(0)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)] for c in ("red", "blue")}
    return write_image_folders(root, colours, size=(48, 40))


def settings(data, run, **kw):
    return resolve("paper", dict(data=str(data), out=str(run), epochs=1, batch_size=4, lr=0.001, workers=0,
                                 precision="fp32") | kw)


def groups(path):
    return torch.load(path, map_location="cpu", weights_only=True)["optimizer"]["param_groups"]


def test_an_older_run_resumes_as_it_was_trained(tmp_path):
    # A run written before bias_decay and update_rule existed: one parameter group, every parameter decayed.
    data, run = flat_colours(tmp_path / "data"), tmp_path / "run"
    train(settings(data, run, bias_decay=True, update_rule="pytorch"))
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["optimizer"]["param_groups"]) == 1
    del ckpt["config"]["bias_decay"], ckpt["config"]["update_rule"]
    torch.save(ckpt, run / "last.pt")
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    del recorded["bias_decay"], recorded["update_rule"]
    (run / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    train(settings(data, run, epochs=2), resume=True, given={"epochs": 2})
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert (resumed["bias_decay"], resumed["update_rule"]) == (True, "pytorch")
    assert [g["weight_decay"] for g in groups(run / "last.pt")] == [5e-4]
    # From Python too, with the paper preset's configuration (whose defaults are now the others): they are
    # the preset's, not asked for, so the run goes on as it was trained instead of being refused.
    train(settings(data, run, epochs=3), resume=True)
    assert yaml.safe_load((run / "config.yaml").read_text())["update_rule"] == "pytorch"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_a_diverged_run_resumed_with_another_weight_decay_trains_with_it(tmp_path):
    # load_state_dict brings back the groups' settings too: the remedy the message offers did nothing.
    data, run = flat_colours(tmp_path / "data"), tmp_path / "run"
    train(settings(data, run))
    assert [g["weight_decay"] for g in groups(run / "last.pt")] == [5e-4, 0.0]   # weights, then biases
    (run / "diverged.json").write_text(json.dumps({"epoch": 1, "step": 2}))
    train(settings(data, run, epochs=2, weight_decay=1e-3), resume=True, given={"epochs": 2, "weight_decay": 1e-3})
    assert [g["weight_decay"] for g in groups(run / "last.pt")] == [1e-3, 0.0]


def test_a_step_the_loss_scaler_skips_leaves_the_paper_velocity_as_the_last_step_taken_made_it():
    # fp16's loss scaler skips a step whose gradients overflow; the paper's velocity then keeps the rate of the
    # step before, so the step after must be the formula over the steps taken only, with their own rates.
    class Given(TrainStep):   # the loss whose gradients are the given ones, so only the update is tested
        def _loss(self, images, labels, draws):
            return (self.net.weight * images).sum() + (self.net.bias * labels).sum()

    net = layer()
    step = Given(net, sgd(net, LRS[0], M, WD, torch.device("cpu"), bias_decay=False), None, torch.device("cpu"),
                 torch.float16, 1, paper_momentum=M)
    skipped = 2   # inside the warm-up: its rate differs from the steps' on either side
    for i, (lr, (gw, gb)) in enumerate(zip(LRS, gradients(LRS))):
        if i == skipped:
            gw = torch.full_like(gw, float("inf"))
        step(gw, gb, None, lr)
    taken = [i for i in range(len(LRS)) if i != skipped]
    lrs, grads = [LRS[i] for i in taken], [gradients(LRS)[i] for i in taken]
    w, b = net.weight.detach(), net.bias.detach()
    expected = paper_formula_given(lrs, grads)
    torch.testing.assert_close(w, expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b, expected[1], rtol=1e-12, atol=1e-14)


def test_a_first_step_the_loss_scaler_skips_leaves_no_momentum():
    # fp16's loss scaler skips a step whose gradients overflow. The fused SGD step made the first step's momentum
    # buffers with torch.empty_like and, skipping, wrote nothing in them: the next step added that memory to the
    # weights (1e14 and more, or NaN). Under the scaler the step is not fused: a skipped step makes no state.
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    reference = nn.Linear(64, 64)
    reference.load_state_dict(model.state_dict())
    optimizer = sgd(model, 0.1, 0.9, 5e-4, torch.device("cpu"), scaled=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x = torch.randn(8, 64)
    scaler.scale(model(x).sum()).backward()
    model.weight.grad[0, 0] = float("inf")   # an overflow: the scaler skips this step
    scaler.step(optimizer)
    scaler.update()
    assert optimizer.state_dict()["state"] == {} and torch.equal(model.weight, reference.weight)
    optimizer.zero_grad()
    scaler.scale(model(x).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    reference(x).sum().backward()
    plain.step()
    torch.testing.assert_close(model.weight, reference.weight, rtol=1e-5, atol=1e-6)
