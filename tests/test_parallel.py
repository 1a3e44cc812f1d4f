"""The two-tower model over torch.distributed: the single-device network's function, gradients,
SGD steps and checkpoints, with two gloo processes; and `alexnet train --towers 2` under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import resolve
from alexnet.errors import UserError
from alexnet.parallel import exchange_bytes
from alexnet.train import train
from conftest import assert_close_in_parts, assert_same_run, write_image_folders

pytestmark = pytest.mark.processes

def torchrun(*args, nproc=2, timeout=600):
    with subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1")) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A hung job: SIGTERM makes torchrun end its workers (each in a session of its own: killing torchrun
            # would leave them running), with SIGKILL 30 s later where they do not stop.
            p.terminate()
            out, err = p.communicate(timeout=120)
            pytest.fail(f"torchrun {' '.join(args)} still ran after {timeout} s\n{err[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# ---- the worker: run by torchrun as `python tests/test_parallel.py OUT` ----

def _worker(out: Path) -> None:
    import copy

    import torch.distributed as td

    from alexnet import parallel
    from alexnet.distributed import Dist, everywhere
    from alexnet.model import AlexNet

    td.init_process_group("gloo")
    rank = td.get_rank()
    torch.set_num_threads(1)
    # Float64 (see below): rounding leaves at most 3e-14 of a tensor's largest value, AVX2 or AVX-512.
    close = dict(rtol=1e-9, atol=1e-12)
    report = {}

    def network(seed):  # the same weights on both processes; kaiming so that gradients are not all ~0
        torch.manual_seed(seed)
        return AlexNet("paper", num_classes=5, dropout=0.5, init="kaiming")  # 5 classes: towers hold 3 and 2

    def rows(t):  # this tower's rows of a single-device tensor
        return torch.tensor_split(t, 2)[rank]

    # In float64, so that what is compared is the function and not float32 rounding (which ReLU and
    # max-pool ties amplify to ~1e-3 in the lower layers' gradients; measured, and no larger).
    full32 = network(0)
    full = copy.deepcopy(full32).double()
    full.classifier[2].p = full.classifier[5].p = 0.0  # dropout controlled: off (each tower draws its own)
    tower = parallel.split(full, rank, td.group.WORLD)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 227, 227, generator=gen, dtype=torch.float64), torch.tensor([0, 4])
    parallel.TRAFFIC.reset()
    logits = tower(x)
    torch.testing.assert_close(logits, full(x), rtol=1e-10, atol=1e-12)   # all of them, on every rank
    torch.nn.functional.cross_entropy(full(x), y).backward()
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert parallel.TRAFFIC.total == exchange_bytes(2, 5, element_size=8)["total"], parallel.TRAFFIC
    report["bytes"] = parallel.TRAFFIC.total
    full_grads = dict(full.named_parameters())
    for name, p in tower.named_parameters():
        assert_close_in_parts(p.grad, rows(full_grads[name].grad), rtol=1e-10, atol=1e-12, msg=name)
    report["grads"] = len(list(tower.parameters()))
    del full, tower, full_grads, p

    # Float32, in eval mode (dropout at test time): the same logits to float32 rounding.
    tower32 = parallel.split(full32, rank, td.group.WORLD)
    full32.eval(), tower32.eval()
    with torch.no_grad():
        torch.testing.assert_close(tower32(x.float()), full32(x.float()), rtol=1e-4, atol=1e-5)
    del tower32

    # SGD steps and checkpoints in float64 too. In float32 the towers' and the single network's sums
    # round differently, and a few steps of ReLU and max-pool decisions amplify that: 5e-3 apart on an
    # AVX2 CPU (oneDNN's fp32 kernels), under 1e-4 on AVX-512, so no float32 tolerance holds on both.
    full = copy.deepcopy(full32).double()
    tower = parallel.split(full, rank, td.group.WORLD)
    for m in (full, tower):
        m.train()
        m.classifier[2].p = m.classifier[5].p = 0.0

    # A few SGD steps (momentum and weight decay): the same weights and the same optimizer state.
    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    opt_full, opt_tower = sgd(full), tower.shard_optimizer(sgd(tower))
    for step in range(2):
        xs = torch.randn(2, 3, 227, 227, generator=gen, dtype=torch.float64)
        for m, opt in ((full, opt_full), (tower, opt_tower)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xs), y).backward()
            opt.step()
    state, tower_state = full.state_dict(), tower.state_dict()   # the tower's: both halves gathered
    assert list(tower_state) == list(state)
    for k in state:
        assert_close_in_parts(tower_state[k], state[k], **close, msg=k)
    saved_full, saved_tower = opt_full.state_dict(), opt_tower.state_dict()
    assert saved_tower["param_groups"] == saved_full["param_groups"]
    assert saved_tower["state"].keys() == saved_full["state"].keys()
    for i, s in saved_full["state"].items():
        assert_close_in_parts(saved_tower["state"][i]["momentum_buffer"], s["momentum_buffer"], **close,
                              msg=f"momentum of parameter {i}")
    # Gathered for one writer (train.py's checkpoints): rank 0 gets exactly what both got above, its partner
    # keeps its own rows and receives nothing; after, both gather again.
    with tower.gathered_on(0):
        one_state, one_saved = tower.state_dict(), opt_tower.state_dict()
    own_momentum = [opt_tower.state[p]["momentum_buffer"] for p in tower.parameters()]
    for i, k in enumerate(state):
        expected = tower_state[k] if rank == 0 else rows(tower_state[k])
        assert torch.equal(one_state[k], expected), k
        momentum = one_saved["state"][i]["momentum_buffer"]
        assert torch.equal(momentum, saved_tower["state"][i]["momentum_buffer"] if rank == 0 else own_momentum[i])
    assert all(torch.equal(v, tower_state[k]) for k, v in tower.state_dict().items())
    report["gathered_on"] = len(one_state)
    # Each then checks what it holds, and they agree (train.py stops every process if any saw a NaN).
    world = Dist(rank=rank, world=2)
    assert (everywhere(world, True), everywhere(world, rank == 0), everywhere(world, rank == 1)) == (True, False, False)

    # Checkpoints both ways (model and optimizer; in memory: train.py's files are tested below): the
    # single-device network's into a fresh tower pair, and the pair's into a fresh single-device network.
    # Then one more step on each: all three still agree.
    a = {"model": state, "optimizer": saved_full}
    b = {"model": tower_state, "optimizer": saved_tower}
    with torch.device("meta"):  # no time spent initialising weights that are overwritten at once
        tower2 = parallel.TowerAlexNet(rank, td.group.WORLD, num_classes=5, dropout=0.0)
        full2 = AlexNet("paper", num_classes=5, dropout=0.0)
    tower2, full2 = tower2.to_empty(device="cpu").double(), full2.to_empty(device="cpu").double()
    tower2.load_state_dict(a["model"])
    full2.load_state_dict(b["model"])
    opt_tower2, opt_full2 = tower2.shard_optimizer(sgd(tower2)), sgd(full2)
    opt_tower2.load_state_dict(a["optimizer"])
    opt_full2.load_state_dict(b["optimizer"])
    xs = torch.randn(2, 3, 227, 227, generator=gen, dtype=torch.float64)
    for m, opt in ((full, opt_full), (tower2, opt_tower2), (full2, opt_full2)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(xs), y).backward()
        opt.step()
    state, state2, tower_state2 = full.state_dict(), full2.state_dict(), tower2.state_dict()
    for k in state:
        assert_close_in_parts(tower_state2[k], state[k], **close, msg=k)
        assert_close_in_parts(state2[k], state[k], **close, msg=k)
    report["checkpoints"] = "both ways"
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report))
    td.destroy_process_group()


def test_two_towers_compute_the_single_device_network_and_share_its_checkpoints(tmp_path):
    r = torchrun(__file__, str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"bytes": exchange_bytes(2, 5, element_size=8)["total"], "grads": 16, "gathered_on": 16,
                      "checkpoints": "both ways"}


def test_exchange_bytes_are_the_activations_the_paper_sends_between_gpus():
    b = exchange_bytes(128)
    # Per image, forward: pool2 (128x13x13) + pool5 (128x6x6) + fc6 + fc7 (2048 each) + 500 logits.
    assert b["forward"] == 128 * 4 * (21632 + 4608 + 2048 + 2048 + 500)
    assert b["backward"] == 128 * 4 * (21632 + 4608 + 2048 + 2048)
    assert exchange_bytes(128, element_size=2)["total"] * 2 == b["total"]


# ---- `alexnet train --towers 2` ----

@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(1)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(6)] for c in ("red", "blue")}
    return write_image_folders(tmp_path / "data", colours, size=(48, 40))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_training_with_towers_matches_one_process_and_their_checkpoints_resume_each_other(data, tmp_path):
    # Dropout off: each tower draws its own masks. 12 images, batch 4: 3 steps an epoch.
    # float64: conftest.SAME_RUN (the towers' products are cut along other lines than one network's).
    common = dict(batch_size=4, lr=0.01, dropout=0.0, workers=0, precision="fp64", log_every=1, init="kaiming",
                  normalization="channel", zero_init_fc8=True)
    one, two = tmp_path / "one", tmp_path / "two"
    first = train(resolve("paper", dict(common, data=str(data), out=str(one), epochs=1)))
    flags = ["--batch-size", "4", "--lr", "0.01", "--dropout", "0", "--workers", "0", "--precision", "fp64",
             "--init", "kaiming", "--normalization", "channel", "--zero-init-fc8", "--data", str(data)]
    r = torchrun("-m", "alexnet", "train", "--towers", "2", "--epochs", "1", "--out", str(two), *flags)
    assert r.returncode == 0, r.stderr[-5000:]
    assert_same_run(_weights(one / "last.pt"), _weights(two / "last.pt"))
    # Evaluation counts every val image once, as one process does.
    row = json.loads((two / "metrics.jsonl").read_text())
    assert row["val_top1"] == pytest.approx(first["val_top1"])
    assert row["val_loss"] == pytest.approx(first["val_loss"], rel=1e-4)
    # Epoch 2 the other way round: the towers' checkpoint (weights, momentum) on one process, and the single
    # process's on 2 towers x 2 data-parallel replicas (4 processes). Still the same weights.
    train(resolve("paper", dict(common, data=str(data), out=str(two), epochs=2)), resume=True,
          given={"epochs": 2, "towers": 1})
    r = torchrun("-m", "alexnet", "train", "--towers", "2", "--epochs", "2", "--out", str(one), "--resume", nproc=4)
    assert r.returncode == 0, r.stderr[-5000:]
    assert_same_run(_weights(one / "last.pt"), _weights(two / "last.pt"))
    assert [json.loads(x)["epoch"] for x in (one / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _signalled_in_validation(args: list[str]) -> int:
    """`alexnet train ARGS` with rank 1 signalled as its first validation begins: it stops before the first
    batch, which rank 0, not signalled, would take."""
    import signal

    import alexnet.train as train_module
    from alexnet.cli import main

    real = train_module.evaluate

    def signalled(*a, **kw):
        if os.environ["RANK"] == "1":
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **kw)

    train_module.evaluate = signalled
    return main(["train", *args])


def test_a_signal_to_one_tower_during_validation_stops_both_and_saves(tmp_path):
    # Each validation batch's forward pass is a collective over the pair: the signalled tower left the pass
    # alone and both waited for ever (one in the pass's exchange, the other in the sums after it).
    colours = {c: [(40 * i, 200 - 40 * i, 90 * j) for i in range(2)] for j, c in enumerate(("red", "blue"))}
    data, run = write_image_folders(tmp_path / "data", colours, size=(48, 40)), tmp_path / "run"
    r = torchrun(__file__, "--signalled-in-validation", "--towers", "2", "--data", str(data), "--out", str(run),
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--precision", "fp32", timeout=120)
    assert f"stopped by SIGTERM at epoch 1, step 1 of 1; {run / 'last.pt'} is saved" in r.stderr, r.stderr[-5000:]
    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 1) and not (run / "best.pt").exists()


def _loss_scalers() -> None:
    """Two towers' updates under the fp16 loss scaler: tower 1's gradients overflow, then neither's."""
    import torch.distributed as td

    from alexnet import parallel
    from alexnet.distributed import Dist
    from alexnet.step import TrainStep, sgd

    td.init_process_group("gloo")
    rank, cpu = td.get_rank(), torch.device("cpu")
    half = torch.nn.Linear(3, 2)   # stands for a tower's half of the network
    step = TrainStep(half, sgd(half, 0.1, 0.9, 0.0, cpu), None, cpu, torch.float16, 1,
                     pair=parallel.plan(Dist(rank=rank, world=2)).pair)
    start, seen = step.scaler.get_scale(), []
    for overflow in (rank == 1, False):
        before = [p.detach().clone() for p in half.parameters()]
        half.zero_grad()
        step.scaler.scale(half(torch.ones(1, 3)).sum()).backward()
        half.weight.grad[0, 0] = float("inf") if overflow else half.weight.grad[0, 0]
        step.update()
        seen.append((any(not torch.equal(p, b) for p, b in zip(half.parameters(), before)), step.scaler.get_scale()))
    assert seen == [(False, start / 2), (True, start / 2)], f"tower {rank} (stepped, scale): {seen}"
    td.destroy_process_group()


def test_the_towers_loss_scalers_skip_and_scale_together():
    # fp16 (auto on a GPU without bf16): each tower's scaler saw only its half of the gradients, so one skipped a
    # step and halved its scale while the other stepped; the exchanges then added gradients of two scales.
    r = torchrun(__file__, "--loss-scalers", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_towers_need_the_paper_network_and_pairs_of_processes(tmp_path):
    with pytest.raises(UserError, match="towers"):
        resolve("paper", {"towers": 2, "variant": "owt"})
    with pytest.raises(UserError, match="towers must be 1 or 2"):
        resolve("paper", {"towers": 3})
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--towers", "2", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "multiple of 2 processes" in r.stderr and "resumes on one process with --resume --towers 1" in r.stderr


if __name__ == "__main__":
    if sys.argv[1] == "--signalled-in-validation":
        raise SystemExit(_signalled_in_validation(sys.argv[2:]))
    if sys.argv[1] == "--loss-scalers":
        raise SystemExit(_loss_scalers())
    _worker(Path(sys.argv[1]))


class _WholeNetwork:   # a TowerPlan whose "tower" is the whole network: build's seeding alone is under test
    def split(self, full):
        return full


def test_building_the_towers_leaves_every_devices_random_numbers_as_they_were(monkeypatch):
    """Each rank seeds its own dropout stream before the towers are built; build seeds the network's
    initialisation with the run's seed and must put back every generator it touched. torch.manual_seed also
    reseeds every GPU's generator, which fork_rng(devices=[]) does not restore: on CUDA both towers then drew
    the same dropout masks. Without a GPU, the reseeding is what can be seen."""
    reseeded = []
    torch.manual_seed(7)   # the rank's own stream, as train sets it (before the spies: it reseeds GPUs too)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded.append)
    stream = torch.get_rng_state()
    from alexnet import parallel
    built = parallel.build(lambda: torch.nn.Linear(3, 2), 0, _WholeNetwork())
    assert reseeded == []
    assert torch.equal(torch.get_rng_state(), stream)
    torch.manual_seed(0)
    assert torch.equal(built.weight, torch.nn.Linear(3, 2).weight)
