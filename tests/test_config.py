"""Presets, flag overrides and validation of the training configuration."""

import pytest

from alexnet.config import PRESETS, TrainConfig, dump_yaml, from_dict, preset_values, resolve
from alexnet.errors import UserError


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
    assert set(preset_values(preset)) <= set(TrainConfig.__dataclass_fields__)
    resolve(preset, {})


def test_flags_override_the_preset_and_none_means_not_given():
    c = resolve("demo", {"epochs": 3, "lr": None, "out": "x"})
    assert c.epochs == 3 and c.lr == preset_values("demo")["lr"] and c.out == "x" and c.preset == "demo"


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
    ({"epochs": "ten"}, "epochs must be a int"),
    ({"learning_rate": 0.1}, "unknown setting learning_rate"),
])
def test_bad_settings_are_user_errors(values, message):
    with pytest.raises(UserError, match=message):
        resolve("paper", values)
