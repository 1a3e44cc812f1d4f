"""The training loop: files it writes, exact resume, signals, kills, the NaN guard, DDP, and bad flags."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from alexnet.config import resolve
from alexnet.data.stats import DataStats
from alexnet.errors import UserError
from alexnet.files import FolderLock
from alexnet.train import NonFiniteLoss, train
from conftest import assert_same_run, run_main, write_image_folders

FAST = dict(workers=0, precision="fp32", log_every=1)


def flat_colours(root, seed, per_class):
    rng = np.random.default_rng(seed)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(per_class)] for c in ("red", "blue")}
    return write_image_folders(root, colours, size=(48, 40))


@pytest.fixture
def data(tmp_path):
    """8 images: 2 steps an epoch in batches of 4. A test's own copy: some write into it."""
    return flat_colours(tmp_path / "data", 0, 4)


@pytest.fixture
def more_data(tmp_path):
    """16 images: 8 steps an epoch in batches of 2."""
    return flat_colours(tmp_path / "more", 1, 8)


def _weights_file(path, classes):
    """A random paper network for ``classes`` as `alexnet export` writes it (ImageNet's channel normalisation)."""
    from alexnet.data.transforms import Normalize
    from alexnet.model import AlexNet
    from alexnet.weights import LoadedModel, save_weights

    torch.manual_seed(3)
    model = AlexNet("paper", num_classes=len(classes), init="kaiming").eval()
    norm = Normalize(torch.tensor([124.0, 116.0, 104.0]), torch.tensor([58.0, 57.0, 57.0]))
    save_weights(LoadedModel(model, classes, classes, 227, "channel", norm), path)
    return path


def config(data, out, **kw):
    values = dict(data=str(data), out=str(out), epochs=2, batch_size=4, lr=0.001, **FAST) | kw
    return resolve(kw.pop("preset", "paper"), values)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# Uninterrupted runs that several tests compare against or start from, trained once per module on copies of
# `data` and `more_data` (the same pixels in another folder: the weights depend on the images, not on where
# they are). A test that writes into one takes a copy (copy_of); its resumes read the module's images.
@pytest.fixture(scope="module")
def two_epochs_run(tmp_path_factory):
    """The run folder of config(data, ...) after 2 epochs, uninterrupted (dropout 0.5, the paper's); its data
    beside it (../data), and what train returned (../result.json)."""
    root = tmp_path_factory.mktemp("two_epochs")
    result = train(config(flat_colours(root / "data", 0, 4), root / "run"))
    (root / "result.json").write_text(json.dumps(result))
    return root / "run"


@pytest.fixture(scope="module")
def two_epochs(two_epochs_run):
    """last.pt's weights of config(data, ...) after 2 epochs, uninterrupted."""
    return weights(two_epochs_run / "last.pt")


@pytest.fixture(scope="module")
def one_epoch_in_pairs(tmp_path_factory):
    """last.pt's weights and the metrics row of one epoch on more_data in batches of 2 (8 steps),
    uninterrupted."""
    root = tmp_path_factory.mktemp("one_epoch_in_pairs")
    train(config(flat_colours(root / "more", 1, 8), root / "run", epochs=1, batch_size=2))
    held = weights(root / "run" / "last.pt"), json.loads((root / "run" / "metrics.jsonl").read_text())
    shutil.rmtree(root / "run")   # held in memory: its 0.7 GB on disk would only crowd the module's runs
    return held


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """The run folder of config(data, ..., epochs=1) after its epoch, finished; its data beside it (../data),
    for the resumes of a copy (copy_of) to read the images it was trained on, and what it said (../stderr.txt)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("one_epoch")
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        train(config(flat_colours(root / "data", 0, 4), root / "run", epochs=1))
    (root / "stderr.txt").write_text(said.getvalue())
    return root / "run"


def copy_of(run, to):
    """A copy of a module's run folder for a test to write into: the module's run stays as it was trained."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_run_writes_config_metrics_and_plain_checkpoints(two_epochs_run):
    run = two_epochs_run   # config(data, ...)'s: the module trains it once
    result = json.loads((run.parent / "result.json").read_text())
    assert result["epoch"] == 2 and 0 <= result["best_top1"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec", "seconds"}
    for r in rows:   # where the epoch went: parts of it, none negative, together no more than the whole
        parts = [r["step_seconds"], r["data_seconds"], r["eval_seconds"]]
        assert min(parts) >= 0 and r["step_seconds"] > 0 and sum(parts) <= r["seconds"]
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 4
    last = torch.load(run / "last.pt", weights_only=True)  # plain data only: no code runs on load
    best = torch.load(run / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["classes"] == ["blue", "red"] and "optimizer" in last
    assert "optimizer" not in best and best["preprocessing"]["mean"].shape == (256, 256, 3)


@pytest.mark.parametrize("opts, given", [({}, {"epochs": 2}), ({}, None),
                                         # the paper's update rule across the resume, the rate divided there
                                         (dict(schedule="step", step_epochs=1), {"epochs": 2}),
                                         (dict(optimizer="lars", lr=0.5, accumulate=2), {"epochs": 2})],
                         ids=["sgd", "sgd-from-python", "sgd-divided-at-the-resume", "lars-accumulated"])
def test_resume_after_an_epoch_matches_an_uninterrupted_run(opts, given, data, tmp_path, two_epochs,
                                                            one_epoch_run):
    # From Python (given None) the config is what was asked for: its larger epochs was ignored, the run
    # called complete.
    if opts:
        train(config(data, tmp_path / "a", **opts))
        train(config(data, tmp_path / "b", epochs=1, **opts))
    else:   # that first epoch is the module's
        data = one_epoch_run.parent / "data"
        copy_of(one_epoch_run, tmp_path / "b")
    uninterrupted = weights(tmp_path / "a" / "last.pt") if opts else two_epochs
    train(config(data, tmp_path / "b", epochs=2, **opts), resume=True, given=given)
    assert_same_weights(uninterrupted, weights(tmp_path / "b" / "last.pt"))
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    if given is None:   # and what a resume may not change is refused, as the command refuses its flag
        with pytest.raises(UserError, match="cannot change --batch-size when resuming"):
            train(config(data, tmp_path / "b", epochs=3, batch_size=2), resume=True)


def test_resume_after_a_plateau_division_keeps_the_divided_rate(data, tmp_path):
    # The plateau schedule's state (divisions so far, best accuracy, bad epochs) is in last.pt: a run resumed
    # after a division goes on at the divided rate, not the full one. A rate too small to change any prediction
    # keeps val top-1 where epoch 1 left it, so with patience 1 epoch 2 divides it (before the stop), epoch 3 not.
    opts = dict(schedule="plateau", patience=1, max_lr_drops=2, lr=1e-9, epochs=3)
    train(config(data, tmp_path / "a", **opts))
    train(config(data, tmp_path / "b", **opts | {"epochs": 2}))
    train(config(data, tmp_path / "b", **opts), resume=True, given={"epochs": 3})
    assert_same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    rows = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("a", "b")}
    assert rows["a"][0]["val_top1"] == rows["a"][1]["val_top1"]   # no improvement: the premise of the test
    lrs = [r["lr"] for r in rows["a"]]
    assert lrs[:2] == [1e-9, 1e-9] and lrs[2] == pytest.approx(1e-10, rel=1e-12)
    assert [r["lr"] for r in rows["b"]] == lrs


def test_a_demo_run_extended_from_python_keeps_its_warm_up(data, tmp_path):
    # resolve() scales the demo preset's warm-up with --epochs: a resume from Python with more epochs counted
    # that as a change asked for, and refused it.
    run = tmp_path / "run"
    train(config(data, run, epochs=1, preset="demo"))
    train(config(data, run, epochs=2, preset="demo"), resume=True)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert (recorded["epochs"], recorded["warmup_epochs"]) == (2, pytest.approx(1 / 3))


def test_a_configuration_built_directly_is_checked_before_anything_runs(data, tmp_path):
    from alexnet.config import TrainConfig

    with pytest.raises(UserError, match="batch_size must be at least 1"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), batch_size=0, workers=0))
    assert not (tmp_path / "run").exists()


def test_an_owt_run_recorded_with_another_lrn_still_builds():
    # Earlier versions accepted --variant owt --lrn caffe and recorded it (owt has no LRN): such a run resumes.
    from alexnet.config import from_dict
    from alexnet.train import build_model
    model = build_model(from_dict({"variant": "owt", "lrn": "caffe"}, "config.yaml"), 3, initialise=False)
    assert model.variant == "owt" and model.num_classes == 3


def test_late_dropout_is_off_until_its_epoch(data, tmp_path, two_epochs_run):
    # Same seed, same batches: with dropout switching on at epoch 2, epoch 1 is the dropout-free run's to
    # the last bit, and epoch 2 is not. ("always": dropout 0.5 from the start, the module's 2-epoch run.)
    losses = {}
    for name, kw in {"none": dict(dropout=0.0), "late": dict(dropout=0.5, dropout_start=2), "always": None}.items():
        run = two_epochs_run if kw is None else tmp_path / name
        if kw is not None:
            train(config(data, run, **kw))
        losses[name] = [json.loads(row)["train_loss"] for row in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses["late"][0] == losses["none"][0] != losses["always"][0]
    assert losses["late"][1] != losses["none"][1]


@pytest.mark.parametrize("signum,save,workers", [
    # As a scheduler or torchrun's agent sends it: to the whole process group, loader processes included.
    (signal.SIGTERM, ["--save-every", "1"], "2"),
    # A scheduler's notice to the trainer alone; checkpoints by the clock (every 6 ms here).
    (signal.SIGUSR1, ["--save-every-minutes", "0.0001"], "0")])
def test_a_signal_mid_epoch_saves_and_resume_matches_an_uninterrupted_run(more_data, tmp_path, signum, save, workers,
                                                                          one_epoch_in_pairs, capsys):
    # 16 images in batches of 2: 8 steps an epoch, a checkpoint after every step (or 6 ms).
    run = tmp_path / "b"
    p = cli("train", "--data", str(more_data), "--out", str(run), "--epochs", "1", "--batch-size", "2",
            *save, "--lr", "0.001", "--workers", workers, "--precision", "fp32", start_new_session=True)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    if workers != "0":
        os.killpg(p.pid, signum)
    else:
        p.send_signal(signum)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signum, err
    assert "Resume with: alexnet train --out" in err
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and 1 <= saved["step_in_epoch"] < 8
    # The rest of the epoch without checkpoints after every step (a change a resume may make).
    train(config(more_data, run, epochs=1, batch_size=2), resume=True,
          given={"save_every": 0, "save_every_minutes": 0.0, "log_every": 1})
    uninterrupted, row = one_epoch_in_pairs
    assert_same_weights(uninterrupted, weights(run / "last.pt"))
    # The epoch's row sums the steps before the stop (carried in last.pt) and after it, as the
    # uninterrupted run's does: the same loss to the last bit, the same images, the same rate.
    resumed = json.loads((run / "metrics.jsonl").read_text())
    timing = {"images_per_sec", "seconds", "step_seconds", "data_seconds", "eval_seconds"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in row.items() if k not in timing}
    assert resumed["seconds"] >= resumed["step_seconds"] + resumed["data_seconds"] > 0
    # So does the progress line at the epoch's last step (a log read after a requeue shows the epoch's loss).
    last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1 step 8/8:")]
    assert len(last) == 1 and f"loss {row['train_loss']:.3f}," in last[0], last


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_signal_at_an_epochs_end_stops_there_and_resume_matches_an_uninterrupted_run(more_data, tmp_path, when,
                                                                                      one_epoch_in_pairs,
                                                                                      monkeypatch, capsys):
    # ImageNet's validation takes minutes, more than a scheduler's notice: a signal during it waited for the
    # whole pass, two checkpoints and a step of the next epoch. During validation the pass is now given up
    # (last.pt holds the epoch's last step, and a resume validates); after it, the run stops at the epoch's end.
    import alexnet.train as train_module
    from alexnet.errors import Stopped

    real = train_module.evaluate

    def signalled(*args, **kw):
        if when == "during":
            signal.raise_signal(signal.SIGTERM)
        metrics = real(*args, **kw)
        if when == "after":
            signal.raise_signal(signal.SIGTERM)
        return metrics

    monkeypatch.setattr(train_module, "evaluate", signalled)
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        train(config(more_data, run, epochs=1 if when == "during" else 2, batch_size=2))
    saved = torch.load(run / "last.pt", weights_only=True)
    err = capsys.readouterr().err
    if when == "during":
        assert (saved["epoch"], saved["step_in_epoch"]) == (0, 8) and not (run / "best.pt").exists()
        assert "stopped by SIGTERM at epoch 1, step 8 of 8;" in err, err
        assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()
        monkeypatch.undo()
        train(config(more_data, run, epochs=1, batch_size=2), resume=True)
        uninterrupted, row = one_epoch_in_pairs
        assert_same_weights(uninterrupted, weights(run / "last.pt"))
        resumed = json.loads((run / "metrics.jsonl").read_text())
        assert resumed["val_top1"] == row["val_top1"] and resumed["train_loss"] == row["train_loss"]
    else:
        assert (saved["epoch"], saved["step_in_epoch"]) == (1, 0), saved["step_in_epoch"]   # no step of epoch 2
        assert "stopped by SIGTERM after epoch 1;" in err, err
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_stop_in_the_validation_of_an_epoch_an_earlier_version_padded_resumes_there(tmp_path, monkeypatch, capsys):
    # Earlier versions made 3 steps of 11 images in batches of 4 on two processes (DistributedSampler's padding),
    # 2 on one; epochs now have 2 on any number. A two-process run of theirs stopped during its validation
    # (last.pt at step 3 of 3) was refused on resuming: "... makes epochs of 2 steps: resume it with the data it
    # was trained on". Its checkpoint is made here from a stop there: one random state per process.
    import alexnet.train as train_module
    from alexnet.errors import Stopped

    rng = np.random.default_rng(4)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)] for c, n in (("a", 6), ("b", 5))}
    data = write_image_folders(tmp_path / "data", colours, size=(48, 40))
    real = train_module.evaluate

    def signalled(*args, **kw):
        signal.raise_signal(signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "evaluate", signalled)
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        train(config(data, run, epochs=1))
    monkeypatch.undo()
    saved = torch.load(run / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 2)
    for processes, resumes in ((1, False), (2, True)):   # one process: the data changed, as the message says
        torch.save(dict(saved, step_in_epoch=3, rng=saved["rng"] * processes), run / "last.pt")
        if not resumes:
            with pytest.raises(UserError, match="stopped at step 3 of an epoch, and .* makes epochs of 2 steps"):
                train(config(data, run, epochs=1), resume=True)
            continue
        result = train(config(data, run, epochs=1), resume=True)
        assert result["epoch"] == 1 and "resuming at epoch 1, step 2 of 2" in capsys.readouterr().err
        assert_same_weights(saved["model"], weights(run / "last.pt"))   # validated, not trained again
        assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_run_saved_without_loss_scaling_resumes_with_it(one_epoch_run, tmp_path, monkeypatch):
    # --precision auto is fp16 with a loss scaler on a GPU without native bf16 (a V100), bf16 or fp32 without one
    # elsewhere: a run moved from an A100 to a V100, or begun on a V100 when auto took bf16 there, stopped at
    # "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler".
    import alexnet.train as train_module

    class Scaled(train_module.TrainStep):   # fp16's loss scaler, on fp32 arithmetic (a CPU's fp16 is slow)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", enabled=True)

    run, data = copy_of(one_epoch_run, tmp_path / "run"), one_epoch_run.parent / "data"
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["scaler"] == {} and saved["optimizer"]["param_groups"][0]["fused"]
    monkeypatch.setattr(train_module, "TrainStep", Scaled)
    real = train_module.optimizer_for
    monkeypatch.setattr(train_module, "optimizer_for", lambda *a, **kw: real(*a, **(kw | {"scaled": True})))
    fused, own = [], train_module._own_state
    monkeypatch.setattr(train_module, "_own_state",
                        lambda optimizer: (fused.append(optimizer.param_groups[0]["fused"]), own(optimizer)))
    result = train(config(data, run, epochs=2), resume=True)
    assert fused == [False]   # the saved groups' fused=True is not taken back under the scaler (see step.sgd)
    assert result["epoch"] == 2
    assert torch.load(run / "last.pt", weights_only=True)["scaler"]["scale"] > 0   # scaling from then on


def test_a_resume_takes_the_optimizer_settings_of_the_run_not_of_its_last_pt(two_epochs_run, tmp_path, monkeypatch):
    # torch's load_state_dict takes every group setting from the file: a last.pt of another version or tool (or
    # crafted) whose groups say nesterov, dampening or maximize trained with them, config.yaml saying otherwise.
    # The run's configuration decides them; the learning rate is the schedule's, and the file's last one is kept:
    # the paper's update rule scales the next step's momentum by it (step.set_lr).
    import alexnet.train as train_module

    run = tmp_path / "run"
    shutil.copytree(two_epochs_run, run, ignore=shutil.ignore_patterns(".lock", "last.pt", "best.pt"))
    saved = torch.load(two_epochs_run / "last.pt", map_location="cpu", weights_only=True, mmap=True)
    ours = [dict(g) for g in saved["optimizer"]["param_groups"]]
    for group in saved["optimizer"]["param_groups"]:
        group.update(nesterov=True, dampening=0.5, maximize=True, momentum=0.5, weight_decay=0.1, lr=0.0123)
        group["from_another_tool"] = 1
    torch.save(saved, run / "last.pt")
    loaded = []

    def taken(optimizer):   # the groups as resumed, then no training: what it would train with is the point
        loaded.extend(dict(g, params=None) for g in optimizer.param_groups)
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "_own_state", taken)
    with pytest.raises(KeyboardInterrupt):
        train(config(two_epochs_run.parent / "data", run, epochs=3), resume=True)
    assert loaded == [dict(g, params=None, lr=0.0123) for g in ours]
    assert ours[0]["nesterov"] is False and ours[0]["dampening"] == 0 and ours[0]["maximize"] is False


def test_the_copy_kept_of_a_private_last_pt_is_private(tmp_path, monkeypatch):
    # Where hard links fail, .last-previous.pt was a copy under the umask (0644 of a 0600 last.pt), and a
    # rollback after a divergence put it back as last.pt.
    from alexnet.train import _keep_as_previous

    last = tmp_path / "last.pt"
    last.write_bytes(b"weights")
    last.chmod(0o600)

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    _keep_as_previous(last, tmp_path / ".last-previous.pt")
    kept = tmp_path / ".last-previous.pt"
    assert kept.read_bytes() == b"weights" and kept.stat().st_mode & 0o777 == 0o600


def test_killing_at_random_moments_never_leaves_an_unreadable_checkpoint(more_data, tmp_path):
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    for attempt in range(3):
        args = ["train", "--data", str(more_data), "--out", str(run), "--epochs", "3", "--batch-size", "2",
                "--save-every", "1", "--workers", "0", "--precision", "fp32"]
        p = cli(*args, *(["--resume"] if (run / "last.pt").exists() else []))
        deadline = time.time() + 120
        while not (run / "last.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))  # somewhere in the middle of steps and checkpoint writes
        p.kill()
        p.communicate()
        state = torch.load(run / "last.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_checkpoint_write_cut_short_leaves_no_litter_after_the_next_start(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k2j3h4.tmp").write_bytes(b"half a checkpoint")
    train(config(data, run, epochs=1))
    assert not list(run.glob(".*.tmp")) and (run / "last.pt").is_file()


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(more_data, tmp_path):
    run = tmp_path / "run"
    # Every parameter decayed, torch's rule: settings under which step 1's loss is still finite, step 2's not.
    with pytest.raises(NonFiniteLoss, match="last good state"):
        train(config(more_data, run, lr=1e12, batch_size=2, save_every=1, epochs=1, zero_init_fc8=True,
                     bias_decay=True, update_rule="pytorch"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_run_folder_under_home_from_python_is_the_home_folders(data, tmp_path, monkeypatch):
    # The command line expands --out's ~ (the shell leaves `--out=~/runs/x` as it is); from Python it was checked
    # at the expanded path and used at the literal one: a folder named "~" in the current one, the run there.
    import alexnet.train as train_module

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "home" / "runs" / "x"
    set_up = []
    monkeypatch.setattr(train_module, "_set_up",   # where the run is, and that its lock made it
                        lambda config, *a, **kw: set_up.append((config.out, run.is_dir())) or 1 / 0)
    with pytest.raises(ZeroDivisionError):   # the training itself is no matter here
        train(config(data, "~/runs/x", epochs=1))
    assert set_up == [(str(run), True)] and not (tmp_path / "~").exists()
    # And a run there is what a fresh start is refused for, and what a resume reads.
    run.mkdir(parents=True, exist_ok=True)   # left empty, the first attempt's folder went with its lock
    run.joinpath("last.pt").write_bytes(b"a run")
    with pytest.raises(UserError, match=rf"^{run} already holds a run \(last\.pt\)"):
        train(config(data, "~/runs/x", epochs=1))
    with pytest.raises(UserError, match=rf"^{run / 'last.pt'} "):
        train(config(data, "~/runs/x", epochs=1), resume=True)
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("setting, needs", [(dict(lars_eta=0.01), "--optimizer lars"),
                                             (dict(schedule="cosine", patience=3), "--schedule plateau"),
                                             (dict(dropout=0.0, dropout_start=2), "--dropout")])
def test_a_setting_made_in_python_that_the_run_would_never_read_is_refused(data, tmp_path, setting, needs):
    """A configuration built in Python (a dataclass, or replace() on resolve's) reaches train without
    resolve's check: what the command refuses as a flag that does nothing, train refuses too, and before
    the run folder is made."""
    import dataclasses

    made = dataclasses.replace(config(data, tmp_path / "run", epochs=1), **setting)
    with pytest.raises(UserError, match=needs):
        train(made)
    assert not (tmp_path / "run").exists()


def test_what_resolve_gives_lars_in_place_of_the_presets_sgd_settings_is_not_asked_for(data, tmp_path):
    # resolve turns off bias decay for LARS (its own rule): counted as asked for, a demo-preset LARS run
    # without weight decay was refused "--no-bias-decay ... would do nothing", a flag no one gave.
    from alexnet.config import refuse_settings_that_do_nothing
    from alexnet.train import _asked_in

    lars = config(data, tmp_path / "run", preset="demo", optimizer="lars", weight_decay=0.0, zero_init_fc8=False)
    assert lars.bias_decay is False and "bias_decay" not in _asked_in(lars)
    refuse_settings_that_do_nothing(lars, _asked_in(lars))


def test_training_runs_in_a_thread_other_than_the_main_one(data, tmp_path):
    """train() in a worker thread (a notebook's background job, an application's or a server's thread): it
    set its stop signals' handlers there and failed with "signal only works in main thread"."""
    import threading

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ended = []
    worker = threading.Thread(target=lambda: ended.append(train(config(data, tmp_path / "run", epochs=1))))
    worker.start()
    worker.join()
    assert ended and ended[0]["epoch"] == 1 and (tmp_path / "run" / "last.pt").is_file()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_stop_signal_handler_not_set_from_python_is_left_in_place(monkeypatch):
    """signal.getsignal says None for a handler an embedding application set in C: Python cannot put it
    back, so training leaves it in place (signal.signal(sig, None) failed with a TypeError at the run's end)."""
    from alexnet.train import _StopFlag

    set_in_c = signal.SIGTERM
    real = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda sig: None if sig == set_in_c else real(sig))
    before = real(set_in_c)
    with _StopFlag() as stop:
        assert real(set_in_c) is before and real(signal.SIGUSR1) == stop._handle
    assert real(signal.SIGUSR1) != stop._handle


@pytest.fixture
def ctrl_c():
    """Ctrl-C as a terminal has it: a shell's background job (`make test &`) starts with it ignored, which
    training rightly keeps (the next test), and a test that presses it would see nothing happen."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("saved", [True, False])
def test_a_second_ctrl_c_stops_at_once_and_says_what_is_saved(tmp_path, saved, capsys, monkeypatch, ctrl_c):
    # Pressed twice (common), the save under way was given up with only "interrupted": the epoch lost, unsaid.
    from alexnet import cli
    from alexnet.train import _StopFlag

    last = tmp_path / "last.pt"
    if saved:
        last.write_bytes(b"a checkpoint")
    with pytest.raises(KeyboardInterrupt) as e, _StopFlag(last) as stop:
        os.kill(os.getpid(), signal.SIGINT)   # the first: stop after this step, and save
        assert stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)   # the second: at once
        pytest.fail("not stopped")
    kept = f"{last} holds the run as last saved" if saved else "nothing was saved"
    assert str(e.value) == f"a second Ctrl-C stops at once, without saving: {kept}"

    def interrupted(*args, **kwargs):
        raise e.value
    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["summary"]) == 130
    assert capsys.readouterr().err == f"alexnet summary: interrupted ({e.value})\n"


def test_a_ctrl_c_ignored_from_the_start_stays_ignored_and_a_schedulers_signal_still_stops():
    # `alexnet train ... &` in a script (a shell without job control): SIGINT comes ignored, which Python
    # keeps; training put its own handler in, and a Ctrl-C pressed for the foreground job stopped this one.
    from alexnet.train import _StopFlag

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signal is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            for signum in (signal.SIGUSR1, signal.SIGTERM):   # a scheduler's notice, then its stop: taken
                os.kill(os.getpid(), signum)
                assert stop.signal == signum
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("when", ["mid-epoch", "before the metrics row"])
def test_a_run_folder_moved_while_training_is_said_in_one_line_not_made_anew(data, tmp_path, monkeypatch, when):
    # `mv RUN elsewhere` mid-run: the next save made RUN anew (a run split over two folders, exit 0), or
    # ended in a traceback from the lock's release, or from the metrics row's write at an epoch's end.
    from alexnet.schedule import LRSchedule
    from alexnet.step import TrainStep

    run, moved = tmp_path / "run", tmp_path / "moved"
    cls, name = (TrainStep, "update") if when == "mid-epoch" else (LRSchedule, "end_epoch")
    original = getattr(cls, name)

    def moved_first(self, *args):
        if run.exists():
            run.rename(moved)
        return original(self, *args)
    monkeypatch.setattr(cls, name, moved_first)
    with pytest.raises(UserError, match=f"^{run} was moved or removed while this run held it; nothing more"):
        train(config(data, run, epochs=1, save_every=1))
    assert not run.exists() and (moved / "config.yaml").is_file()
    assert not any(p.name.endswith(".tmp") for p in moved.iterdir())


def test_a_channel_that_never_varies_trains_under_channel_normalisation(tmp_path):
    # Red at 0 in every image: its std was 0, every input NaN, and the run stopped at step 0 advising a
    # lower --lr, which changed nothing.
    rng = np.random.default_rng(0)
    colours = {c: [(0, int(rng.integers(0, 256)), int(rng.integers(0, 256))) for _ in range(4)] for c in ("a", "b")}
    data = write_image_folders(tmp_path / "data", colours, size=(48, 40))
    train(config(data, tmp_path / "run", epochs=1, normalization="channel"))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    std = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["preprocessing"]["std"]
    assert std[0] == 1.0 and (std[1:] > 1).all()   # the constant channel divided by one level


def test_a_diverged_run_keeps_the_state_before_the_blow_up_and_resumes_with_a_lower_lr(more_data, tmp_path,
                                                                                       two_epochs_run):
    # lr 10, a checkpoint after every step: step 2's loss is huge but finite, step 3's NaN. The weights
    # saved after step 2 are the ones that diverged; the run must keep those of step 1 instead.
    run = tmp_path / "a run"   # named in a command to paste: quoted
    with pytest.raises(NonFiniteLoss, match=r"last.pt \(epoch 1, step 1\) is the last good state") as e:
        train(config(more_data, run, lr=10, batch_size=2, save_every=1, epochs=1))
    assert shlex.split(str(e.value).split(": ")[-1]) == ["alexnet", "train", "--out", str(run), "--resume", "--lr",
                                                         "..."]
    assert json.loads((run / "diverged.json").read_text())["step"] == 2
    assert not (run / ".last-previous.pt").exists()
    saved = torch.load(run / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 1)
    # The remedies the message names are accepted on resume of a diverged run (from weights this blown
    # up it may diverge again; what matters here is that it is let try).
    try:
        train(config(more_data, run, lr=1e-4, batch_size=2, save_every=1, epochs=1), resume=True,
              given={"lr": 1e-4, "warmup_epochs": 0.5})
    except NonFiniteLoss:
        pass
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert (resumed["lr"], resumed["warmup_epochs"]) == (1e-4, 0.5)
    # A run that did not diverge still refuses them, and says when they are allowed (refused before anything
    # in the module's run is read or written but its checkpoint).
    with pytest.raises(UserError, match="a run that diverged may change --lr"):
        train(config(two_epochs_run.parent / "data", two_epochs_run, lr=1e-4, epochs=3), resume=True,
              given={"lr": 1e-4, "epochs": 3})


def test_no_checkpoint_before_the_divergence_is_said_so(more_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="no checkpoint was saved before it; start again with a lower --lr"):
        train(config(more_data, run, lr=1e6, batch_size=2, save_every=1, epochs=1))
    assert not (run / "last.pt").exists() and (run / "diverged.json").exists()


def test_unreadable_images_are_skipped_counted_and_warned_about_once(data, tmp_path, capsys):
    (data / "train" / "red" / "001.png").write_bytes(b"")
    train(config(data, tmp_path / "run", epochs=1))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["skipped"] == 1    # in the epoch; the statistics pass before it is not counted
    assert capsys.readouterr().err.count("skipping unreadable image") == 1   # nor warned about again


@pytest.mark.parametrize("broken, message", [
    ("val", "no readable image in .*val: none of its 8 files can be read"),
    # a class of training images none can be read: the network would have an output that nothing teaches
    ("train/blue", "no readable image of class blue in .*train: none of its 4 files can be read")])
def test_broken_files_are_refused_before_any_work(data, tmp_path, broken, message):
    for path in (data / broken).rglob("*.png"):
        path.write_bytes(b"")
    # ImageNet normalisation and no PCA: no statistics pass that would notice first. Found before the first
    # epoch, not after it, and before the run folder is made.
    with pytest.raises(UserError, match=message + " \\(the first, .*000.png: an empty file \\(0 bytes\\)\\)"):
        train(config(data, tmp_path / "run", epochs=1, normalization="imagenet", pca_noise="none"))
    assert not (tmp_path / "run").exists()


def test_parts_that_do_not_split_the_batch_are_refused_before_the_run_starts(data, tmp_path):
    with pytest.raises(UserError, match="--accumulate 3 does not split each process's 4 images"):
        train(config(data, tmp_path / "run", accumulate=3))
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_never_overwritten(one_epoch_run, tmp_path):
    copy_of(one_epoch_run, tmp_path / "run")
    data = one_epoch_run.parent / "data"
    with pytest.raises(UserError, match="already holds a run"):
        train(config(data, tmp_path / "run", epochs=1))
    with pytest.raises(UserError, match="cannot change --lr when resuming"):
        train(config(data, tmp_path / "run", epochs=1, lr=0.5), resume=True, given={"lr": 0.5})
    with pytest.raises(UserError, match="nothing to resume"):
        train(config(data, tmp_path / "other"), resume=True)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("wrong", ["no train folder", "no class folders", "a file for a folder"])
def test_a_data_error_is_the_first_and_only_line_and_leaves_run_as_it_was(wrong, data, tmp_path, capsys):
    from alexnet.cli import main

    bad = tmp_path / "bad"
    if wrong == "no train folder":
        (bad / "val").mkdir(parents=True)
    elif wrong == "no class folders":
        (bad / "train").mkdir(parents=True)
        (bad / "val").mkdir()
    else:
        bad.write_text("not a folder")
    kept = tmp_path / "kept"          # a folder that already holds a user's file
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (tmp_path / "new", kept):
        assert main(["train", "--data", str(bad), "--out", str(out), "--workers", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("alexnet train: error:"), err
    assert not (tmp_path / "new").exists()
    assert _files(kept) == {"notes.txt": b"mine"} and [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_resuming_a_finished_run_says_so_and_changes_nothing_until_epochs_grow(one_epoch_run, tmp_path, capsys):
    from alexnet.cli import main

    run = copy_of(one_epoch_run, tmp_path / "run")
    before = _files(run)
    capsys.readouterr()
    for resume in (["--resume"], ["--resume", "auto"], ["--resume", str(run / "last.pt")]):
        assert main(["train", "--out", str(run), *resume]) == 0
        err = capsys.readouterr().err
        assert "is complete: 1 of 1 epochs done" in err and "--epochs 2" in err and "resuming at" not in err, err
        assert _files(run) == before
    # The pytorch/examples habit names the run by its checkpoint; a larger --epochs trains it on.
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "name the run once" in capsys.readouterr().err
    with pytest.raises(SystemExit) as end:   # argparse's own refusal, one line
        main(["train", "--resume", str(tmp_path / "nowhere")])
    assert end.value.code == 2 and "a run folder holding last.pt" in capsys.readouterr().err


def test_the_paper_recipe_on_a_small_set_points_at_the_demo_preset(data, tmp_path, capsys, one_epoch_run):
    # config(data, ...) is the paper's recipe: the module's run of it
    assert "--preset demo is made for small sets" in (one_epoch_run.parent / "stderr.txt").read_text()
    train(resolve("demo", dict(data=str(data), out=str(tmp_path / "demo"), epochs=1, batch_size=4, **FAST)))
    assert "--preset demo" not in capsys.readouterr().err


@pytest.mark.processes
def test_two_processes_match_one_with_the_same_global_batch(more_data, tmp_path):
    # Dropout off: its random numbers are per process. Crops, flips and PCA noise are drawn per sample,
    # so they match across process counts by construction. Two unreadable training files, which fall to
    # different processes: skipped by each, counted for the job.
    more_data = Path(shutil.copytree(more_data, tmp_path / "data"))
    (more_data / "train" / "red" / "empty.png").write_bytes(b"")
    (more_data / "train" / "blue" / "text.png").write_text("not an image")
    # Both start from one weights file (fine-tuning): its fc8 answers "red", "violet", "blue", so the run's fc8
    # is new but for the rows of red and blue, carried by name on each process.
    start = _weights_file(tmp_path / "start.safetensors", ["red", "violet", "blue"])
    common = ["--data", str(more_data), "--epochs", "1", "--batch-size", "4", "--dropout", "0", "--lr", "0.001",
              "--workers", "0", "--precision", "fp64", "--weights", str(start)]   # float64: conftest.SAME_RUN
    train(config(more_data, tmp_path / "one", epochs=1, dropout=0.0, precision="fp64", weights=str(start)))
    # Each process takes its 2 images in 2 parts (the first without DDP's exchange): the same steps still.
    common += ["--accumulate", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "alexnet", "train", *common, "--out", str(tmp_path / "two"), "--log-every", "4"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("alexnet train: starting from") == 1, r.stderr[-3000:]
    assert_same_run(weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt"))
    # One epoch at lr 0.001 moves conv1 little: both ended near the file's weights, not near a fresh network's.
    from safetensors.torch import load_file
    conv1 = load_file(start)["features.0.weight"].double()
    moved = (weights(tmp_path / "two" / "last.pt")["features.0.weight"] - conv1).abs().max()
    assert moved < 0.1 * conv1.abs().max(), moved
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("one", "two")]
    assert rows[0]["skipped"] == rows[1]["skipped"] == 2
    # The progress line at the epoch's last step is the job's loss so far (both processes'), the row's.
    last = [line for line in r.stderr.splitlines() if line.startswith("epoch 1/1 step 4/4:")]
    assert len(last) == 1 and f"loss {rows[1]['train_loss']:.3f}," in last[0], r.stderr[-3000:]
    # The mean image and PCA were shared out over the two processes (each summed half the images).
    one, two = (DataStats.load(tmp_path / run / "data_stats.safetensors") for run in ("one", "two"))
    assert one.images == two.images == 16
    for key in ("mean_image", "channel_mean", "channel_std", "eigvals"):
        torch.testing.assert_close(getattr(two, key), getattr(one, key), rtol=1e-6, atol=1e-6, msg=key)


def test_processes_that_see_different_data_are_refused_together(data, more_data, monkeypatch):
    # Node-local copies of a data set can differ: the ranks trained an epoch apart, then failed in a collective
    # (gloo's abort, DDP's traceback) with the mean image of a mix of both written. Two processes, as gathered.
    from alexnet import distributed
    from alexnet.data.sources import open_data
    from alexnet.train import _check_same_data, _data_seen

    pair = distributed.Dist(rank=0, world=2)
    mine, theirs = _data_seen(open_data(data)), _data_seen(open_data(more_data))
    gathered = []
    monkeypatch.setattr(distributed, "gather_objects", lambda dist, obj: [obj, *gathered])
    gathered[:] = [("", mine)]
    _check_same_data(pair, open_data(data), "")   # the same files, wherever they lie: no refusal
    gathered[:] = [("", theirs)]
    with pytest.raises(UserError) as refused:
        _check_same_data(pair, open_data(data), "")
    assert str(refused.value) == (
        f"the processes see different data (rank 0: 8 training and 8 validation images in 2 classes, fingerprints "
        f"{mine[3]} and {mine[4]}; rank 1: 16 training and 16 validation images in 2 classes, fingerprints "
        f"{theirs[3]} and {theirs[4]}): --data must hold the same images on every node")
    # Different data first, whatever a process then says of its own (one class, no full batch).
    gathered[:] = [("no full batch", theirs)]
    with pytest.raises(UserError, match="^the processes see different data"):
        _check_same_data(pair, open_data(data), "")
    # A process that could not open its --data is refused with the others, which would wait for it.
    gathered[:] = [("/nodes/1/data does not exist", None)]
    with pytest.raises(UserError, match=r"^/nodes/1/data does not exist \(in process 1 of 2\)$"):
        _check_same_data(pair, open_data(data), "")


@pytest.mark.processes
@pytest.mark.parametrize("other", ["more images", "another class"])
def test_two_nodes_with_different_copies_of_the_data_stop_at_the_start_in_one_line(tmp_path, other):
    # Two processes as two nodes, each with its own copy of the data at the same relative --data, and a shared
    # --out; the process group is setup()'s own, from the environment torchrun would give them.
    from test_elastic import free_port

    for node in ("node0", "node1"):
        flat_colours(tmp_path / node / "data", 0, 6 if node == "node1" and other == "more images" else 4)
    if other == "another class":
        write_image_folders(tmp_path / "node1" / "data", {"green": [(0, 200, 0)] * 4}, size=(48, 40))
    port, run = free_port(), tmp_path / "run"
    started = [subprocess.Popen(
        [sys.executable, "-m", "alexnet", "train", "--data", "data", "--out", str(run), "--epochs", "1",
         "--batch-size", "4", "--workers", "0", "--preset", "demo"], cwd=tmp_path / f"node{rank}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))) for rank in (0, 1)]
    ended = [p.communicate(timeout=120) for p in started]
    for p, (_, err) in zip(started, ended):
        assert p.returncode == 2 and err.startswith("alexnet train: error: the processes see different data (rank "
                                                    "0: 8 training and 8 validation images in 2 classes"), err
        assert err.endswith("): --data must hold the same images on every node\n") and err.count("\n") == 1, err
    assert ("12 training and 12 validation images in 2 classes" if other == "more images" else
            "12 training and 12 validation images in 3 classes") in ended[0][1]
    assert not {"config.yaml", "data_stats.safetensors", "last.pt"} & {p.name for p in run.glob("*")}


@pytest.mark.processes
def test_a_demo_set_that_cannot_be_written_stops_every_process_with_its_line(tmp_path):
    # Local rank 0 writes the demo set while the others wait for it: its failure left them to meet its end as
    # "another process of the job failed" (or to wait for ever, across machines). A cache folder that cannot
    # be made: under a file.
    (tmp_path / "file").write_text("not a folder")
    cache = tmp_path / "file" / "cache"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "alexnet", "train", "--out", str(tmp_path / "run"), "--epochs", "1", "--workers", "0"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1", ALEXNET_CACHE=str(cache)))
    line = (f"alexnet train: error: cannot write the demo set to {cache / 'demo-seed0'} (Not a directory); give "
            f"--data, or set ALEXNET_CACHE to a folder with room for it (70 MB)")
    # On stderr once for the machine; in torchrun's summary for each process, from its error file (cli._say_error).
    said = [text for text in r.stderr.splitlines() if text.startswith("alexnet train: ")]
    summary = [text.split(" : ", 1)[1] for text in r.stderr.splitlines() if text.strip().startswith("traceback :")]
    assert r.returncode != 0 and said == [line] and summary == [line, line], r.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.processes
def test_a_global_batch_that_two_processes_cannot_halve_is_shared_and_matches_one(more_data, tmp_path):
    # An elastic job that lost a node (128 over 24 processes) was refused on every restart. Batch 3 over 2:
    # shares of 2 and 1, each rank's loss weighted so that the update is the global batch's.
    flags = ["--epochs", "1", "--batch-size", "3", "--dropout", "0", "--lr", "0.001", "--workers", "0",
             "--precision", "fp64"]
    train(config(more_data, tmp_path / "one", epochs=1, batch_size=3, dropout=0.0, precision="fp64"))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "alexnet", "train", "--data", str(more_data), *flags, "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt"))
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("one", "two")]
    assert rows[0]["train_loss"] == pytest.approx(rows[1]["train_loss"], rel=1e-6)   # summed in float32


@pytest.mark.processes
@pytest.mark.parametrize("flags, message", [(["--out", "{file}"], "is a file; give a folder"),
                                            (["--batch-size", "0"], "expected a positive integer")])
def test_a_usage_error_under_torchrun_is_said_once_and_named_in_its_failure_summary(data, tmp_path, flags, message):
    (tmp_path / "file").write_text("mine")
    flags = [f.format(file=tmp_path / "file") for f in flags]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "alexnet", "train", "--data", str(data), "--out", str(tmp_path / "run"), *flags],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    said = [line for line in r.stderr.splitlines() if line.startswith("alexnet train: error:")]
    # Once at most: local rank 0 says it, unless torchrun stopped it (SIGTERM) when the other failed first.
    assert r.returncode != 0 and len(said) <= 1 and all(message in line for line in said), r.stderr[-3000:]
    # torchrun's summary gives each failed rank's cause (its error file), not a link to its documentation;
    # a rank it stopped is named by the signal: killed by it before our handler, or stopped by it after.
    named = [line.split("traceback :")[1].strip() for line in r.stderr.splitlines()
             if line.strip().startswith("traceback :")]
    ours = [line for line in named if line.startswith("alexnet train: error:")]
    assert len(named) == 2 and ours and all(message in line for line in ours), r.stderr[-3000:]
    stopped = ("Signal 15 (SIGTERM)", "alexnet train: stopped by SIGTERM")
    assert all(line in ours or line.startswith(stopped) for line in named), r.stderr[-3000:]
    root = r.stderr.split("Root Cause")[1]
    assert any(line in root for line in ours), r.stderr[-3000:]


@pytest.mark.processes
def test_a_data_parallel_run_that_diverges_stops_every_process_and_says_so_once(data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "alexnet", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                        "--batch-size", "4", "--lr", "1e38", "--workers", "0", "--precision", "fp32"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("alexnet train: error:")]
    assert r.returncode != 0 and len(errors) == 1 and "became n" in errors[0], r.stderr[-3000:]
    assert (tmp_path / "run" / "diverged.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "expected a positive integer"),
    (["--lr", "-1"], "expected a positive number"),
    (["--data", "/no/such/folder"], "does not exist"),
    (["--schedule", "linear"], "invalid choice"),
    (["--resume", "--out", "/tmp/alexnet-no-such-run"], "nothing to resume"),
    (["--resume", "maybe"], "expected nothing, 'auto', or a run folder holding last.pt"),
    (["--save-every-minutes", "nan"], "expected a non-negative number, got nan"),
    (["--optimizer", "adam"], "invalid choice: 'adam'"),
    (["--accumulate", "0"], "expected a positive integer, got 0"),
    (["--lars-eta", "0"], "expected a positive number"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    r = run_main("train", *args)   # in this process: `python -m alexnet` is main() too (test_cli runs it as one)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_loaded_momentum_takes_its_weights_memory_layout_in_memory_of_its_own(tmp_path):
    # Fused SGD adds momentum to the weight as flat memory: an NCHW buffer for a channels_last weight
    # would update the wrong elements (a towers checkpoint resumed on one process did exactly that).
    # And a buffer loaded from a mapped last.pt kept that file on disk after it was replaced: a resumed
    # run needed a checkpoint's worth more disk than a fresh one.
    from alexnet.checkpoint import torch_load
    from alexnet.train import _own_state

    w = torch.nn.Parameter(torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last))
    v = torch.nn.Parameter(torch.randn(7))
    opt = torch.optim.SGD([w, v], lr=0.1, momentum=0.9, fused=True)
    buf = torch.randn(4, 3, 5, 5)                                    # NCHW, as a sliced checkpoint gives it
    torch.save({"w": buf, "v": torch.ones(7)}, tmp_path / "last.pt")
    mapped = torch_load(tmp_path / "last.pt")                         # as a resume reads it
    opt.state[w]["momentum_buffer"], opt.state[v]["momentum_buffer"] = mapped["w"], mapped["v"]
    _own_state(opt)
    got = opt.state[w]["momentum_buffer"]
    assert got.stride() == w.stride() and torch.equal(got, buf)
    for tensor, own in ((mapped["w"], got), (mapped["v"], opt.state[v]["momentum_buffer"])):
        assert own.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr() and torch.equal(own, tensor)
    w.grad = torch.ones_like(w)
    expected = w.detach() - 0.1 * (0.9 * buf + 1)
    opt.step()
    torch.testing.assert_close(w.detach(), expected)


def test_resume_auto_starts_a_run_then_continues_it(data, tmp_path, two_epochs):
    run = tmp_path / "b"
    train(config(data, run, epochs=1), resume="auto")                          # nothing there: a fresh run
    train(config(data, run, epochs=2), resume="auto", given={"epochs": 2})     # last.pt there: continued
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert_same_weights(two_epochs, weights(run / "last.pt"))


def test_resume_auto_keeps_an_earlier_runs_outputs_and_a_resume_refuses_what_would_lose_work(two_epochs_run,
                                                                                              tmp_path):
    run, data = copy_of(two_epochs_run, tmp_path / "run"), two_epochs_run.parent / "data"
    # A resume may not train fewer epochs than it holds, nor take another preset.
    with pytest.raises(UserError, match="--epochs 1 is fewer than .* has trained \\(2 epochs\\); give at least 2"):
        train(config(data, run, epochs=1), resume=True, given={"epochs": 1})
    r = run_main("train", "--out", run, "--resume", "--preset", "demo")
    assert r.returncode == 2 and "cannot change --preset when resuming" in r.stderr, r.stderr
    (run / "last.pt").unlink()   # to save room, say: best.pt and metrics.jsonl stay the run's record
    before = {name: (run / name).read_bytes() for name in ("best.pt", "metrics.jsonl")}
    with pytest.raises(UserError, match="holds an earlier run's best.pt and metrics.jsonl but no last.pt"):
        train(config(data, run, seed=7), resume="auto")   # another run's settings
    with pytest.raises(UserError, match="but no last.pt"):
        train(config(data, run), resume="auto")           # its own, but more than a first epoch's rows
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_closed_pipe_does_not_stop_training(data, tmp_path):
    # `alexnet train ... 2>&1 | head -3`: the reader leaves at once; the run goes on to its end.
    p = subprocess.Popen(f"{shlex.quote(sys.executable)} -m alexnet train --data {shlex.quote(str(data))} --out "
                         f"{shlex.quote(str(tmp_path / 'run'))} --epochs 1 --batch-size 4 --lr 0.001 --workers 0 "
                         f"--precision fp32 --log-every 1 2>&1 | head -1", shell=True, stdout=subprocess.PIPE,
                         text=True, executable="/bin/bash")
    p.communicate(timeout=300)
    assert p.returncode == 0
    assert [json.loads(r)["epoch"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.parametrize("flags, message", [
    (["--seed", str(2**64)], "seed must be below 2^63"),
    (["--workers", "100000"], "--workers 100000 is more loader processes than this machine can use"),
])
def test_settings_a_machine_cannot_run_are_refused_before_any_work(data, tmp_path, flags, message):
    r = run_main("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *flags)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_more_workers_than_cores_is_said_once_in_one_line(data, tmp_path, capsys, monkeypatch):
    # torch says it in a paragraph each time a loader is made or started: four times an epoch.
    import types
    import warnings

    import alexnet.train as train_module

    # A one-core machine, for this project and for torch's own count, whatever this one has.
    monkeypatch.setattr(train_module, "usable_cores", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.setattr(os, "process_cpu_count", lambda: 1, raising=False)   # Python 3.13's
    workers = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_module._check_workers(config(data, tmp_path / "run", workers=workers), types.SimpleNamespace(main=True))
        list(torch.utils.data.DataLoader(list(range(workers)), num_workers=workers))
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alexnet train: warning: --workers {workers} per process is more "), err


def test_the_warning_filter_of_too_many_workers_ends_with_the_run(data, tmp_path, monkeypatch):
    # A Python caller's own DataLoaders, made after train() returns, keep torch's warning.
    import warnings

    import alexnet.train as train_module

    monkeypatch.setattr(train_module, "usable_cores", lambda: 1)
    before = list(warnings.filters)
    with pytest.raises(UserError, match="--accumulate 3 does not split"):   # refused after the workers' check
        train(config(data, tmp_path / "run", workers=2, accumulate=3))
    assert warnings.filters == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_while_setting_up_ends_at_once_with_one_line(data, tmp_path, monkeypatch, capsys, signum):
    # A scheduler's notice during the statistics pass (minutes on ImageNet) used to kill the process
    # silently; now it ends as Ctrl-C does, the folder's lock released.
    import alexnet.train as train_module
    from alexnet.train import Stopped

    def signalled(*args, **kw):
        os.kill(os.getpid(), signum)
        time.sleep(5)   # the handler raises before this ends
        raise AssertionError("the signal was not handled")
    monkeypatch.setattr(train_module, "_set_up", signalled)
    with pytest.raises(Stopped) as e:
        train(config(data, tmp_path / "run"))
    assert e.value.exit_code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} before the first step" in capsys.readouterr().err
    assert signal.getsignal(signum) is signal.SIG_DFL and not (tmp_path / "run" / ".lock").exists()


@pytest.mark.parametrize("out, message", [("", "--out is empty"), ("{file}", "is a file; give a folder"),
                                          ("{data}/train/run", "lies inside"),
                                          ("{loop}", "is a link to loop, which leads to no folder"),
                                          ("{dead}", "is a link to /nonexistent/run, which leads to no folder")])
def test_a_run_folder_that_is_no_folder_or_lies_in_the_data_is_refused(data, tmp_path, out, message):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dead").symlink_to("/nonexistent/run")
    out = out.format(file=tmp_path / "file", data=data, loop=tmp_path / "loop", dead=tmp_path / "dead")
    with pytest.raises(UserError, match=message):
        train(config(data, out))
    assert not (data / "train" / "run").exists() and (tmp_path / "file").read_text() == "mine"


def test_a_process_torchrun_restarted_resumes_by_itself(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")   # what torchrun sets in a restarted group
    train(config(data, run, epochs=1))                       # a restart before any checkpoint: starts it
    train(config(data, run, epochs=2), given={"epochs": 2})  # a restart after one: continues, no --resume
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")   # a first start still never overwrites a run
    with pytest.raises(UserError, match="already holds a run"):
        train(config(data, run, epochs=2))


def test_a_restart_after_a_refused_first_attempt_is_refused_too(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    train(config(data, run, epochs=1))                       # an earlier job's run, complete
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    # Another job's first attempt is refused (RUN holds a run); torchrun restarts it with the same command.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    for count in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
        with pytest.raises(UserError, match="already holds a run"):
            train(config(data, run, epochs=2))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    # The job that started it continues it after a restart.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    train(config(data, run, epochs=2), given={"epochs": 2})
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_torchrun_agent_is_known_by_its_job_log_folder_across_restarts(monkeypatch):
    import alexnet.train as train_module

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "paper")   # the README's --rdzv-id: every job of it shares it
    job = "/tmp/torchelastic_k2j4/paper_x8f1q"            # what torchrun's agent makes once for its job

    def agent(attempt: int, local_rank: int, parent: int) -> str:
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", f"{job}/attempt_{attempt}/{local_rank}/error.json")
        monkeypatch.setattr(train_module.os, "getppid", lambda: parent)
        return train_module._agent()

    # A wrapper script between the agent and the workers is another process at each restart; in a
    # container the agent is pid 1 in every job.
    first = agent(0, 0, 101)
    assert agent(1, 1, 202) == agent(3, 0, 1) == first
    job = "/tmp/torchelastic_m9z0/paper_7hq2c"            # another job: same rendezvous id, same pid 1
    assert agent(0, 0, 1) != first


def test_without_a_terminal_progress_comes_as_plain_lines(more_data, tmp_path):
    # In this process: stderr is no terminal (text captured), as in a cluster job's log, a pipe or a file.
    r = run_main("train", "--data", more_data, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "2",
                 "--log-every", "3", "--lr", "0.001", "--workers", "0", "--precision", "fp32")
    err = r.stderr
    assert r.returncode == 0, err
    lines = [line for line in err.splitlines() if " step " in line]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/1 step 3/8", "epoch 1/1 step 6/8"]
    assert all("loss " in line and "img/s" in line and "epoch ends in" in line for line in lines)


NODE = """import os, sys
folder = os.path.join(sys.argv[1], "node" + os.environ["RANK"])   # each process in its own folder, as on
os.makedirs(folder, exist_ok=True)                                 # nodes with their own disks
os.chdir(folder)
from alexnet.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.processes
def test_a_run_folder_not_every_node_sees_is_refused_in_one_line(data, tmp_path):
    train(config(data, tmp_path / "node0" / "run", epochs=1))   # only "node" 0 holds the run
    script = tmp_path / "node.py"
    script.write_text(NODE)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path), "train", "--data", str(data), "--out", "run", "--resume", "auto",
                        "--epochs", "2", "--workers", "0"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0
    # On stderr (local rank 0) or, where torchrun stopped that one first, in its failure summary.
    errors = [line.split("traceback :")[-1].strip() for line in r.stderr.splitlines()
              if line.startswith("alexnet train: error:") or "traceback : alexnet train: error:" in line]
    # Said when the run starts, by the token of rank 0's hold that the other process cannot read: so too for
    # a fresh run, which trained to its end before and failed at the first restart.
    assert errors and all("--out run is not the same folder for every process" in line for line in errors), \
        r.stderr[-2000:]
    assert "alexnet/train.py" not in r.stderr     # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "node1" / "run").exists()


def test_a_resume_drops_metrics_rows_its_checkpoint_does_not_hold(one_epoch_run, tmp_path):
    # As if the process died after writing epoch 2's row and before saving last.pt, mid-way through a line.
    run, data = copy_of(one_epoch_run, tmp_path / "run"), one_epoch_run.parent / "data"
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "val_loss": -1.0}) + "\n" + '{"epoch": 3, "val_lo')
    train(config(data, run, epochs=2), resume=True, given={"epochs": 2})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_loss"] >= 0


def test_a_second_run_on_a_busy_folder_is_refused_and_a_killed_ones_hold_is_gone(data, tmp_path):
    run = tmp_path / "run"
    args = ["--data", data, "--out", run, "--batch-size", "2", "--lr", "0.001", "--workers", "0",
            "--precision", "fp32"]

    def start(*extra):
        p = subprocess.Popen([sys.executable, "-m", "alexnet", "train", *map(str, args), *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if FolderLock(run).holder() == str(p.pid):
                return p
            time.sleep(0.05)
        raise AssertionError(f"the run never held {run}: {p.communicate()[1]}")

    first = start("--epochs", "1")
    # Paused while it holds the folder, however fast this CPU would have finished its 4 steps; a stopped
    # process keeps its lock.
    first.send_signal(signal.SIGSTOP)
    try:
        for extra in ([], ["--resume"]):   # a fresh start, and a resume that would have cleared its temporary files
            second = run_main("train", *args, "--epochs", "1", *extra)
            assert second.returncode == 2, second.stderr
            assert second.stderr.strip() == (f"alexnet train: error: {run} is in use by another alexnet train "
                                             f"(pid {first.pid}); wait for it to finish, or choose another --out")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # kill -9 takes the hold with the process: the next start goes ahead. A second epoch keeps it holding the
    # folder for an epoch (resuming a finished run lets go at once, before the test may have seen it hold).
    third = start("--epochs", "2", "--resume")
    third.kill()
    third.wait()
    last = run_main("train", *args, "--epochs", "2", "--resume")
    assert last.returncode == 0 and "in use" not in last.stderr, last.stderr


def test_a_fresh_run_never_writes_over_an_earlier_runs_files(one_epoch_run, tmp_path):
    run, data = copy_of(one_epoch_run, tmp_path / "run"), one_epoch_run.parent / "data"
    (run / "last.pt").unlink()
    rows, best = (run / "metrics.jsonl").read_text(), (run / "best.pt").read_bytes()
    with pytest.raises(UserError, match="holds an earlier run's best.pt and metrics.jsonl but no last.pt"):
        train(config(data, run, epochs=1))
    assert (run / "metrics.jsonl").read_text() == rows and (run / "best.pt").read_bytes() == best


@pytest.mark.parametrize("resume", [False, "auto"])
def test_a_fresh_run_keeps_a_config_yaml_it_did_not_write(data, tmp_path, resume):
    from alexnet.config import dump_yaml
    from alexnet.train import resolve_run

    run = tmp_path / "proj"
    run.mkdir()
    (run / "config.yaml").write_text("my_project: important\n")
    with pytest.raises(UserError, match=r"proj holds a config\.yaml that alexnet train did not write \(unknown "
                                        r"setting my_project\), which a fresh run would replace; choose another"):
        train(config(data, run, epochs=1), resume=resume)
    assert (run / "config.yaml").read_text() == "my_project: important\n"
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["config.yaml"]
    # A mapping of settings that no run wrote (a preset-like file of the user's, notes in it): theirs too.
    (run / "config.yaml").write_text("lr: 0.02\nepochs: 5  # my notes: keep\n")
    with pytest.raises(UserError, match=r"did not write \(no data, which a run records\)"):
        resolve_run(config(data, run, epochs=1), resume, None)
    # One an attempt stopped before its first checkpoint left, with other settings, is the run's to replace;
    # an earlier version's too, without settings added since and with values today's rules refuse.
    (run / "config.yaml").write_text(dump_yaml(config(data, run, epochs=3, batch_size=2)))
    assert resolve_run(config(data, run, epochs=1), resume, None)[1] is None
    earlier = yaml.safe_load(dump_yaml(config(data, run, epochs=3)))
    del earlier["bias_decay"]
    earlier["seed"] = 2**63
    (run / "config.yaml").write_text(yaml.safe_dump(earlier))
    assert resolve_run(config(data, run, epochs=1), resume, None)[1] is None


def test_a_hand_edited_config_yaml_is_refused_in_one_line(data, tmp_path):
    from alexnet.config import dump_yaml
    from alexnet.train import resolve_run

    run = tmp_path / "proj"
    run.mkdir()
    # Keys YAML reads as numbers beside names: they do not sort together.
    (run / "config.yaml").write_text("foo: 1\n2: b\n")
    with pytest.raises(UserError, match=r"did not write \(unknown setting 2\)"):
        resolve_run(config(data, run, epochs=1), False, None)
    # A copy of a run without its last.pt, a number in its config.yaml too large for a float: not this
    # run's first attempt, so its best.pt and metrics.jsonl are kept.
    (run / "config.yaml").write_text(dump_yaml(config(data, run, epochs=1)).replace("lr: 0.001", "lr: 1" + "0" * 400))
    (run / "best.pt").write_bytes(b"best")
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="holds an earlier run's best.pt and metrics.jsonl but no last.pt"):
        resolve_run(config(data, run, epochs=1), "auto", None)


def test_resume_auto_after_an_attempt_stopped_before_its_first_checkpoint_starts_clean(one_epoch_run, tmp_path):
    # Killed between epoch 1's metrics row and its last.pt: the restart's row must not follow a stale one.
    run, data = copy_of(one_epoch_run, tmp_path / "run"), one_epoch_run.parent / "data"
    (run / "last.pt").unlink()
    train(config(data, run, epochs=1), resume="auto")
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.parametrize("device, decodes, cores, per_node, expected", [
    ("cuda", True, 16, 1, 15),    # one GPU, 16 cores: every core but the training process's decodes
    ("cuda", True, 96, 8, 11),    # 8 GPUs share 96 cores: 12 each, less the process itself
    ("cuda", True, 64, 1, 16),    # capped
    ("cuda", True, 2, 1, 2),      # never under 2
    ("cuda", False, 16, 1, 2),    # stored pixels (or JPEGs nvJPEG decodes): nothing to decode in workers
    ("cpu", True, 16, 1, 2),      # the CPU trains too: the step needs the cores
    ("cpu", False, 16, 1, 0),     # stored pixels on a CPU: a worker would only add a copy
    ("cuda", None, 16, 1, 15),    # a set that does not say (dense views' whole images) decodes
])
def test_default_loader_workers_follow_where_decoding_happens(monkeypatch, device, decodes, cores, per_node,
                                                              expected):
    from types import SimpleNamespace

    from alexnet.data import loader

    monkeypatch.setattr(loader, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    images = SimpleNamespace() if decodes is None else SimpleNamespace(decodes=decodes)
    assert loader.default_workers(images, torch.device(device)) == expected
    # Evaluation's batches are quick: reading the next beside them pays even for stored pixels on a CPU.
    evaluating = 2 if (device, decodes) == ("cpu", False) else expected
    assert loader.default_workers(images, torch.device(device), training=False) == evaluating


def test_train_evaluate_and_features_take_the_default_workers_unless_told(tiny_folders, tmp_path, monkeypatch):
    """--workers absent: every command asks loader.default_workers about the set it reads; given: it decides."""
    import alexnet.train as t
    from alexnet import cli
    from alexnet.data import loader

    data, _ = tiny_folders
    asked = []
    real = loader.default_workers
    def counted(images, device, training=True):
        asked.append((images.decodes, training))
        return real(images, device, training)
    monkeypatch.setattr(loader, "default_workers", counted)
    monkeypatch.setattr(t, "default_workers", counted)      # train imported it by name
    common = ["--device", "cpu", "--precision", "fp32"]
    train = ["train", "--data", data, "--epochs", "1", "--batch-size", "4", "--lr", "0.001", *common]
    assert cli.main([str(a) for a in [*train, "--out", tmp_path / "run"]]) == 0
    assert asked == [(True, True)]          # image folders decode, on the CPU: 2 workers
    best = tmp_path / "run" / "best.pt"
    assert cli.main([str(a) for a in ["evaluate", "--checkpoint", best, "--data", data, "--json", *common]]) == 0
    assert cli.main([str(a) for a in ["features", "--checkpoint", best, "--data", data,
                                      "--out", tmp_path / "f.npz", *common]]) == 0
    assert asked == [(True, True), (True, False), (True, False)]
    for command in ([*train, "--out", tmp_path / "run2"],
                    ["evaluate", "--checkpoint", best, "--data", data, "--json", *common]):
        assert cli.main([str(a) for a in [*command, "--workers", "0"]]) == 0
    assert len(asked) == 3                  # --workers given: nobody asked


def test_a_resume_that_would_end_inside_the_warm_up_says_so(data, tmp_path, monkeypatch):
    # The preset's warm-up, a share of the epochs the run started with, is fixed then: --epochs 4 on a
    # resumed 20-epoch demo run said "warmup_epochs (6.666666666666667) must be shorter than the run".
    import alexnet.train as train_module
    from alexnet.errors import Stopped

    real = train_module._end_epoch

    def end_then_stop(run, *args, **kwargs):
        out = real(run, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)   # as a scheduler would: the run stops after its next step
        return out

    monkeypatch.setattr(train_module, "_end_epoch", end_then_stop)
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        train(config(data, run, epochs=3, warmup_epochs=2.5))
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"--epochs 2 would end .*run inside its warm-up of 2\.5 epochs \(set when it "
                                        r"started: .*\); give more than 2\.5"):
        train(config(data, run, epochs=2), resume=True, given={"epochs": 2})
    assert train(config(data, run, epochs=3), resume=True, given={})["epoch"] == 3


def test_one_class_is_refused_before_anything_is_written(tmp_path):
    # It trained to "val top-1 100.0%": one output, whose softmax is 1 whatever the image.
    data = write_image_folders(tmp_path / "data", {"cat": [(200, 10, 10)] * 4}, size=(48, 40))
    r = run_main("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "4")
    assert r.returncode == 2 and r.stderr.strip() == (f"alexnet train: error: {data} has one class (cat): a classifier "
                                                      "needs at least two class folders"), r.stderr
    assert not (tmp_path / "run").exists()


def test_a_resume_over_other_training_images_says_so(data, tmp_path, capsys):
    # Images added and removed between a stop and its resume: the run went on without a word, and could not
    # end with the weights of a run that never stopped.
    run = tmp_path / "run"
    train(config(data, run, epochs=1))
    assert torch.load(run / "last.pt", weights_only=True)["data"]["images"] == 8
    capsys.readouterr()
    train(config(data, run, epochs=2), resume=True, given={"epochs": 2})
    assert "other training images" not in capsys.readouterr().err
    red = data / "train" / "red"
    shutil.copy(red / "000.png", red / "004.png")
    (red / "001.png").unlink()
    train(config(data, run, epochs=3), resume=True, given={"epochs": 3})
    assert (f"note: {data} holds other training images than {run / 'last.pt'} was trained on (8 then, 8 now, other "
            "files): the run goes on with them") in capsys.readouterr().err
    # The data moved since: said so, with the remedy (it was "DIR is not a directory", naming no run).
    moved = data.rename(tmp_path / "moved")
    with pytest.raises(UserError, match=f"^{run} was trained on {data}, which is not there any more; give --data"):
        train(config(moved, run, epochs=4), resume=True, given={"epochs": 4})
    train(config(moved, run, epochs=4), resume=True, given={"epochs": 4, "data": str(moved)})
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(moved)


class _SetUp(Exception):
    """Raised in place of distributed.setup: the device a train call would start on, and nothing more done."""


def _device_at_setup(monkeypatch, call) -> str:
    """The device setting ``call`` hands distributed.setup (it goes no further)."""
    import alexnet.train

    def setup(device):
        raise _SetUp(device)

    monkeypatch.setattr(alexnet.train.distributed, "setup", setup)
    with pytest.raises(_SetUp) as stopped:
        call()
    return stopped.value.args[0]


def test_a_resume_starts_on_the_device_the_run_recorded_unless_device_is_given(data, tmp_path, monkeypatch, capsys):
    from alexnet.cli import main
    from alexnet.config import load_yaml

    run = tmp_path / "run"
    train(config(data, run, epochs=1, device="cpu"))
    assert load_yaml(run / "config.yaml")["device"] == "cpu"
    # --device's default is auto (CUDA where present): a resume without it is still the run's own device.
    for resume in (["--resume"], ["--resume", "auto"], ["--resume", str(run)]):
        assert _device_at_setup(monkeypatch, lambda: main(["train", "--out", str(run), *resume, "--epochs", "2"])) \
            == "cpu", resume
    assert _device_at_setup(monkeypatch, lambda: main(["train", "--out", str(run), "--resume", "--device", "auto"])) \
        == "auto"   # a device a resume may change
    assert _device_at_setup(monkeypatch, lambda: train(config(data, run, epochs=2), resume=True,
                                                       given={"epochs": 2})) == "cpu"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")   # torchrun's restart resumes by itself
    assert _device_at_setup(monkeypatch, lambda: train(config(data, run, epochs=2), given={"epochs": 2})) == "cpu"
    monkeypatch.undo()
    # --tensorboard's package is looked for as the run resolves (its own setting on a resume), before it starts.
    import alexnet.train

    def no_tensorboard():
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard")

    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["tensorboard"] = True
    torch.save(state, run / "last.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    monkeypatch.setattr(alexnet.train, "_tensorboard_class", no_tensorboard)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs the tensorboard package" in err and "resuming" not in err, err
    # A recorded device this machine lacks is said to be the run's (no --device was given), with the way on.
    monkeypatch.undo()
    if not torch.cuda.is_available():
        state["config"]["device"] = "cuda"
        torch.save(state, run / "last.pt")
        assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"alexnet train: error: {run / 'last.pt'} records device cuda, where the run was "
                              f"trained, and it cannot be used here (--device cuda was asked for, but PyTorch sees "
                              f"no CUDA device); give --device to resume it on another (e.g. --device cpu)"), err
        assert err.count("\n") == 1, err
    # A fresh run takes the flag's; so does a resume of a last.pt that cannot be read (then refused in one line).
    assert _device_at_setup(monkeypatch, lambda: train(config(data, tmp_path / "new"), resume="auto")) == "auto"
    (run / "last.pt").write_bytes(b"not a checkpoint")
    assert _device_at_setup(monkeypatch, lambda: train(config(data, run, epochs=2), resume=True)) == "auto"


def test_an_edit_of_config_yaml_is_refused_on_resume_not_lost(two_epochs_run, tmp_path, capsys):
    from alexnet.cli import main
    import dataclasses

    from alexnet import checkpoint
    from alexnet.config import dump_yaml
    import alexnet.train as train_module
    from alexnet.train import RESUMABLE_CHANGES, resolve_run

    # A copy of a finished run: a run folder moved elsewhere, whose config.yaml names it where it was.
    run = tmp_path / "run"
    shutil.copytree(two_epochs_run, run, ignore=shutil.ignore_patterns(".lock"))
    data = two_epochs_run.parent / "data"
    path = run / "config.yaml"
    written = path.read_text()
    assert yaml.safe_load(written)["out"] == str(two_epochs_run)

    saved = checkpoint.read_resumable(run / "last.pt").config

    def refused(text, message, epochs=3):   # what resolve_run checks last, without reading last.pt each time
        path.write_text(text)
        with pytest.raises(UserError, match=message) as e:
            train_module._check_config_yaml(run, saved, dataclasses.replace(saved, epochs=epochs), RESUMABLE_CHANGES,
                                            {})
        assert "\n" not in str(e.value) and path.read_text() == text   # one line; the file is kept
        return str(e.value)

    # A run's settings come from its checkpoint: an edit would have been ignored, then overwritten.
    path.write_text(written.replace("lr: 0.001", "lr: 0.2"))
    with pytest.raises(UserError, match="sets lr 0.2"):
        resolve_run(config(data, run, epochs=3), True, {"epochs": 3})
    said = refused(written.replace("lr: 0.001", "lr: 0.2"), r"config\.yaml sets lr 0\.2, but the run was trained "
                   r"with 0\.001 \(last\.pt\): a run's settings come from its checkpoint, and a resume cannot "
                   r"change lr \(a new run can: --lr 0\.2\)")
    assert said.endswith("put config.yaml back (alexnet train rewrites it)")
    refused(written.replace("flip: true", "flip: false"), "sets flip false, but the run was trained with true")
    refused(written.replace("epochs: 2", "epochs: 4"), "sets epochs 4, .* give --epochs 4 to change it on resume")
    refused(written.replace("momentum: 0.9", "momentum: banana"), "momentum must be a number, got 'banana'; a run's")
    refused(written + "colour: blue\n", "unknown setting colour")
    refused("lr: [0.1\n", r"cannot read .*config\.yaml: not YAML \(.* at line 2\); a run's settings come from")
    refused("- lr\n", "does not hold a mapping of settings")
    # Not edits: a resume that asks again what a start stopped before its first checkpoint wrote (a requeued
    # job's command), and settings a newer version added.
    stopped = dump_yaml(config(data, run, epochs=4))
    path.write_text(stopped)
    train_module._check_config_yaml(run, saved, dataclasses.replace(saved, epochs=4), RESUMABLE_CHANGES, {})
    refused(stopped, "sets epochs 4, but the run was trained with 2 .* give --epochs 4")
    older = yaml.safe_load(written)
    del older["bias_decay"], older["small"]
    path.write_text(yaml.safe_dump(older))
    train_module._check_config_yaml(run, saved, saved, RESUMABLE_CHANGES, {})
    # A start that failed before its first checkpoint (--epochs 12, a lower --lr that diverged again) left its
    # own record, digest and all: no edit, whatever a later resume asks.
    path.write_text(train_module._config_text(dataclasses.replace(saved, epochs=12, lr=0.0005)))
    train_module._check_config_yaml(run, saved, dataclasses.replace(saved, epochs=3), RESUMABLE_CHANGES, {})
    # An edit of a setting this resume asks for itself: the flag decides.
    path.write_text(written.replace("epochs: 2", "epochs: 4"))
    train_module._check_config_yaml(run, saved, dataclasses.replace(saved, epochs=5), RESUMABLE_CHANGES,
                                    {"epochs": 5})
    # Resumed with more epochs, then again: each start's config.yaml is its checkpoint's.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 0, capsys.readouterr().err
    assert yaml.safe_load(path.read_text())["epochs"] == 3
    for resume in (True, "auto"):
        assert resolve_run(config(data, run, epochs=4), resume, {"epochs": 4})[0].epochs == 4


def test_the_resume_line_after_a_signal_quotes_the_run_folder(tmp_path):
    from types import SimpleNamespace

    from alexnet.errors import Stopped
    from alexnet.train import _stop

    said = []
    run = SimpleNamespace(folder=tmp_path / "runs" / "s p", dist=SimpleNamespace(world=1), epoch=3,
                          config=SimpleNamespace(towers=1), say=said.append)
    with pytest.raises(Stopped):
        _stop(run, signal.SIGTERM, saved=True)
    command = said[0].split("Resume with: ")[1]
    assert shlex.split(command) == ["alexnet", "train", "--out", str(tmp_path / "runs" / "s p"), "--resume"]
