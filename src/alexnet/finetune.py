"""Fine-tuning: a run that starts from trained weights (`alexnet train --weights FILE`).

The file is anything ``weights.load_model`` reads: a training checkpoint (RUN/best.pt), or a safetensors
file from `alexnet export` or `alexnet import-torchvision`. It brings its network, the network's LRN
convention and how its inputs were made (their normalisation: its own mean image, or mean and std; and
small images upscaled or padded): the features respond to inputs as they saw them, so the run feeds them
that way, as torchvision's and timm's pretrained weights are used with the normalisation they were trained
with. The data's statistics are still computed where PCA colour noise needs them: that noise is drawn from
the new images' colours.

Every layer starts from the file's weights; fc8 too where its classes are the data's, in the same order.
Otherwise fc8 starts afresh for the data's classes, drawn by the run's ``init`` (zero with
``zero_init_fc8``), as a classifier head is replaced in every fine-tuning recipe, except the rows of the
classes the file also answers (matched by folder name), which keep the file's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from alexnet.config import TrainConfig, check_towers_fit, preset_values
from alexnet.errors import UserError
from alexnet.model import AlexNet, fc8_prefix
from alexnet.weights import LoadedModel, load_model


def open_weights(config: TrainConfig) -> LoadedModel:
    """The network in ``config.weights``: the one loader every command uses, so a file that evaluate and
    predict accept (or refuse, in one line) is accepted (or refused) here alike."""
    return load_model(config.weights)


# What a run takes from the weights it starts from: the network, and how its inputs were made.
ADOPTED = ("variant", "lrn", "normalization", "small")


def adopt(config: TrainConfig, loaded: LoadedModel, given: dict[str, Any]) -> TrainConfig:
    """``config`` with the network, LRN, normalisation and small-image handling of the weights it starts
    from. A setting in ``given`` that asks for another is refused: it would be ignored, or the weights
    would see inputs unlike those they were trained on."""
    # owt has no LRN; "paper" is what every owt run's config records.
    theirs = {"variant": loaded.variant, "lrn": loaded.lrn if loaded.variant == "paper" else "paper",
              "normalization": loaded.normalization, "small": loaded.small}
    clashes = [k for k in ADOPTED if k in given and given[k] != theirs[k]]
    if clashes:
        flags = ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in clashes)
        small = f", small images {'padded' if loaded.small == 'pad' else 'upscaled'}" if (
            loaded.small == "pad" or "small" in clashes) else ""
        raise UserError(f"--weights {config.weights} holds the {_describe(loaded)}, trained on "
                        f"{loaded.normalization} input{small}; fine-tuning keeps them, so leave out {flags}")
    adopted = dataclasses.replace(config, **theirs).validate()
    check_towers_fit(adopted.towers, adopted.variant)
    return adopted


def asked_for(config: TrainConfig) -> dict[str, Any]:
    """The adopted settings ``config`` holds other than its preset's: what a Python caller, who names no
    flags, asked for."""
    preset = preset_values(config.preset)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k: getattr(config, k) for k in ADOPTED if getattr(config, k) != preset.get(k, defaults[k])}


def keeps_fc8(loaded: LoadedModel, classes: list[str]) -> bool:
    """Whether the weights' fc8 answers the data's classes (the same folder names in the same order)."""
    return list(loaded.classes) == list(classes)


def known_rows(loaded: LoadedModel, classes: list[str]) -> list[tuple[int, int]]:
    """(the data's output, the weights' output) for each class of the data the weights also answer, by folder
    name: ImageNet's weights onto a folder of some of its WordNet ids keep what they know of those."""
    theirs = {name: i for i, name in enumerate(loaded.classes)}
    return [(i, theirs[name]) for i, name in enumerate(classes) if name in theirs]


def check_fc8_start(config: TrainConfig, loaded: LoadedModel, classes: list[str], given: dict[str, Any]) -> None:
    """What a run from ``loaded`` initialises is fc8's rows for the classes the weights do not answer, drawn by
    --init unless --zero-init-fc8 zeroes them: the settings in ``given`` that would do nothing are refused, and
    so is LARS on rows at zero (validate leaves that to here, where whether fc8 is new is known)."""
    new = len(classes) - len(known_rows(loaded, classes))
    if config.optimizer == "lars" and config.zero_init_fc8 and new:
        raise UserError(f"--optimizer lars scales each layer's step by its weights' norm: fc8's {new} new "
                        f"{'row' if new == 1 else 'rows'} started at zero would take the whole learning rate at the "
                        f"first step; add --no-zero-init-fc8")
    if not new:   # fc8 is the file's too: nothing is drawn (--no-zero-init-fc8 asks for what it gets, and
        # was what a run with LARS had to give before)
        unread = [k for k in ("init", "zero_init_fc8") if k in given and given[k] is not False]
    else:   # the new rows are drawn by --init, unless they start at zero
        unread = ["init"] if "init" in given and config.zero_init_fc8 else []
    if not unread:
        return
    flags = " and ".join(f"--{'no-' * (given[k] is False)}{k.replace('_', '-')}" + (f" {given[k]}" * (k == "init"))
                         for k in unread)
    if not new:
        raise UserError(f"{flags} would do nothing: --weights {config.weights} answers every class of the data, so "
                        f"fc8 is the file's, as every other layer is, and nothing is initialised; leave {flags} out")
    raise UserError(f"{flags} would do nothing: every layer but fc8 comes from --weights {config.weights}, and "
                    f"fc8's {new} new {'row starts' if new == 1 else 'rows start'} at zero (zero_init_fc8); give "
                    f"--no-zero-init-fc8 too, or leave {flags} out")


def readable_names(classes: list[str], names: list[str], known_classes: list[str], known_names: list[str]
                   ) -> list[str]:
    """The data's readable name of each class where it gives one (classes.txt), else the name the weights
    (or, on a resume, the run's checkpoint) give that folder: ImageNet's weights onto a folder of WordNet ids
    name their classes as ImageNet does, in predict, evaluate and export too."""
    theirs = dict(zip(known_classes, known_names))
    return [name if name != cls else theirs.get(cls, cls) for cls, name in zip(classes, names)]


def load_into(model: AlexNet, loaded: LoadedModel, classes: list[str]) -> None:
    """Copy the weights into ``model`` (built for the run, for ``classes``): every layer; of fc8, the whole
    layer where the classes are the weights', else the rows of the classes they share (the others keep
    the run's init)."""
    state = loaded.model.state_dict()
    fc8 = fc8_prefix(model)
    keep = keeps_fc8(loaded, classes)
    if not keep:
        state = {k: v for k, v in state.items() if not k.startswith(fc8)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = set() if keep else {k for k in model.state_dict() if k.startswith(fc8)}
    if set(missing) != fresh or unexpected:   # load_model built the same variant's network: cannot happen
        raise RuntimeError(f"weights do not fit the run's network: missing {sorted(set(missing) - fresh)}, "
                           f"unexpected {sorted(unexpected)}")
    if not keep:
        ours, theirs = model.classifier[-1], loaded.model.classifier[-1]
        with torch.no_grad():
            for i, j in known_rows(loaded, classes):
                ours.weight[i] = theirs.weight[j]
                ours.bias[i] = theirs.bias[j]


FROZEN = {"none": "", "features": "; conv1-5 frozen, fc6-8 learn", "all-but-fc8": "; only fc8 learns"}


def summary(path: str, loaded: LoadedModel, classes: list[str], frozen: str = "none") -> str:
    """One line on what the run starts from: what it took from the file is not in config.yaml's words."""
    known = known_rows(loaded, classes)
    if keeps_fc8(loaded, classes):
        head = f"fc8 kept (its {len(classes)} classes are the data's)"
    elif len(known) == len(classes):
        head = f"fc8: the weights' rows for the data's {len(classes)} classes ({_names(classes, known)})"
    elif known:
        head = (f"fc8: the weights' rows for the {len(known)} class{'es' * (len(known) != 1)} they know "
                f"({_names(classes, known)}), "
                f"{len(classes) - len(known)} new")
    else:
        head = (f"fc8 new, for the data's {len(classes)} classes (the weights' fc8 answers {len(loaded.classes)} "
                f"other classes)")
    small = ", small images padded" if loaded.small == "pad" else ""
    return (f"alexnet train: starting from {path}: the {_describe(loaded)}, its "
            f"{loaded.normalization} input normalisation{small}; {head}{FROZEN[frozen]}")


def _names(classes: list[str], rows: list[tuple[int, int]], at_most: int = 3) -> str:
    names = [classes[i] for i, _ in rows]
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _describe(loaded: LoadedModel) -> str:
    return f"paper network (LRN {loaded.lrn})" if loaded.variant == "paper" else f"{loaded.variant} network"
