"""Files of weights: one loader for checkpoints and safetensors, meaning that travels, refusals that are one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alexnet.data.transforms import Normalize
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.weights import is_weights_file, load_model, save_weights
from conftest import run_main

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(path, variant="paper", classes=("cat", "dog"), names=None, normalization="channel",
                    net=None, seed=0, changes=None):
    """A checkpoint laid out as train.py writes best.pt, without training; ``changes`` override entries."""
    torch.manual_seed(seed)
    model = net or AlexNet(variant, num_classes=len(classes), init="pytorch")
    if normalization == "mean-image":
        mean, std = torch.rand(256, 256, 3) * 255, None
    else:
        norm = Normalize.create("imagenet")
        mean, std = norm.mean, norm.std
    state = {"format": 1, "model": model.state_dict(), "config": {"variant": variant, "lrn": "paper"},
             "variant": variant, "classes": list(classes), "names": list(names or classes),
             "preprocessing": {"crop": model.input_size, "normalization": normalization, "mean": mean, "std": std,
                               "pca_eigvals": None, "pca_eigvecs": None, "pca_convention": None},
             "epoch": 3, "step_in_epoch": 0, "best": {"top1": 0.75, "epoch": 3}} | (changes or {})
    torch.save(state, path)
    return Path(path)


@pytest.fixture(scope="module")
def paper_pt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("w") / "paper.pt", normalization="mean-image",
                           names=("a cat", "a dog"))


def test_safetensors_round_trip_keeps_weights_and_meaning(paper_pt, tmp_path):
    a = load_model(paper_pt)
    save_weights(a, tmp_path / "w.safetensors")
    b = load_model(tmp_path / "w.safetensors")
    assert (b.variant, b.lrn, b.classes, b.names, b.crop, b.normalization) == \
           ("paper", "paper", ["cat", "dog"], ["a cat", "a dog"], 227, "mean-image")
    assert b.metrics == {"val_top1": 0.75, "epoch": 3} and b.source == str(paper_pt)
    assert torch.equal(a.norm.mean, b.norm.mean) and b.norm.std is None
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    x = torch.randn(2, 3, 227, 227)
    assert torch.equal(a.model(x), b.model(x)) and not b.model.training

    # What another tool sees: plain tensors under their usual keys, the mean under the reserved prefix,
    # and the meaning as string metadata.
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert "features.0.weight" in keys and "preprocessing.mean" in keys and "preprocessing.std" not in keys
    assert meta["variant"] == "paper" and meta["num_classes"] == "2" and meta["lrn"] == "paper"
    assert json.loads(meta["names"]) == ["a cat", "a dog"]
    assert json.loads(meta["preprocessing"])["crop"] == 227


def test_channel_normalisation_round_trips_with_its_std(tmp_path):
    pt = make_checkpoint(tmp_path / "owt.pt", variant="owt", normalization="imagenet")
    save_weights(load_model(pt), tmp_path / "owt.safetensors")
    b = load_model(tmp_path / "owt.safetensors")
    assert (b.variant, b.lrn, b.crop, b.normalization) == ("owt", None, 224, "imagenet")
    assert torch.equal(b.norm.std, Normalize.create("imagenet").std)


def test_the_kind_of_file_is_read_from_its_bytes_not_its_name(paper_pt, tmp_path):
    save_weights(load_model(paper_pt), tmp_path / "weights.pt")
    assert load_model(tmp_path / "weights.pt").classes == ["cat", "dog"]


class RunsCode:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_pickle_that_would_run_code_is_refused_with_exit_2(command, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": RunsCode(marker)}, evil)
    extra = {"evaluate": ["--data", tmp_path], "predict": [evil], "export": ["--out", tmp_path / "x.safetensors"]}
    r = run_main(command, "--checkpoint", evil, *extra[command])
    assert r.returncode == 2, r.stderr
    assert "would run code when loaded; refusing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_checkpoint_of_the_wrong_variant_is_one_line_with_exit_2(tmp_path, tiny_folders):
    data, _ = tiny_folders
    owt_state_claiming_paper = make_checkpoint(tmp_path / "mixed.pt", variant="paper",
                                               net=AlexNet("owt", num_classes=2))
    r = run_main("evaluate", "--checkpoint", owt_state_claiming_paper, "--data", data, "--workers", 0)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "do not fit the paper network with 2 classes" in r.stderr
    assert "they look like the owt network with 2 classes" in r.stderr


def test_missing_keys_and_a_wrong_class_count_are_named(tmp_path):
    model = AlexNet("owt", num_classes=2)
    state = model.state_dict()
    del state["classifier.6.bias"]
    with pytest.raises(UserError, match=r"do not fit the owt network with 2 classes \(missing classifier.6.bias\)"):
        load_model(make_checkpoint(tmp_path / "a.pt", variant="owt", net=model, changes={"model": state}))
    with pytest.raises(UserError, match=r"owt network with 3 classes .*classifier.6.weight is \(2, 4096\), "
                                        r"expected \(3, 4096\).*look like the owt network with 2 classes"):
        load_model(make_checkpoint(tmp_path / "b.pt", variant="owt", classes=("a", "b", "c"), net=model))


@pytest.mark.parametrize("change,message", [
    ({"variant": "vgg"}, "unknown variant 'vgg'"),
    ({"names": ["only one"]}, "class list is missing or malformed"),
    ({"preprocessing": {"crop": 227, "normalization": "zca", "mean": torch.zeros(3), "std": None}},
     "unknown normalization 'zca'"),
    ({"preprocessing": {"crop": 227, "normalization": "channel", "mean": torch.zeros(5), "std": None}},
     "mean must be a"),
    ({"classes": None}, "class list is missing"),
    ({"preprocessing": {"crop": 100, "normalization": "channel", "mean": torch.zeros(3), "std": torch.ones(3)}},
     r"crop 100 does not fit the paper network \(expected 227\)"),
    ({"preprocessing": {"crop": 1, "normalization": "channel", "mean": torch.zeros(3), "std": torch.ones(3)}},
     r"crop 1 does not fit the paper network"),
    ({"preprocessing": {"crop": 227, "normalization": "channel", "mean": torch.tensor([1.0, float("nan"), 2.0]),
                        "std": torch.ones(3)}}, "mean holds NaN"),
    ({"preprocessing": {"crop": 227, "normalization": "channel", "mean": torch.zeros(3),
                        "std": torch.tensor([1.0, 0.0, 1.0])}}, r"std must be positive and finite, got \[1.0, 0.0, 1.0\]"),
    # A file from elsewhere whose pieces disagree: std taken as 1 trained at a loss of 1.5 million.
    ({"preprocessing": {"crop": 227, "normalization": "channel", "mean": torch.zeros(3), "std": None}},
     r"channel normalisation takes a mean and a std per channel; the file has a \(3,\) mean and no std"),
    ({"preprocessing": {"crop": 227, "normalization": "mean-image", "mean": torch.zeros(3), "std": torch.ones(3)}},
     r"mean-image normalisation takes a mean image and no std; the file has a \(3,\) mean and a std"),
    ({"classes": ["cat", "cat"]}, "the class list names 'cat' for more than one output"),
    # Crafted fields that each ended in a traceback: unhashable, unlistable, indexed by "crop".
    ({"config": {"variant": "paper", "lrn": ["paper"]}}, r"unknown LRN convention \['paper'\]"),
    ({"config": {"variant": "paper", "lrn": {"paper": 1}}}, "unknown LRN convention {'paper': 1}"),
    ({"model": {1: torch.zeros(3)}}, r"the weights are not a state_dict \(a dict of tensors named by strings\)"),
    ({"preprocessing": torch.zeros(3)}, r"field 'preprocessing' is damaged \(expected a dict, found Tensor\)"),
    ({"names": torch.zeros(3)}, "class list is missing or malformed"),
])
def test_broken_meaning_is_refused_clearly(change, message, tmp_path):
    with pytest.raises(UserError, match=message) as e:
        load_model(make_checkpoint(tmp_path / "c.pt", net=AlexNet("paper", num_classes=2, init="pytorch"),
                                   changes=change))
    assert len(str(e.value).splitlines()) == 1 and str(tmp_path / "c.pt") in str(e.value)


def test_a_best_accuracy_without_its_epoch_is_not_claimed_for_the_weights(tmp_path):
    # It once ended load_model in KeyError 'epoch': without it, nothing says these are the best epoch's weights;
    # nor with an epoch or a step that is a tensor (its truth was a RuntimeError).
    path = make_checkpoint(tmp_path / "c.pt", changes={"best": {"top1": 0.5}})
    ckpt = torch.load(path, weights_only=True)
    del ckpt["epoch"]
    torch.save(ckpt, path)
    assert load_model(path).metrics == {}
    for count in ("epoch", "step_in_epoch"):
        assert load_model(make_checkpoint(tmp_path / f"{count}.pt", changes={count: torch.zeros(3)})).metrics == {}
    assert load_model(make_checkpoint(tmp_path / "d.pt")).metrics == {"val_top1": 0.75, "epoch": 3}   # with it


def test_files_that_are_not_alexnet_weights_are_refused_clearly(tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(AlexNet("owt", num_classes=2).state_dict(), bare)
    with pytest.raises(UserError, match="bare state_dict: for torchvision's weights use `alexnet import-torchvision`"):
        load_model(bare)
    torch.save(AlexNet("paper", num_classes=2).state_dict(), bare)   # not torchvision's: no import to suggest
    with pytest.raises(UserError, match=r"bare state_dict, which names no classes .* AlexNet\(variant, num_classes\)"):
        load_model(bare)
    old_format = tmp_path / "old.pt"   # torch.save's pre-1.6 format in a protocol its safe loader cannot read
    torch.save({"model": AlexNet("owt", num_classes=2).state_dict()}, old_format,
               _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(UserError, match="old format with pickle protocol 4, .*save it again with torch.save's default"):
        load_model(old_format)
    with pytest.raises(UserError, match="^https://example.com/alexnet.pt is an address: nothing is downloaded"):
        load_model("https://example.com/alexnet.pt")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="without alexnet metadata"):
        load_model(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_model(junk)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    garbled = tmp_path / "garbled.safetensors"   # safetensors' first bytes, then no JSON: no file of ours
    garbled.write_bytes((20).to_bytes(8, "little") + b"{\xff not json at all\x00\x01" + bytes(40))
    assert not is_weights_file(garbled)


@pytest.mark.parametrize("metadata", [["format", "alexnet"], "alexnet", 7])
def test_a_safetensors_header_whose_metadata_is_no_dict_is_no_file_of_ours(metadata, tmp_path):
    # A hand-made header's __metadata__ may be a list or a string: it was an AttributeError traceback from
    # import-torchvision --weights and from export --out over such a file.
    from alexnet.files import replaceable
    from alexnet.weights import import_torchvision

    header = json.dumps({"__metadata__": metadata, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    path = tmp_path / "X.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bytes(4))
    assert not is_weights_file(path)
    with pytest.raises(UserError, match="exists and is not weights this project exported"):
        replaceable(path, is_weights_file, "weights this project exported")
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        import_torchvision(path)


def test_torch_hub_loads_the_network_and_trained_weights_from_a_local_file(paper_pt):
    fresh = torch.hub.load(str(REPO), "alexnet", source="local", num_classes=3)
    assert isinstance(fresh, AlexNet) and fresh.variant == "paper" and fresh.num_classes == 3
    model = torch.hub.load(str(REPO), "alexnet", source="local", num_classes=2, weights=str(paper_pt))
    assert model.names == ["a cat", "a dog"] and model.preprocessing["crop"] == 227 and not model.training
    x = torch.randn(1, 3, 227, 227)
    assert torch.equal(model(x), load_model(paper_pt).model(x))
    with pytest.raises(UserError, match="holds the paper network with 2 classes .*not the owt network"):
        torch.hub.load(str(REPO), "alexnet", source="local", variant="owt", num_classes=2, weights=str(paper_pt))
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 2.0"):   # as AlexNet refuses it
        torch.hub.load(str(REPO), "alexnet", source="local", num_classes=2.0, weights=str(paper_pt))



def test_torch_hub_takes_the_variant_and_class_count_from_the_file(tmp_path):
    pt = make_checkpoint(tmp_path / "owt3.pt", variant="owt", classes=("ant", "bee", "cow"))
    st = tmp_path / "owt3.safetensors"
    save_weights(load_model(pt), st)
    model = torch.hub.load(str(REPO), "alexnet", source="local", weights=str(st))
    assert (model.variant, model.num_classes, model.classes) == ("owt", 3, ["ant", "bee", "cow"])
    assert not model.training and model.preprocessing["crop"] == 224
    agreeing = torch.hub.load(str(REPO), "alexnet", source="local", variant="owt", num_classes=3, weights=st,
                              lrn="paper", dropout=0.2)   # "paper": every variant's old default, as AlexNet takes it
    assert [m.p for m in agreeing.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(agreeing(x), model(x))
    with pytest.raises(UserError, match=r"holds the owt network with 3 classes, not the network with 2 classes "
                                        r"asked for; leave variant, num_classes and lrn out"):
        torch.hub.load(str(REPO), "alexnet", source="local", num_classes=2, weights=str(st))
    with pytest.raises(UserError, match="not the paper network asked for"):
        torch.hub.load(str(REPO), "alexnet", "paper", source="local", weights=str(st))
    with pytest.raises(UserError, match=r"holds the owt network, which has no LRN layers, so lrn='caffe' would do "
                                        r"nothing; leave lrn out$"):
        torch.hub.load(str(REPO), "alexnet", source="local", weights=str(st), lrn="caffe")


def test_torch_hub_refuses_an_lrn_convention_the_file_was_not_trained_with(paper_pt):
    with pytest.raises(UserError, match=r"holds the paper network with 2 classes \(LRN paper\), not the network "
                                        r"\(LRN caffe\) asked for"):
        torch.hub.load(str(REPO), "alexnet", source="local", weights=str(paper_pt), lrn="caffe")


def test_a_checkpoint_states_its_runs_init_and_dropout_and_reset_classifier_follows_the_init(tmp_path):
    config = {"variant": "owt", "lrn": "paper", "init": "kaiming", "dropout": 0.0}
    pt = make_checkpoint(tmp_path / "kaiming.pt", variant="owt", changes={"config": config})
    model = load_model(pt).model
    assert model.init == "kaiming" and "init='kaiming'" in model.extra_repr()
    assert [model.layer("drop6").p, model.layer("drop7").p] == [0.0, 0.0]
    torch.manual_seed(0)
    model.reset_classifier(3)
    fc8 = model.layer("fc8")
    # He normal: std sqrt(2 / 4096) = 0.0221; PyTorch's default (uniform within 1/64) would give 0.0090.
    assert fc8.weight.std().item() == pytest.approx((2 / 4096) ** 0.5, rel=0.05) and torch.all(fc8.bias == 0)

    # torch.hub: the recorded dropout, unless dropout= says otherwise.
    hub = torch.hub.load(str(REPO), "alexnet", source="local", weights=str(pt))
    assert hub.init == "kaiming" and [m.p for m in hub.modules() if isinstance(m, torch.nn.Dropout)] == [0.0, 0.0]
    hub = torch.hub.load(str(REPO), "alexnet", source="local", weights=str(pt), dropout=0.3)
    assert [m.p for m in hub.modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]

    # A safetensors file records neither: the network says what it always did.
    save_weights(load_model(pt), tmp_path / "kaiming.safetensors")
    exported = load_model(tmp_path / "kaiming.safetensors").model
    assert exported.init == "pytorch" and exported.layer("drop6").p == 0.5

    for bad, message in (({"init": "xavier"}, "unknown init 'xavier' in the run's config"),
                         ({"dropout": "0.5"}, "the run's config has dropout '0.5', not a number in")):
        torch.save(torch.load(pt, weights_only=True) | {"config": config | bad}, tmp_path / "bad.pt")
        with pytest.raises(UserError, match=message):
            load_model(tmp_path / "bad.pt")


def test_a_checkpoint_without_init_or_dropout_loads_as_before(paper_pt):
    model = load_model(paper_pt).model   # its config records only variant and lrn
    assert model.init == "pytorch" and model.layer("drop6").p == 0.5


@pytest.mark.parametrize("kwargs, error, message", [
    ({"pretrained": True}, TypeError, "^pretrained is not supported: nothing is downloaded; "
                                      "pass weights='path/to/file.safetensors'"),
    ({"progress": True}, TypeError, "^alexnet\\(\\) got unknown argument progress; it takes variant, num_classes"),
    ({"colour": 1, "pretrained": False}, TypeError, "unknown argument colour;"),
    ({"weights": object()}, TypeError, "weights must be the path of a local .pt or .safetensors file"),
    ({"weights": "missing.safetensors"}, UserError, "missing.safetensors does not exist"),
    ({"weights": "missing.safetensors", "init": "kaiming"}, TypeError, "init .* does not apply with weights="),
    ({"variant": "owt", "lrn": "caffe"}, ValueError, "the owt network has no LRN layers"),
])
def test_torch_hub_refuses_what_it_cannot_do_in_one_line(kwargs, error, message):
    with pytest.raises(error, match=message) as e:
        torch.hub.load(str(REPO), "alexnet", source="local", num_classes=3, **kwargs)
    assert "\n" not in str(e.value)


HUB_PROBE = """
import json, sys, warnings
import torch
if sys.argv[2] == "import-first":
    import alexnet                      # the installed package, before the hub load
with warnings.catch_warnings(record=True) as caught, torch.device("meta"):
    warnings.simplefilter("always")
    model = torch.hub.load(sys.argv[1], "alexnet", source="local", variant="owt", num_classes=3)
import alexnet
print(json.dumps({"version": alexnet.__version__, "model_file": sys.modules[type(model).__module__].__file__,
                  "warnings": [str(w.message) for w in caught if "alexnet" in str(w.message)]}))
"""


@pytest.mark.parametrize("import_first", [False, True], ids=["fresh", "installed-imported-first"])
def test_torch_hub_runs_the_code_of_the_checkout_it_loads_from(tmp_path, import_first):
    # Another checkout (hubconf.py and src/ only) whose package tells itself apart by its version; this
    # repository's stays installed. Each case runs in a fresh interpreter: a package imports once per process.
    other = tmp_path / "other"
    shutil.copytree(REPO / "src" / "alexnet", other / "src" / "alexnet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "hubconf.py", other / "hubconf.py")
    init = other / "src" / "alexnet" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "other-'))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", HUB_PROBE, str(other), "import-first" if import_first else "fresh"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    import alexnet

    if not import_first:
        assert got["version"] == "other-" + alexnet.__version__ and got["warnings"] == []
        assert Path(got["model_file"]) == other / "src" / "alexnet" / "model.py"
    else:   # the process keeps the package it holds, and says so
        assert got["version"] == alexnet.__version__
        assert Path(got["model_file"]) == REPO / "src" / "alexnet" / "model.py"
        (message,) = got["warnings"]
        assert message.startswith(f"this process already imported alexnet from {REPO / 'src' / 'alexnet'}; "
                                  f"torch.hub runs that code, not {other / 'src' / 'alexnet'}")


def test_torch_hub_lets_pretrained_false_through():
    # torchvision-style code that says pretrained=False asks for the fresh network a plain call gives.
    model = torch.hub.load(str(REPO), "alexnet", source="local", variant="owt", num_classes=3, pretrained=False)
    assert (model.variant, model.num_classes) == ("owt", 3)


def test_non_finite_weights_are_refused_in_one_line(tmp_path):
    net = AlexNet("paper", num_classes=2, init="pytorch")
    state = net.state_dict()
    state["classifier.6.weight"][0, 0] = float("nan")
    with pytest.raises(UserError, match=r"NaN or infinite values \(classifier.6.weight\)"):
        load_model(make_checkpoint(tmp_path / "nan.pt", net=net, changes={"model": state}))


def test_a_plain_pickle_is_refused_in_one_line(tmp_path):
    import pickle

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": {"w": [1.0]}}, protocol=4))
    r = run_main("predict", "--checkpoint", raw, raw)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not a readable checkpoint" in r.stderr


def test_weights_of_the_wrong_kind_are_named_with_their_dtype_or_layout(tmp_path):
    net = AlexNet("paper", num_classes=2, init="pytorch")
    for name, value, message in [
            ("ints", torch.zeros(2, 4096, dtype=torch.int64), r"classifier.6.weight is \(2, 4096\) of torch.int64"),
            ("sparse", torch.zeros(2, 4096).to_sparse(), "classifier.6.weight is a torch.sparse_coo tensor"),
            ("meta", torch.empty(2, 4096, device="meta"), "classifier.6.weight is a meta tensor")]:
        state = net.state_dict()
        state["classifier.6.weight"] = value
        with pytest.raises(UserError, match=message):
            load_model(make_checkpoint(tmp_path / f"{name}.pt", net=net, changes={"model": state}))


def test_metrics_of_the_wrong_kind_and_an_owt_crop_too_small_are_refused(paper_pt, tmp_path):
    save_weights(load_model(paper_pt), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for metrics in ("[1, 2]", '"abc"'):
        save_file(tensors, tmp_path / "m.safetensors", metadata=meta | {"metrics": metrics})
        with pytest.raises(UserError, match="metrics must map names to values"):
            load_model(tmp_path / "m.safetensors")
    owt = make_checkpoint(tmp_path / "owt.pt", variant="owt", net=AlexNet("owt", num_classes=2, init="pytorch"),
                          changes={"preprocessing": {"crop": 62, "normalization": "channel", "mean": torch.zeros(3),
                                                     "std": torch.ones(3)}})
    with pytest.raises(UserError, match="crop 62 does not fit the owt network .expected a size from 63 to 256"):
        load_model(owt)


def test_import_torchvision_says_this_projects_own_networks_need_no_import(paper_pt, tmp_path):
    save_weights(load_model(paper_pt), tmp_path / "w.safetensors")
    for path, what in ((paper_pt, "this project's training checkpoint"),
                       (tmp_path / "w.safetensors", "this project's weights file")):
        r = run_main("import-torchvision", "--weights", path, "--out", tmp_path / "z.safetensors")
        said = f"alexnet import-torchvision: error: {path} is {what}"
        assert r.returncode == 2 and r.stderr.startswith(said) and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "give it to --checkpoint of predict, evaluate or export directly" in r.stderr
        assert not (tmp_path / "z.safetensors").exists()


def test_imported_weights_claim_the_published_file_only_where_its_hash_is_the_published_ones(tmp_path, monkeypatch):
    import hashlib

    import alexnet.weights
    from alexnet.weights import import_torchvision

    path = tmp_path / "alexnet-owt-7be5be79.pth"   # named as the published file is, but random weights
    torch.save(AlexNet("owt", num_classes=1000).state_dict(), path)
    loaded = import_torchvision(path)
    assert loaded.source == ("torchvision's AlexNet layout from alexnet-owt-7be5be79.pth (not the published "
                             "IMAGENET1K_V1 file)") and loaded.metrics == {}
    save_weights(loaded, tmp_path / "w.safetensors")   # what the file written says
    assert load_model(tmp_path / "w.safetensors").source == loaded.source
    # The published file (its hash as torchvision names it): its name and accuracy.
    monkeypatch.setattr(alexnet.weights, "TORCHVISION_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    loaded = import_torchvision(path)
    assert loaded.source == "torchvision AlexNet_Weights.IMAGENET1K_V1 (alexnet-owt-7be5be79.pth)"
    assert loaded.metrics["imagenet1k_val_top1"] == pytest.approx(0.56522)
