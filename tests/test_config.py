"""Presets, flag overrides and validation of the training configuration."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from alexnet.config import KINDS, PRESETS, TrainConfig, dump_yaml, from_dict, load_yaml, preset_values, resolve
from alexnet.errors import UserError

PRESET_FILES = Path(__file__).resolve().parents[1] / "src" / "alexnet" / "presets"


def preset_file(name: str) -> dict:
    """A preset as its file reads, without alexnet.config in between."""
    return yaml.safe_load((PRESET_FILES / f"{name}.yaml").read_text()) or {}


def test_paper_preset_is_the_papers_recipe():
    c = resolve("paper", {})
    assert (c.variant, c.lrn, c.init, c.dropout) == ("paper", "paper", "paper", 0.5)
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (90, 128, 0.01, 0.9, 0.0005)
    assert (c.schedule, c.lr_gamma, c.max_lr_drops) == ("plateau", 0.1, 3)
    assert (c.normalization, c.pca_noise, c.flip, c.crop) == ("mean-image", "paper", True, 227)


def test_torchvision_preset_is_torchvisions_recipe():
    c = resolve("torchvision", {})
    assert (c.variant, c.init, c.crop, c.normalization, c.pca_noise) == ("owt", "pytorch", 224, "imagenet", "none")
    assert (c.batch_size, c.lr, c.weight_decay, c.schedule, c.step_epochs) == (256, 0.01, 1e-4, "step", 30)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_validates(preset):
    written = preset_file(preset)
    assert written and set(preset_values(preset)) == set(written)
    c = resolve(preset, {})
    assert {k: getattr(c, k) for k in written} == written


def test_paper_preset_only_writes_out_the_defaults():
    # paper.yaml says every value in it equals TrainConfig's default: the defaults are the paper's recipe.
    defaults = TrainConfig()
    assert {k: getattr(defaults, k) for k in preset_file("paper")} == preset_file("paper")


def test_every_number_setting_has_a_kind():
    # The kind is what validate() and the command line's flag types both check; a number without one
    # would take any value.
    for f in dataclasses.fields(TrainConfig):
        if f.type.replace(" | None", "") in ("int", "float"):
            assert f.metadata["kind"] in KINDS, f.name


def test_flags_override_the_preset_and_none_means_not_given():
    c = resolve("demo", {"epochs": 6, "lr": None, "out": "x"})
    assert c.epochs == 6 and c.lr == preset_values("demo")["lr"] and c.out == "x" and c.preset == "demo"
    demo = preset_values("demo")
    assert (demo["warmup_epochs"], demo["epochs"]) == (1, 3) and c.warmup_epochs == pytest.approx(2)
    assert resolve("demo", {"epochs": 1}).warmup_epochs == pytest.approx(1 / 3)      # a shorter run: its share
    assert resolve("demo", {}).warmup_epochs == demo["warmup_epochs"]
    assert resolve("demo", {"epochs": 1, "warmup_epochs": 0.5}).warmup_epochs == 0.5   # given: kept
    assert resolve("paper", {"epochs": 5}).warmup_epochs == 0                        # none to scale


def test_round_trip_through_yaml_text():
    import yaml

    c = resolve("torchvision", {"seed": 7})
    assert from_dict(yaml.safe_load(dump_yaml(c)), "test") == c


@pytest.mark.parametrize("values,message", [
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"lr": -1.0}, "lr must be positive"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"schedule": "linear"}, "schedule must be one of plateau, step, cosine"),
    ({"warmup_epochs": 100.0}, "warmup_epochs"),
    ({"dropout_start": 0}, "dropout_start must be at least 1"),
    ({"dropout_start": 91}, "dropout would never switch on"),
    ({"epochs": "ten"}, "epochs must be an integer, got .ten."),
    ({"flip": "yes"}, "flip must be true or false"),
    ({"learning_rate": 0.1}, "unknown setting learning_rate"),
    ({"towers": 0}, "towers must be at least 1"),
    ({"workers": -1}, "workers must not be negative"),
    ({"weight_decay": -1e-4}, "weight_decay must not be negative"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number, got nan"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite number, got inf"),
    ({"warmup_epochs": float("nan")}, "warmup_epochs must be a finite number"),
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"label_smoothing": float("-inf")}, "label_smoothing must be a finite number"),
])
def test_bad_settings_are_user_errors(values, message):
    with pytest.raises(UserError, match=message):
        resolve("paper", values)


def test_bad_settings_in_a_recorded_config_are_user_errors_too():
    values = dict(resolve("paper", {}).to_dict(), weight_decay=float("nan"))
    with pytest.raises(UserError, match="weight_decay must be a finite number"):
        from_dict(values, "config.yaml")


def test_a_recorded_owt_run_from_weights_refuses_two_towers():
    # A resume may change --towers and never meets finetune.adopt: the recorded network (here owt, a
    # fine-tuning run's) decides, in one line, not a ValueError on every rank when the towers are cut.
    saved = resolve("torchvision", {"out": "runs/ft", "data": "/d"}).to_dict() | {"weights": "/w/owt.safetensors"}
    assert from_dict(saved, "resumed run").towers == 1
    for weights in ("/w/owt.safetensors", None):
        with pytest.raises(UserError, match="--towers 2 splits the paper network's two towers; the owt variant has"):
            from_dict(saved | {"towers": 2, "weights": weights}, "resumed run")
    assert from_dict(resolve("paper", {"weights": "/w/paper.pt"}).to_dict() | {"towers": 2}, "resumed run").towers == 2


def test_a_hand_edited_config_with_numbers_for_keys_or_too_large_a_number_is_one_line(tmp_path):
    values = resolve("paper", {}).to_dict()
    with pytest.raises(UserError, match=r"config\.yaml: unknown settings 2, foo$"):
        from_dict(values | {"foo": 1, 2: "b"}, "config.yaml")
    with pytest.raises(UserError, match=r"config\.yaml: lr must be a finite number, got an integer of 1329 bits"):
        from_dict(values | {"lr": 10**400}, "config.yaml")
    # YAML reads an integer of more digits than Python converts (4300) with a ValueError of its own
    path = tmp_path / "config.yaml"
    path.write_text("lr: 1" + "0" * 5000 + "\n")
    with pytest.raises(UserError, match=r"cannot read .*config\.yaml: Exceeds the limit \(4300 digits\) for integer "
                                        r"string conversion: value has 5001 digits$"):
        load_yaml(path)


@pytest.mark.parametrize("preset,settings,refused", [
    ("demo", {"lars_eta": 5.0}, "--lars-eta applies to --optimizer lars; this run's optimizer is sgd"),
    ("demo", {"patience": 2}, "--patience applies to --schedule plateau; this run's schedule is cosine"),
    ("demo", {"step_epochs": 7}, "--step-epochs applies to --schedule step"),
    ("paper", {"schedule": "cosine", "lr_gamma": 0.5}, "--lr-gamma applies to --schedule plateau or step"),
    ("demo", {"dropout_start": 3}, "--dropout-start is the epoch dropout switches on at, and this run's dropout is 0"),
    ("torchvision", {"lrn": "caffe"}, "--lrn caffe does nothing with --variant owt"),
    # A preset's own values for another schedule or optimizer were not asked for: they pass.
    ("paper", {"schedule": "cosine"}, None),
    ("large-batch", {"optimizer": "sgd"}, None),
    ("torchvision", {"schedule": "step", "step_epochs": 7, "lr_gamma": 0.5}, None),
    # Settings that act only where another setting's value lets them.
    ("paper", {"max_lr_drops": 0, "lr_gamma": 0.5}, "--lr-gamma is what each division multiplies the learning "
                                                    "rate by, and this run's plateau schedule has max_lr_drops 0"),
    ("paper", {"max_lr_drops": 0, "patience": 2}, "--patience is how long the plateau schedule waits before it "
                                                  "divides, and this run's max_lr_drops is 0"),
    ("paper", {"weight_decay": 0.0, "bias_decay": True}, "--bias-decay says whether weight decay reaches the "
                                                         "biases, and this run's weight_decay is 0"),
    ("demo", {"weight_decay": 0.0, "bias_decay": False}, "--no-bias-decay says whether weight decay reaches"),
    # They act where a division happens, or where there is weight decay.
    ("paper", {"max_lr_drops": 1, "lr_gamma": 0.5, "patience": 2}, None),
    ("paper", {"weight_decay": 1e-4, "bias_decay": True}, None),
    # The preset's own values are not asked for: demo's bias_decay with no weight decay passes.
    ("demo", {"weight_decay": 0.0}, None),
    ("paper", {"max_lr_drops": 0}, None),
])
def test_resolve_refuses_settings_that_would_do_nothing_as_the_command_does(preset, settings, refused):
    # The Python API's settings are judged by the same rule as the flags (one place: config.py).
    if refused is None:
        assert resolve(preset, settings).preset == preset
    else:
        with pytest.raises(UserError) as e:
            resolve(preset, settings)
        assert str(e.value).startswith(refused) and "\n" not in str(e.value), e.value
        # On a resume the run's own values decide (a change of them is refused as one): its first settings
        # given again continue it.
        assert resolve(preset, settings, resuming=True).preset == preset


def test_resolve_for_a_resume_leaves_such_settings_to_the_run():
    # The run's checkpoint holds its schedule, and a resume refuses a change of it: --patience may be for a
    # plateau run whatever the preset, and a run's first settings given again (a requeued job's, one an earlier
    # version accepted) continue it.
    assert resolve("demo", {"patience": 2}, resuming=True).patience == 2
    assert resolve("demo", {"patience": 2, "schedule": "step"}, resuming=True).patience == 2
    assert resolve("paper", {"max_lr_drops": 0, "patience": 2}, resuming=True).patience == 2
    with pytest.raises(UserError, match="--patience is how long the plateau schedule waits"):
        resolve("paper", {"max_lr_drops": 0, "patience": 2})


def test_a_whole_recorded_configuration_given_back_to_resolve_asks_for_nothing_it_would_not_read():
    # config.yaml's settings passed back in (a run's recorded configuration, changed in one place): its
    # lars_eta, patience and lr_gamma are the preset's own values for an optimizer and schedules it does not
    # use, not settings asked for.
    recorded = resolve("paper", {}).to_dict()
    again = resolve("paper", recorded | {"schedule": "cosine", "normalization": "channel"})
    assert again.schedule == "cosine" and again.lars_eta == recorded["lars_eta"]
    with pytest.raises(UserError, match="--lars-eta applies to --optimizer lars"):
        resolve("paper", recorded | {"lars_eta": recorded["lars_eta"] * 2})
