"""Fine-tuning (`alexnet train --weights FILE`): what a run takes from trained weights, and what it refuses."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.config import resolve
from alexnet.data.transforms import Normalize
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.train import train
from alexnet.weights import LoadedModel, import_torchvision, load_model, save_weights
from conftest import run_main, write_image_folders

# A learning rate under float32's resolution of every weight: a step leaves the weights as they were (a zero
# bias moves by 1e-30 x its gradient), so the trained network shows what the run started from.
STILL = dict(lr=1e-30, momentum=0.0, weight_decay=0.0, dropout=0.0)
FAST = dict(workers=0, precision="fp32", epochs=1, batch_size=6, log_every=1)   # one step an epoch
MEAN, STD = (10.0, 20.0, 30.0), (40.0, 50.0, 60.0)


def three_colours(root):
    colours = {"blue": [(20, 30, 200)] * 2, "green": [(30, 190, 40)] * 2, "red": [(210, 20, 30)] * 2}
    return write_image_folders(root, colours, size=(48, 40))


def paper_weights(path, classes, lrn="caffe", small="upscale", names=None):
    """A random paper network with LRN ``lrn``, channel normalisation MEAN/STD and small images ``small``,
    as `alexnet export` writes it."""
    torch.manual_seed(1)
    model = AlexNet("paper", num_classes=len(classes), lrn=lrn, init="kaiming").eval()
    for p in model.parameters():   # no weight or bias at exactly zero: each one shows where it came from
        p.data.add_(0.01)
    norm = Normalize(torch.tensor(MEAN), torch.tensor(STD))
    save_weights(LoadedModel(model, classes, names or classes, 227, "channel", norm, small=small), path)
    return model.state_dict()


def owt_weights(tmp_path):
    """torchvision's layout, 1000 ImageNet classes and preprocessing, as `alexnet import-torchvision` writes it."""
    from torchvision.models import alexnet

    torch.manual_seed(2)
    torch.save(alexnet().state_dict(), tmp_path / "alexnet-owt-random.pth")
    path = tmp_path / "owt.safetensors"
    save_weights(import_torchvision(tmp_path / "alexnet-owt-random.pth"), path)
    return path


@pytest.fixture(scope="module")
def owt_file(tmp_path_factory):
    """owt_weights' file, made once for the tests that only read it."""
    return owt_weights(tmp_path_factory.mktemp("owt"))


def last(run):
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)


def assert_started_from(state, source, fc8):
    for k, v in source.items():
        if not k.startswith(fc8):
            torch.testing.assert_close(state[k], v, rtol=0, atol=1e-20, msg=k)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A paper network on 3 classes, 2 of them the data's (LRN caffe, channel normalisation, small images
    padded), fine-tuned onto the data's 3 at a still learning rate: (its data, the weights file, their
    state_dict, the run folder, what the run printed)."""
    root = tmp_path_factory.mktemp("finetuned")
    data = three_colours(root / "data")
    source = paper_weights(root / "w.safetensors", ["red", "violet", "blue"], small="pad",
                           names=["a red", "a violet", "a blue"])
    given = {"weights": str(root / "w.safetensors")}
    with _stderr() as err:
        train(resolve("paper", dict(data=str(data), out=str(root / "run"), **given, **STILL, **FAST)), given=given)
    return data, root / "w.safetensors", source, root / "run", err.getvalue()


@contextlib.contextmanager
def _stderr():
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        yield err


def test_a_run_takes_every_layer_and_the_normalisation_of_its_weights_and_fc8_rows_by_class(finetuned):
    _, path, source, run, said = finetuned
    ckpt = last(run)
    assert_started_from(ckpt["model"], source, "classifier.6.")
    # Matched by folder name, whatever their order: the data's blue and red (outputs 0 and 2) take the rows
    # the file gave them; green, unknown to it, is drawn by the run's init (the paper's N(0, 0.01)), not at
    # the file's kaiming scale.
    for name in ("weight", "bias"):
        ours, theirs = ckpt["model"][f"classifier.6.{name}"], source[f"classifier.6.{name}"]
        assert ours.shape[0] == 3
        torch.testing.assert_close(ours[[0, 2]], theirs[[2, 0]], rtol=0, atol=1e-20)
    assert 0.0095 < ckpt["model"]["classifier.6.weight"][1].std().item() < 0.0105
    prep = ckpt["preprocessing"]
    assert prep["normalization"] == "channel"
    assert prep["mean"].tolist() == list(MEAN) and prep["std"].tolist() == list(STD)
    assert prep["pca_eigvals"] is not None   # PCA noise is still the new images'
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert [recorded[k] for k in ("weights", "lrn", "normalization", "small")] == [str(path), "caffe", "channel", "pad"]
    assert load_model(run / "best.pt").small == "pad"
    # The data has no classes.txt: the names the file gives its folders name them (green: its folder name).
    assert load_model(run / "best.pt").names == ["a blue", "green", "a red"]
    assert f"starting from {path}: the paper network (LRN caffe), its channel input normalisation, small images " \
           f"padded; fc8: the weights' rows for the 2 classes they know (blue, red), 1 new" in said


def test_a_checkpoint_on_the_same_classes_starts_a_run_with_its_fc8_too(finetuned, tmp_path):
    data, _, _, run, _ = finetuned
    given = {"weights": str(run / "best.pt")}
    with _stderr() as err:
        train(resolve("paper", dict(data=str(data), out=str(tmp_path / "again"), zero_init_fc8=True, **given,
                                    **STILL, **FAST)), given=given)
    assert_started_from(last(tmp_path / "again")["model"], last(run)["model"], "no layer is new")
    assert "fc8 kept (its 3 classes are the data's)" in err.getvalue()
    code = run_main("train", "--out", tmp_path / "again", "--resume", "--epochs", "2")   # never reads the file
    assert code.returncode == 0, code.stderr[-2000:]
    assert load_model(tmp_path / "again" / "last.pt").names == ["a blue", "green", "a red"]
    # From Python, with the config that started it: the network the weights gave the run (LRN caffe, their
    # normalisation, padded small images) is not a change asked for, where every field was compared.
    train(resolve("paper", dict(data=str(data), out=str(tmp_path / "again"), zero_init_fc8=True, **given, **STILL,
                                **FAST) | {"epochs": 3}), resume=True)
    assert torch.load(tmp_path / "again" / "last.pt", weights_only=True)["epoch"] == 3


def test_a_resume_refuses_other_weights(finetuned, tmp_path):
    data, _, _, run, _ = finetuned
    other = tmp_path / "other.safetensors"
    paper_weights(other, ["cat", "dog"])
    given = {"weights": str(other), "epochs": 2}
    with pytest.raises(UserError, match="cannot change --weights when resuming"):
        train(resolve("paper", dict(data=str(data), out=str(run), **given)), resume=True, given=given)


def test_torchvision_weights_fine_tune_under_the_demo_preset_with_their_own_input(owt_file, tmp_path):
    """ImageNet weights onto a user's 3 classes: the owt network and ImageNet's mean and std, whatever the
    preset says; a resume does not need the file again."""
    data = three_colours(tmp_path / "data")
    path = Path(shutil.copy(owt_file, tmp_path))   # deleted below
    source = load_model(path).model.state_dict()
    run = tmp_path / "run"
    code = run_main("train", "--preset", "demo", "--data", data, "--out", run, "--weights", path, "--lr", "1e-30",
                    "--weight-decay", "0", "--momentum", "0", "--pca-noise", "none", "--workers", "0",
                    "--precision", "fp32", "--epochs", "1", "--batch-size", "6")
    assert code.returncode == 0, code.stderr[-2000:]
    ckpt = last(run)
    assert ckpt["variant"] == "owt" and ckpt["preprocessing"]["normalization"] == "imagenet"
    assert "fc8 new, for the data's 3 classes (the weights' fc8 answers 1000 other classes)" in code.stderr
    assert_started_from(ckpt["model"], source, "classifier.6.")
    assert ckpt["model"]["classifier.6.weight"].abs().max() < 1e-20   # the demo preset's zero fc8: it is new
    assert not (run / "data_stats.safetensors").exists()    # nothing of the data's was needed

    path.unlink()
    code = run_main("train", "--out", run, "--resume", "--epochs", "2", "--workers", "0")
    assert code.returncode == 0, code.stderr[-2000:]
    assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("flags, message", [
    (["--variant", "paper"], "holds the owt network, trained on imagenet input; fine-tuning keeps them, so "
                             "leave out --variant paper"),
    (["--small", "pad", "--variant", "owt"], "leave out --small pad"),
    (["--normalization", "mean-image"], "leave out --normalization mean-image"),
    (["--lrn", "caffe"], "leave out --lrn caffe"),
])
def test_flags_that_ask_for_another_network_or_input_are_refused_in_one_line(owt_file, tmp_path, flags, message):
    data = three_colours(tmp_path / "data")
    code = run_main("train", "--data", data, "--out", tmp_path / "run", "--weights", owt_file, *flags, "--workers", "0")
    assert code.returncode == 2 and message in code.stderr and len(code.stderr.strip().splitlines()) == 1, code.stderr
    assert not (tmp_path / "run").exists()


def test_the_python_api_refuses_what_differs_from_the_preset_and_records_an_absolute_path(finetuned, tmp_path,
                                                                                         monkeypatch):
    from alexnet.train import _start_from   # what train() does first with --weights, before any data is read

    path = finetuned[1]
    monkeypatch.chdir(path.parent)
    settings = dict(out=str(tmp_path / "run"), weights=path.name)
    with pytest.raises(UserError, match="leave out --normalization imagenet"):   # the demo preset's is channel
        _start_from(resolve("demo", settings | {"normalization": "imagenet"}), {}, None)
    with pytest.raises(UserError, match="leave out --lrn paper"):   # the paper preset's is paper: the file's caffe
        _start_from(resolve("paper", settings | {"lrn": "paper", "small": "pad"}), {"lrn": "paper"}, None)
    adopted, _ = _start_from(resolve("demo", settings | {"lrn": "caffe"}), {}, None)   # what the file holds
    assert (adopted.weights, adopted.lrn, adopted.small) == (str(path), "caffe", "pad")


def test_two_towers_take_the_network_of_the_weights_not_of_the_preset(finetuned, owt_file, tmp_path):
    from alexnet.train import _start_from

    settings = dict(out=str(tmp_path / "run"), towers=2)
    adopted, _ = _start_from(resolve("torchvision", settings | {"weights": str(finetuned[1])}), {}, None)
    assert (adopted.variant, adopted.towers) == ("paper", 2)   # the preset's owt network is not what is trained
    with pytest.raises(UserError, match="--towers 2 splits the paper network's two towers; the owt variant has none"):
        _start_from(resolve("paper", settings | {"weights": str(owt_file)}), {}, None)


def test_weights_that_cannot_be_used_are_refused_before_anything_is_written(tmp_path):
    data = three_colours(tmp_path / "data")
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    for path, message in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "junk.pt", "junk.pt"),
                          (" ", "--weights is empty; give a file")):
        code = run_main("train", "--data", data, "--out", tmp_path / "run", "--weights", path, "--workers", "0")
        assert code.returncode == 2 and message in code.stderr and "Traceback" not in code.stderr, code.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("freeze, learning", [("features", "classifier."), ("all-but-fc8", "classifier.6.")])
def test_frozen_layers_stay_as_the_weights_have_them_and_the_others_learn(finetuned, tmp_path, freeze, learning):
    data, path, source, _, _ = finetuned
    run = tmp_path / "run"
    given = {"weights": str(path), "freeze": freeze}
    settings = dict(data=str(data), out=str(run), lr=0.01, momentum=0.9, weight_decay=5e-4, dropout=0.0, **FAST)
    train(resolve("paper", settings | given), given=given)
    if freeze == "features":   # a resumed run keeps them frozen too (requires_grad is not in a checkpoint)
        code = run_main("train", "--out", run, "--resume", "--epochs", "2", "--freeze", freeze, "--workers", "0")
        assert code.returncode == 0, code.stderr[-2000:]
    model = last(run)["model"]
    for k, v in source.items():
        if not k.startswith(learning):
            assert torch.equal(model[k], v), k   # no step, no weight decay
        elif not k.startswith("classifier.6."):
            assert not torch.equal(model[k], v), k
    # fc8 learns in both: its rows for blue and red started as the file's rows for them
    assert not torch.equal(model["classifier.6.weight"][[0, 2]], source["classifier.6.weight"][[2, 0]])


def test_freezing_needs_weights_and_one_network_per_process(tmp_path):
    with pytest.raises(UserError, match="--freeze features keeps layers as trained weights have them; give --weights"):
        train(resolve("paper", {"freeze": "features", "out": str(tmp_path / "run")}))
    with pytest.raises(UserError, match="fine-tune with --towers 1"):
        resolve("paper", {"freeze": "all-but-fc8", "weights": "w.pt", "towers": 2})


def test_init_and_zero_init_fc8_where_nothing_is_drawn_are_refused(tmp_path, monkeypatch):
    # Weights that answer every class of the data give every layer, fc8 too: --init and --zero-init-fc8 drew
    # nothing, and config.yaml recorded them as if they had.
    import alexnet.train as train_module
    from alexnet import finetune

    data = three_colours(tmp_path / "data")
    paper_weights(tmp_path / "w.safetensors", ["blue", "green", "red"])
    monkeypatch.setattr(train_module, "compute_stats", lambda *a, **k: pytest.fail("got past the checks"))
    r = run_main("train", "--preset", "demo", "--epochs", 2, "--batch-size", 4, "--workers", 0, "--data", data,
                 "--out", tmp_path / "run", "--weights", tmp_path / "w.safetensors", "--init", "paper")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"alexnet train: error: --init paper would do nothing: --weights "
                               f"{tmp_path / 'w.safetensors'} answers every class of the data, so fc8 is the "
                               f"file's, as every other layer is, and nothing is initialised; leave --init paper out")
    assert not (tmp_path / "run").exists()
    # From Python: a setting other than the preset's is asked for.
    with pytest.raises(UserError, match="^--init pytorch would do nothing: --weights"):
        train(resolve("demo", dict(data=str(data), out=str(tmp_path / "run"), weights=str(tmp_path / "w.safetensors"),
                                   init="pytorch", **FAST)))

    def check(theirs, **given):
        loaded = LoadedModel(None, theirs, theirs, 227, "channel", Normalize(torch.tensor(MEAN), torch.tensor(STD)))
        config = resolve("demo", dict(weights="/w.safetensors") | given)
        finetune.check_fc8_start(config, loaded, ["blue", "green", "red"], given)

    with pytest.raises(UserError, match="^--zero-init-fc8 would do nothing"):   # all known, in another order
        check(["red", "green", "blue", "cat"], zero_init_fc8=True)
    # --no-zero-init-fc8 asks for what a kept fc8 is (and LARS runs had to give it before): accepted.
    check(["red", "green", "blue", "cat"], zero_init_fc8=False)
    check(["red", "green", "blue", "cat"], zero_init_fc8=False, optimizer="lars")
    # Green is new: its row is drawn by --init, unless it starts at zero (the demo preset's fc8).
    with pytest.raises(UserError, match=r"^--init paper would do nothing: every layer but fc8 comes from --weights "
                                        r"/w\.safetensors, and fc8's 1 new row starts at zero \(zero_init_fc8\); "
                                        r"give --no-zero-init-fc8 too, or leave --init paper out$"):
        check(["red", "violet", "blue"], init="paper")
    check(["red", "violet", "blue"], init="paper", zero_init_fc8=False)
    check(["red", "violet", "blue"], zero_init_fc8=True)
    check(["red", "violet", "blue"], zero_init_fc8=False)


def test_lars_from_weights_that_keep_fc8_is_not_refused_for_an_fc8_at_zero(tmp_path, monkeypatch):
    # fc8 comes from the file (its classes are the data's): the demo preset's zero_init_fc8 zeroes nothing, so
    # LARS has every layer's norm. It was refused, "fc8 started at zero ... add --no-zero-init-fc8", and that
    # flag then did nothing.
    import alexnet.train as train_module
    from alexnet import finetune

    class Reached(Exception):
        pass

    def reached(*a, **k):
        raise Reached

    data = three_colours(tmp_path / "data")
    paper_weights(tmp_path / "w.safetensors", ["blue", "green", "red"])
    monkeypatch.setattr(train_module, "_preprocessing", reached)   # past every check: the run would start
    with pytest.raises(Reached):
        run_main("train", "--preset", "demo", "--epochs", 2, "--batch-size", 4, "--workers", 0, "--data", data,
                 "--out", tmp_path / "run", "--weights", tmp_path / "w.safetensors", "--optimizer", "lars")
    # Where fc8 has rows new to the file, they start at zero: refused, as without --weights.
    loaded = LoadedModel(None, ["red", "violet", "blue"], ["red", "violet", "blue"], 227, "channel",
                         Normalize(torch.tensor(MEAN), torch.tensor(STD)))
    config = resolve("demo", dict(weights=str(tmp_path / "w.safetensors"), optimizer="lars"))
    with pytest.raises(UserError, match=r"^--optimizer lars scales each layer's step by its weights' norm: fc8's 1 "
                                        r"new row started at zero would take the whole learning rate at the first "
                                        r"step; add --no-zero-init-fc8$"):
        finetune.check_fc8_start(config, loaded, ["blue", "green", "red"], {"optimizer": "lars"})
    config = resolve("demo", dict(weights=str(tmp_path / "w.safetensors"), optimizer="lars", zero_init_fc8=False))
    finetune.check_fc8_start(config, loaded, ["blue", "green", "red"], {"optimizer": "lars", "zero_init_fc8": False})
