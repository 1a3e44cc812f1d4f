"""The training checkpoint (checkpoint.py): a real run's last.pt reads back as it was saved, best.pt holds
weights only, and every damaged field is one line naming the file and the field, never a traceback."""

import copy
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from alexnet import AlexNet, checkpoint
from alexnet.config import resolve
from alexnet.data.stats import STATS_FILE, DataStats
from alexnet.data.transforms import Normalize, Preprocessing
from alexnet.errors import UserError
from alexnet.step import sgd
from alexnet.train import train
from alexnet.weights import load_model, save_weights
from conftest import run_cli, run_main, write_image_folders


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of the paper recipe (mean image, PCA noise) on 2 classes of 4 flat-coloured images."""
    root = tmp_path_factory.mktemp("checkpoint")
    rng = np.random.default_rng(0)
    colours = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)] for c in ("red", "blue")}
    data = write_image_folders(root / "data", colours, size=(48, 40))
    train(resolve("paper", dict(data=str(data), out=str(root / "run"), epochs=1, batch_size=4, workers=0,
                                precision="fp32", log_every=1)))
    return root / "run"


@pytest.fixture(scope="module")
def state(run):
    """The run's last.pt with its weights and momentum swapped for stand-ins of the same shapes (each stores
    one number), so that the many damaged copies below are small to write; every other field is the run's."""
    s = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    s["model"] = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in s["model"].items()}
    s["optimizer"]["state"] = {}
    return s


def one_line_naming(error, path, field):
    message = str(error)
    assert len(message.splitlines()) == 1, message
    assert str(path) in message, message
    rest = message.replace(str(path), "")  # the path holds the test's name, which may hold the field's
    assert re.search(rf"\b{field}\b", rest), message
    assert "field '" not in rest or f"field '{field}'" in rest, message


# ---- what a run writes ----

def test_a_runs_last_checkpoint_reads_back_as_it_was_saved(run):
    r = checkpoint.read_resumable(run / "last.pt")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert r.config.to_dict() == saved and saved["epochs"] == 1 and saved["normalization"] == "mean-image"
    assert r.classes == r.names == ["blue", "red"]
    assert (r.epoch, r.step_in_epoch) == (1, 0)
    top1 = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
    assert r.best == {"top1": top1, "epoch": 1}
    assert r.schedule == {"drops": 0, "best": top1, "bad_epochs": 0, "warmup_rule": "at-least-2-steps"}
    assert r.scaler == {}  # fp32: no loss scaling

    stats = DataStats.load(run / STATS_FILE)
    expected_mean = stats.mean_image if saved["normalization"] == "mean-image" else stats.channel_mean
    assert r.prep.size == 227 and torch.equal(r.prep.norm.mean, expected_mean) and r.prep.norm.std is None
    assert torch.equal(r.prep.pca.eigvals, stats.eigvals) and torch.equal(r.prep.pca.eigvecs, stats.eigvecs)
    assert r.prep.pca.convention == saved["pca_noise"] == "paper"

    assert len(r.rng) == 1 and r.rng[0]["torch"].dtype == torch.uint8  # one process, one state
    # Momentum for each of the network's 16 parameters, shaped as it, in the optimizer's two groups (weights
    # decayed, then biases not); the weights are those best.pt holds (epoch 1 was the best so far), written
    # separately.
    assert [g["weight_decay"] for g in r.optimizer["param_groups"]] == [5e-4, 0.0]
    momentum = [r.optimizer["state"][i]["momentum_buffer"] for g in r.optimizer["param_groups"] for i in g["params"]]
    assert [m.shape for m in momentum] == [v.shape for v in r.model.values() if v.dim() > 1] + \
                                          [v.shape for v in r.model.values() if v.dim() <= 1]
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert r.model.keys() == best.keys() and all(torch.equal(r.model[k], best[k]) for k in best)


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process's mappings of ``path`` (Linux: /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_resume_keeps_no_view_of_the_mapped_last_pt(run, tmp_path):
    # A view left in the preprocessing or the momentum kept last.pt mapped, so the file a resumed run
    # replaced stayed on disk (a checkpoint's worth, 455 MB for the paper network) until the run ended.
    from alexnet.train import _own_state

    last = tmp_path / "last.pt"
    last.write_bytes((run / "last.pt").read_bytes())
    r = checkpoint.read_resumable(last)
    ranges = mapped_ranges(last)
    assert ranges, "torch.load(mmap=True) maps the file"          # by design: the weights are copied once

    def in_file(t):
        return any(lo <= t.untyped_storage().data_ptr() < hi for lo, hi in ranges)

    assert in_file(r.model["features.0.weight"])
    prep = [r.prep.norm.mean, r.prep.pca.eigvals, r.prep.pca.eigvecs]
    assert not any(in_file(t) for t in prep)
    model = AlexNet("paper", num_classes=2)
    model.load_state_dict(r.model)
    opt = sgd(model, 0.01, 0.9, 5e-4, torch.device("cpu"), bias_decay=r.config.bias_decay)
    opt.load_state_dict(r.optimizer)
    assert all(in_file(s["momentum_buffer"]) for s in opt.state.values())   # torch keeps the loaded tensors
    _own_state(opt)
    assert opt.state and not any(in_file(s["momentum_buffer"]) for s in opt.state.values())
    assert not any(in_file(p) for p in model.parameters())


def test_best_pt_is_refused_for_resuming_but_loads_as_a_model(run):
    with pytest.raises(UserError) as e:
        checkpoint.read_resumable(run / "best.pt")
    one_line_naming(e.value, run / "best.pt", "optimizer")
    assert "holds weights only" in str(e.value) and "last.pt" in str(e.value)

    m = load_model(run / "best.pt")
    assert (m.variant, m.lrn, m.classes, m.names, m.crop, m.normalization) == \
           ("paper", "paper", ["blue", "red"], ["blue", "red"], 227, "mean-image")
    r = checkpoint.read_resumable(run / "last.pt")
    assert m.metrics == {"val_top1": r.best["top1"], "epoch": 1}
    assert torch.equal(m.norm.mean, r.prep.norm.mean) and m.norm.std is None
    assert all(torch.equal(v, r.model[k]) for k, v in m.model.state_dict().items())


def channel_state(run, state, std=None):
    """The run above as training_state would save it normalised per channel (which records a std too);
    ``std`` in place of the data's."""
    r = checkpoint.read_resumable(run / "last.pt")
    stats = DataStats.load(run / STATS_FILE)
    config = resolve("paper", r.config.to_dict() | {"normalization": "channel", "pca_noise": "none"})
    norm = Normalize.create("channel", stats)
    prep = Preprocessing(227, norm if std is None else Normalize(norm.mean, std), None)
    return config, stats, checkpoint.training_state(
        model=state["model"], config=config, classes=r.classes, names=["a blue", "a red"], prep=prep, epoch=3,
        step_in_epoch=2, best={"top1": 0.25, "epoch": 2}, optimizer=state["optimizer"], schedule=r.schedule,
        scaler=r.scaler, rng=r.rng * 2)


def test_a_state_built_by_training_state_round_trips_with_a_channel_std(run, state, tmp_path):
    config, stats, saved = channel_state(run, state)
    path = tmp_path / "last.pt"
    checkpoint.save(path, saved)
    back = checkpoint.read_resumable(path)
    assert back.config == config and back.names == ["a blue", "a red"] and len(back.rng) == 2
    assert torch.equal(back.prep.norm.mean, stats.channel_mean) and torch.equal(back.prep.norm.std, stats.channel_std)
    assert back.prep.pca is None and (back.epoch, back.step_in_epoch, back.best) == (3, 2, {"top1": 0.25, "epoch": 2})


@pytest.mark.parametrize("std", [[1.0, 0.0, 1.0], [60.0, -50.0, 55.0]])
def test_a_std_of_zero_or_below_is_refused_for_resuming_as_for_loading(run, state, tmp_path, std):
    # Resumed, the run divided by it and diverged, blaming the learning rate; load_model refused the same file.
    path = tmp_path / "last.pt"
    checkpoint.save(path, channel_state(run, state, torch.tensor(std))[2])
    with pytest.raises(UserError, match="std a positive and finite") as e:
        checkpoint.read_resumable(path)
    one_line_naming(e.value, path, "preprocessing")
    with pytest.raises(UserError, match="std must be positive and finite"):
        load_model(path)


@pytest.mark.parametrize("left_out", checkpoint.RESUMABLE)
def test_training_state_refuses_half_a_resumable_state(run, left_out):
    r = checkpoint.read_resumable(run / "last.pt")
    common = dict(model=r.model, config=r.config, classes=r.classes, names=r.names, prep=r.prep, epoch=1,
                  step_in_epoch=0, best=r.best)
    given = {k: getattr(r, k) for k in checkpoint.RESUMABLE if k != left_out}
    with pytest.raises(ValueError, match="needs optimizer, schedule, scaler and rng together"):
        checkpoint.training_state(**common, **given)
    assert not set(checkpoint.RESUMABLE) & set(checkpoint.training_state(**common))  # none of them: best.pt


# ---- every field checked ----

MISSING = object()


def at(*keys, value=MISSING):
    """A damage: the entry at ``keys`` (a path into the checkpoint) set to ``value``, or removed."""
    def damage(s):
        for key in keys[:-1]:
            s = s[key]
        if value is MISSING:
            del s[keys[-1]]
        else:
            s[keys[-1]] = value
    return damage


DAMAGES = {  # id: (the field the message must name, the damage)
    "format-2": ("format", at("format", value=2)),
    "format-missing": ("format", at("format")),
    "config-missing": ("config", at("config")),
    "config-list": ("config", at("config", value=[])),
    "config-lr-negative": ("config", at("config", "lr", value=-1.0)),
    "config-lr-string": ("config", at("config", "lr", value="fast")),
    "config-unknown-setting": ("config", at("config", "speed", value=1)),
    "config-variant-unknown": ("config", at("config", "variant", value="vgg")),
    "variant-other": ("variant", at("variant", value="owt")),
    "model-missing": ("model", at("model")),
    "model-list": ("model", at("model", value=[])),
    "model-key-missing": ("model", at("model", "classifier.6.bias")),
    "model-wrong-shape": ("model", at("model", "classifier.6.weight", value=torch.zeros(3, 4096))),
    "model-integer-key": ("model", at("model", 1, value=torch.zeros(3))),
    "classes-missing": ("classes", at("classes")),
    "classes-empty": ("classes", at("classes", value=[])),
    "classes-not-strings": ("classes", at("classes", value=[0, 1])),
    "classes-one-more": ("model", lambda s: s.update(classes=["blue", "green", "red"],  # fc8 has 2 outputs
                                                     names=["blue", "green", "red"])),
    "names-missing": ("names", at("names")),
    "names-one-short": ("names", at("names", value=["blue"])),
    "preprocessing-missing": ("preprocessing", at("preprocessing")),
    "preprocessing-list": ("preprocessing", at("preprocessing", value=[])),
    "crop-zero": ("preprocessing", at("preprocessing", "crop", value=0)),
    "crop-too-big": ("preprocessing", at("preprocessing", "crop", value=300)),
    "crop-bool": ("preprocessing", at("preprocessing", "crop", value=True)),
    "crop-of-owt": ("preprocessing", at("preprocessing", "crop", value=224)),
    "normalization-unknown": ("preprocessing", at("preprocessing", "normalization", value="zca")),
    "normalization-not-the-configs": ("preprocessing", at("preprocessing", "normalization", value="imagenet")),
    "mean-missing": ("preprocessing", at("preprocessing", "mean")),
    "mean-shape": ("preprocessing", at("preprocessing", "mean", value=torch.zeros(5))),
    "mean-integers": ("preprocessing", at("preprocessing", "mean", value=torch.zeros(256, 256, 3, dtype=torch.long))),
    "mean-nan": ("preprocessing", at("preprocessing", "mean",
                                     value=torch.zeros(256, 256, 3).index_fill_(0, torch.tensor([7]), float("nan")))),
    "mean-per-channel": ("preprocessing", at("preprocessing", "mean", value=torch.zeros(3))),  # mean-image run
    "std-shape": ("preprocessing", at("preprocessing", "std", value=torch.ones(4))),
    "std-with-mean-image": ("preprocessing", at("preprocessing", "std", value=torch.ones(3))),
    "pca-eigvals-shape": ("preprocessing", at("preprocessing", "pca_eigvals", value=torch.ones(2))),
    "pca-eigvals-inf": ("preprocessing", at("preprocessing", "pca_eigvals", value=torch.full((3,), float("inf")))),
    "pca-eigvecs-missing": ("preprocessing", at("preprocessing", "pca_eigvecs")),
    "pca-dropped": ("preprocessing", at("preprocessing", "pca_eigvals", value=None)),  # the config asks for it
    "pca-convention-unknown": ("preprocessing", at("preprocessing", "pca_convention", value="sqrt")),
    "pca-convention-not-the-configs": ("preprocessing", at("preprocessing", "pca_convention", value="cuda-convnet")),
    "epoch-missing": ("epoch", at("epoch")),
    "epoch-negative": ("epoch", at("epoch", value=-1)),
    "epoch-float": ("epoch", at("epoch", value=1.0)),
    "epoch-bool": ("epoch", at("epoch", value=True)),
    "epoch-string": ("epoch", at("epoch", value="1")),
    "step_in_epoch-missing": ("step_in_epoch", at("step_in_epoch")),
    "step_in_epoch-negative": ("step_in_epoch", at("step_in_epoch", value=-3)),
    "step_in_epoch-float": ("step_in_epoch", at("step_in_epoch", value=0.5)),
    "step_in_epoch-bool": ("step_in_epoch", at("step_in_epoch", value=False)),
    "best-missing": ("best", at("best")),
    "best-list": ("best", at("best", value=[0.5, 1])),
    "best-top1-string": ("best", at("best", "top1", value="high")),
    "best-top1-nan": ("best", at("best", "top1", value=float("nan"))),
    "best-epoch-float": ("best", at("best", "epoch", value=1.5)),
    "best-epoch-missing": ("best", at("best", "epoch")),
    "optimizer-missing": ("optimizer", at("optimizer")),
    "optimizer-list": ("optimizer", at("optimizer", value=[])),
    "optimizer-state-list": ("optimizer", at("optimizer", "state", value=[])),
    "optimizer-no-param-groups": ("optimizer", at("optimizer", "param_groups", value=[])),
    "optimizer-params-short": ("optimizer", at("optimizer", "param_groups", 0, "params", value=[0, 1])),
    "optimizer-params-in-one-group": ("optimizer", lambda s: s["optimizer"].update(  # the run decays weights only
        param_groups=[{**s["optimizer"]["param_groups"][0], "params": list(range(16))}])),
    # Loaded as they were, these ended the resume in the fused SGD step: a segmentation fault, a TypeError.
    "momentum-shape": ("optimizer", at("optimizer", "state",
                                       value={i: {"momentum_buffer": torch.zeros(1)} for i in range(16)})),
    "momentum-for-one-parameter": ("optimizer", lambda s: s["optimizer"].update(state=momentum(s, only=[0]))),
    "momentum-of-another-parameter": ("optimizer", lambda s: s["optimizer"].update(  # 0: conv1's weight, 8: its bias
        state={**momentum(s), 0: momentum(s)[8]})),
    "momentum-integers": ("optimizer", lambda s: s["optimizer"].update(
        state={**momentum(s), 8: {"momentum_buffer": torch.zeros(96, dtype=torch.long)}})),
    "momentum-nan": ("optimizer", lambda s: s["optimizer"].update(
        state={**momentum(s), 8: {"momentum_buffer": torch.full((96,), float("nan"))}})),
    "momentum-key-out-of-range": ("optimizer", lambda s: s["optimizer"].update(state={**momentum(s), 16: {}})),
    "momentum-key-string": ("optimizer", lambda s: s["optimizer"].update(state={**momentum(s), "0": {}})),
    "momentum-other-entry": ("optimizer", lambda s: s["optimizer"].update(
        state={**momentum(s), 2: {"momentum_buffer": momentum(s)[2]["momentum_buffer"], "step": 3}})),
    # The one group setting a resume keeps (step.set_lr scales the next momentum by it): NaN spread everywhere.
    "optimizer-lr-nan": ("optimizer", at("optimizer", "param_groups", 0, "lr", value=float("nan"))),
    "optimizer-lr-negative": ("optimizer", at("optimizer", "param_groups", 1, "lr", value=-0.01)),
    "optimizer-lr-string": ("optimizer", at("optimizer", "param_groups", 0, "lr", value="0.01")),
    "optimizer-lr-missing": ("optimizer", at("optimizer", "param_groups", 1, "lr")),
    "schedule-missing": ("schedule", at("schedule")),
    "schedule-list": ("schedule", at("schedule", value=[])),
    "schedule-empty": ("schedule", at("schedule", value={})),
    "schedule-drops-string": ("schedule", at("schedule", "drops", value="0")),
    "scaler-missing": ("scaler", at("scaler")),
    "scaler-list": ("scaler", at("scaler", value=[])),
    "scaler-without-scale": ("scaler", at("scaler", value={"growth_factor": 2.0})),
    "rng-missing": ("rng", at("rng")),
    "rng-empty": ("rng", at("rng", value=[])),
    "rng-dict": ("rng", at("rng", value={"torch": torch.zeros(5056, dtype=torch.uint8)})),
    "rng-state-missing": ("rng", at("rng", 0, "torch")),
    "rng-state-float": ("rng", at("rng", 0, "torch", value=torch.zeros(5056))),
    "rng-cuda-state-float": ("rng", at("rng", 0, "cuda", value=torch.zeros(16))),
    # Of the right kind, but not a state torch.set_rng_state takes: the resume ended in its RuntimeError.
    "rng-state-size": ("rng", at("rng", value=[{"torch": torch.zeros(5, dtype=torch.uint8)}])),
    "rng-state-zeros": ("rng", at("rng", value=[{"torch": torch.zeros(5056, dtype=torch.uint8)}])),
    "rng-cuda-state-size": ("rng", at("rng", 0, "cuda", value=torch.zeros(5, dtype=torch.uint8))),
    "rng-cuda-state-meta": ("rng", at("rng", 0, "cuda", value=torch.empty(16, dtype=torch.uint8, device="meta"))),
    "data-list": ("data", at("data", value=[8, "abc"])),
    "data-images-negative": ("data", at("data", value={"images": -1, "fingerprint": "abc"})),
    "data-fingerprint-number": ("data", at("data", value={"images": 8, "fingerprint": 7})),
    "data-extra-key": ("data", at("data", value={"images": 8, "fingerprint": "abc", "more": 1})),
}


def momentum(s, only=None):
    """Stand-in momentum for the parameters ``only`` (all by default), numbered as the run's optimizer
    numbers them: its two groups, weights then biases."""
    params = [v for v in s["model"].values() if v.dim() > 1] + [v for v in s["model"].values() if v.dim() <= 1]
    return {i: {"momentum_buffer": torch.zeros(()).expand(p.shape)} for i, p in enumerate(params)
            if only is None or i in only}


def test_the_undamaged_stand_in_is_resumable(state, tmp_path):
    # So that every refusal below is the damage's doing; with momentum (after a step) or without (before one).
    checkpoint.save(tmp_path / "last.pt", state)
    assert checkpoint.read_resumable(tmp_path / "last.pt").epoch == 1
    checkpoint.save(tmp_path / "last.pt", {**state, "optimizer": {**state["optimizer"], "state": momentum(state)}})
    assert len(checkpoint.read_resumable(tmp_path / "last.pt").optimizer["state"]) == 16
    # Fine-tuning with conv1-5 frozen: momentum for fc6-8 alone (weights 5-7, biases 13-15), the others take no step.
    frozen = {**state, "config": {**state["config"], "freeze": "features"},
              "optimizer": {**state["optimizer"], "state": momentum(state, only=[5, 6, 7, 13, 14, 15])}}
    checkpoint.save(tmp_path / "last.pt", frozen)
    assert len(checkpoint.read_resumable(tmp_path / "last.pt").optimizer["state"]) == 6
    # Saved on a GPU: CUDA's random state too (its seed and offset), which a CPU reads as well.
    on_gpu = {**state, "rng": [{**state["rng"][0], "cuda": torch.arange(16, dtype=torch.uint8)}]}
    checkpoint.save(tmp_path / "last.pt", on_gpu)
    assert torch.equal(checkpoint.read_resumable(tmp_path / "last.pt").rng[0]["cuda"], on_gpu["rng"][0]["cuda"])


def test_an_epochs_tally_resumes_with_or_without_the_later_skipped_count(state, tmp_path):
    # A mid-epoch last.pt carries the epoch's tally (so_far); "skipped" came later, so a checkpoint of an
    # earlier version has none and counts 0, while an unknown key is damage.
    from alexnet.train import _Tally
    earlier = {"loss": 6.0, "images": 8.0, "seconds": 3.0, "step_seconds": 2.0, "data_seconds": 0.5}
    for so_far, skipped in ((earlier, 0.0), ({**earlier, "skipped": 2.0}, 2.0)):
        path = tmp_path / "last.pt"
        checkpoint.save(path, {**state, "so_far": so_far})
        carried = checkpoint.read_resumable(path).so_far
        assert carried == so_far
        tally = _Tally.carried(carried, main=True)
        assert (tally.loss, tally.images, tally.skipped, tally.step) == (6.0, 8.0, skipped, 2.0)
        assert _Tally.carried(carried, main=False).skipped == 0.0   # rank 0 alone carries the sums
    checkpoint.save(path, {**state, "so_far": {**earlier, "bogus": 1.0}})
    with pytest.raises(UserError) as e:
        checkpoint.read_resumable(path)
    one_line_naming(e.value, path, "so_far")


@pytest.mark.parametrize("field,damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_field_is_one_line_naming_the_file_and_the_field(state, tmp_path, field, damage):
    damaged = copy.deepcopy(state)
    damage(damaged)
    path = tmp_path / "last.pt"
    checkpoint.save(path, damaged)
    with pytest.raises(UserError) as e:
        checkpoint.read_resumable(path)
    one_line_naming(e.value, path, field)


# Each of these once passed the checks and stopped `--resume` with a traceback from deep in the set-up, or
# (momentum-shape) a segmentation fault in its first step: one epoch more, so that it would take one.
@pytest.mark.parametrize("name", ["schedule-empty", "rng-state-float", "model-key-missing", "momentum-shape"])
def test_resuming_from_a_damaged_last_pt_exits_2_with_one_line(state, tmp_path, name):
    field, damage = DAMAGES[name]
    damaged = copy.deepcopy(state)
    damage(damaged)
    last = tmp_path / "run" / "last.pt"
    checkpoint.save(last, damaged)
    before = last.read_bytes()
    # In this process, refused before any training; momentum-shape in a process of its own, where a segmentation
    # fault (what it once was) is a failed test and not the end of pytest's.
    r = (run_cli if name == "momentum-shape" else run_main)("train", "--out", last.parent, "--resume", "--epochs", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    one_line_naming(r.stderr.strip(), last, field)
    assert last.read_bytes() == before  # left as it was, for a look


# ---- files that are not checkpoints at all ----
# (A bare state_dict and a torch.save'd object that would run code are refused in test_weights.py.)

def test_a_plain_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "run" / "last.pt"
    evil.parent.mkdir()
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # os.system("touch ...") when unpickled
    with pytest.raises(UserError) as e:
        checkpoint.read_resumable(evil)
    assert "would run code when loaded; refusing" in str(e.value)
    assert len(str(e.value).splitlines()) == 1 and str(evil) in str(e.value)
    assert not marker.exists()


def test_a_truncated_or_empty_file_is_not_a_readable_checkpoint(state, tmp_path):
    whole = tmp_path / "whole.pt"
    checkpoint.save(whole, state)
    data = whole.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}.pt"
        cut.write_bytes(data[:size])
        with pytest.raises(UserError) as e:
            checkpoint.read_resumable(cut)
        assert "not a readable checkpoint" in str(e.value), (size, str(e.value))
        assert len(str(e.value).splitlines()) == 1 and str(cut) in str(e.value)
    assert os.path.getsize(whole) == len(data)


def test_flipped_bits_in_the_weights_are_found_by_the_zips_checksums(run, tmp_path):
    # torch.load itself would read other weights and give other answers, without a word.
    data = bytearray((run / "best.pt").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"is damaged: its part data/\d+ fails its checksum") as e:
        load_model(damaged)
    assert len(str(e.value).splitlines()) == 1 and str(damaged) in str(e.value)
    assert load_model(run / "best.pt").classes == ["blue", "red"]   # the intact file loads


@pytest.mark.parametrize("flag,method,said", [(1, 0, "marked as encrypted"),      # flag bit 0: encrypted
                                               (0, 99, "stored in a way zip readers do not know")])  # 99: AES
def test_a_zip_part_encrypted_or_stored_by_an_unknown_method_is_one_line(state, tmp_path, flag, method, said):
    # zipfile's check of the parts raised its RuntimeError or NotImplementedError from predict and --weights.
    whole = tmp_path / "whole.pt"
    checkpoint.save(whole, state)
    data = bytearray(whole.read_bytes())
    entry = data.find(b"PK\x01\x02")   # the first part's entry in the zip's directory
    data[entry + 8] |= flag
    data[entry + 10:entry + 12] = method.to_bytes(2, "little")
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(bytes(data))
    for read in (load_model, checkpoint.read_resumable):
        with pytest.raises(UserError, match=f"not a readable checkpoint .*{said}") as e:
            read(damaged)
        assert len(str(e.value).splitlines()) == 1 and str(damaged) in str(e.value)


def test_a_run_folder_or_another_file_of_the_run_given_as_the_checkpoint_says_what_to_give(state, tmp_path):
    checkpoint.save(tmp_path / "run" / "best.pt", state)
    checkpoint.save(tmp_path / "run" / "last.pt", state)
    (tmp_path / "run" / "config.yaml").write_text("epochs: 3\n")
    # Not named: the run's second name of an earlier last.pt, and its statistics cache (no network in it).
    (tmp_path / "run" / ".last-previous.pt").hardlink_to(tmp_path / "run" / "last.pt")
    (tmp_path / "run" / "data_stats.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"run is a folder; give a checkpoint file \(\S*run/best.pt, \S*run/last.pt\)$"):
        checkpoint.read(tmp_path / "run")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "alexnet.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"export is a folder; give a checkpoint file \(\S*/alexnet.safetensors\)"):
        checkpoint.read(tmp_path / "export")
    with pytest.raises(UserError, match=r"config.yaml is not a readable checkpoint \(neither a file torch.save"):
        checkpoint.read(tmp_path / "run" / "config.yaml")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "run" / "best.pt").read_bytes()[:4096])
    with pytest.raises(UserError, match=r"cut.pt is not a readable checkpoint \(cut short or damaged"):
        checkpoint.read(tmp_path / "cut.pt")
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))   # a zip too, and not torch's (miniz: "[enforce fail ...")
    with pytest.raises(UserError, match=r"weights.npz is not a readable checkpoint \(neither a file torch.save"):
        checkpoint.read(tmp_path / "weights.npz")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")])
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(failure, tmp_path, monkeypatch):
    from collections import namedtuple

    from alexnet import checkpoint as ckpt_module
    from alexnet import files

    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")

    def full_disk(state, f):
        with open(f, "wb") as out:
            out.write(b"part of a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(1, 1, 2_000_000))
    with pytest.raises(UserError, match=r"could not write .*last.pt: no space left on the device \(it needs about "
                                        r"4 MB, 2 MB are free\); the previous file is unchanged"):
        ckpt_module.save(path, {"model": {"w": torch.zeros(1_000_000)}})
    assert path.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_write_refused_for_another_reason_names_the_file_and_the_reason_not_a_temporary_file(tmp_path,
                                                                                               monkeypatch):
    # A read-only folder said "([Errno 30] Read-only file system: '.../.last.pt.host-1-x.tmp')"; on /proc,
    # whose free space is 0, "no space left on the device".
    import errno
    from collections import namedtuple

    from alexnet import checkpoint as ckpt_module
    from alexnet import files

    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")

    def read_only(state, f):
        raise OSError(errno.EROFS, "Read-only file system", str(f))

    monkeypatch.setattr(torch, "save", read_only)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(1, 1, 0))
    with pytest.raises(UserError) as e:
        ckpt_module.save(path, {"model": {"w": torch.zeros(1_000_000)}})
    assert str(e.value) == f"could not write {path} (Read-only file system); the previous file is unchanged"
    assert path.read_bytes() == b"the previous checkpoint"


@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, float("nan")], [float("inf"), -float("inf")], [3e38, 3e38],
                                    [3e38, float("inf")], [], [-3e38, -3e38, float("nan")]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite_is_the_element_wise_check(values, dtype):
    t = torch.tensor(values, dtype=torch.float32).to(dtype)   # 3e38 overflows to inf in float16
    assert checkpoint.all_finite(t) == bool(torch.isfinite(t).all())


def test_a_run_in_a_folder_named_in_another_encoding_is_read_and_written(run, tmp_path):
    # Latin-1 bytes in a folder's name reach Python as surrogates, which torch's mapped load and safetensors
    # (both take names as UTF-8) refused: every file written there was written and never read again.
    moved = tmp_path / os.fsdecode(b"caf\xe9 run")
    moved.mkdir()
    for f in run.iterdir():
        if f.is_file():
            os.link(f, moved / f.name)   # the same files under the other name, without copying 700 MB
    torch.testing.assert_close(checkpoint.read_resumable(moved / "last.pt").model,
                               checkpoint.read_resumable(run / "last.pt").model)
    expected = load_model(run / "best.pt").model.state_dict()
    torch.testing.assert_close(load_model(moved / "best.pt").model.state_dict(), expected)
    save_weights(load_model(moved / "best.pt"), moved / "weights.safetensors")   # what export writes
    torch.testing.assert_close(load_model(moved / "weights.safetensors").model.state_dict(), expected)
    DataStats.load(run / STATS_FILE).save(moved / "again.safetensors")
    torch.testing.assert_close(DataStats.load(moved / "again.safetensors").mean_image,
                               DataStats.load(run / STATS_FILE).mean_image)


def save_4mb_in_a_child(out, before=None, command=None):
    """checkpoint.save of 4 MB in a fresh process (a limit of its own), its one line or its traceback."""
    code = ("import sys, torch\nfrom alexnet import checkpoint\nfrom alexnet.errors import UserError\n"
            f"try:\n    checkpoint.save({str(out)!r}, {{'model': {{'w': torch.ones(1_000_000)}}}})\n"
            "except UserError as e:\n    print(e)\n")
    args = [sys.executable, "-c", code] if command is None else command(code)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, preexec_fn=before)


def test_a_file_size_limit_under_the_checkpoint_is_said_as_that_limit(tmp_path):
    # ulimit -f 1024: torch's writer says only "[enforce fail at inline_container.cc] unexpected pos".
    (tmp_path / "last.pt").write_bytes(b"the previous checkpoint")
    r = save_4mb_in_a_child(tmp_path / "last.pt", lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20)))
    assert r.stdout.strip() == (f"could not write {tmp_path / 'last.pt'}: it needs about 4 MB, over this process's "
                                f"file size limit of 1.0 MB (ulimit -f); raise it; the previous file is unchanged"), r
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_says_the_space_free_once_the_failed_write_is_gone(tmp_path):
    # A 3 MB file system: the failed write's temporary file, removed but still held open by torch's writer
    # while its error was handled, made the space free read 0 MB.
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace to mount a small file system in (needs unshare and the right to use it)")
    small = tmp_path / "small"
    small.mkdir()
    r = save_4mb_in_a_child(small / "last.pt", command=lambda code: [
        "unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=3m tmpfs {small} && exec "$0" -c "$1"',
        sys.executable, code])
    assert re.fullmatch(r"could not write .*last.pt: no space left on the device \(it needs about 4 MB, 3 MB are "
                        r"free\)", r.stdout.strip()), r
