"""Training configuration: typed, validated, built from a preset YAML plus command-line overrides.

Presets (src/alexnet/presets/*.yaml) hold only what differs from the defaults below, which are the
paper's numbers. The resolved configuration is what a run records in RUN/config.yaml and its
checkpoints, so a run can be resumed or reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alexnet.choices import INITS, INPUT_SIZE, LRN_NAMES, NORMALIZATIONS, SMALL, VARIANTS, device_setting
from alexnet.errors import UserError

PRESETS = ("paper", "demo", "torchvision", "large-batch")
SCHEDULES = ("plateau", "step", "cosine")
OPTIMIZERS = ("sgd", "lars")
UPDATE_RULES = ("paper", "pytorch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRAIN_PRECISIONS = (*PRECISIONS, "fp64")   # fp64: a float64 reference run (precision.py)
# Inference adds int8 (quantize.py): post-training quantization, CPU only; training has no int8.
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
PCA_CHOICES = ("paper", "cuda-convnet", "none")
# Layers a fine-tuning run keeps as --weights has them (model.freeze).
FREEZE_CHOICES = ("none", "features", "all-but-fc8")


# What a number setting may be, named once per field (its `kind`): validate() checks it, and the command
# line picks the flag type that refuses anything else before a run starts. Every number must be finite.
KINDS = {
    "count": (lambda v: v >= 1, "must be at least 1"),
    "non-negative": (lambda v: v >= 0, "must not be negative"),
    "positive": (lambda v: v > 0, "must be positive"),
    "fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, kind: str | None = None) -> Any:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "kind": kind})


@dataclass
class TrainConfig:
    # what to train on, and where the run lives
    data: str | None = _opt(None, "dataset folder with train/<class>/* and val/<class>/* (default: the bundled demo set)")
    out: str = _opt("runs/alexnet", "run folder: config.yaml, metrics.jsonl, last.pt, best.pt")
    preset: str = _opt("paper", "settings to start from", PRESETS)
    # the network (docs/paper-numbers.md section 1)
    weights: str | None = _opt(None, "start from trained weights (a checkpoint, or a safetensors file from export or "
                                     "import-torchvision): the network, its LRN and input preprocessing are "
                                     "theirs; fc8 too where its classes are the data's, else a new fc8 that "
                                     "keeps the rows of the classes both name (fine-tuning)")
    freeze: str = _opt("none", "with --weights: layers kept as the weights have them; features: conv1-5, so "
                               "fc6-8 learn (and backward stops at fc6); all-but-fc8: only fc8 learns, a linear "
                               "classifier on fc7's features", FREEZE_CHOICES)
    variant: str = _opt("paper", "paper: the 2012 network; owt: torchvision's", VARIANTS)
    lrn: str = _opt("paper", "LRN convention (paper variant)", LRN_NAMES)
    init: str = _opt("paper", "paper: N(0, 0.01) weights, biases of 1 in conv2/4/5 and fc6/7; kaiming: He normal; pytorch: layer defaults", INITS)
    zero_init_fc8: bool = _opt(False, "start fc8 at zero, so every class starts equally likely")
    dropout: float = _opt(0.5, "dropout probability on fc6 and fc7", kind="fraction")
    dropout_start: int = _opt(1, "the epoch dropout switches on at; none before it (late dropout)", kind="count")
    # the optimiser (paper section 5)
    epochs: int = _opt(90, "epochs to train; may be raised on --resume to train a finished run further (a "
                           "cosine schedule is then spread over the new count)", kind="count")
    batch_size: int = _opt(128, "global batch size, split across processes", kind="count")
    lr: float = _opt(0.01, "peak learning rate", kind="positive")
    momentum: float = _opt(0.9, "SGD momentum", kind="fraction")
    weight_decay: float = _opt(5e-4, "SGD weight decay", kind="non-negative")
    bias_decay: bool = _opt(False, "sgd: weight decay on the biases too (torchvision's recipe); the paper's code "
                                   "(cuda-convnet) and Caffe's AlexNet decay the weights only")
    update_rule: str = _opt("paper", "sgd: paper: v = momentum v - lr (weight_decay w + g), w = w + v (section 5: "
                                     "the velocity keeps the learning rate of the steps it sums, so after a division "
                                     "the step shrinks over the next few dozen steps); pytorch: torch.optim.SGD's "
                                     "v = momentum v + g + weight_decay w, w = w - lr v (a division acts at once)",
                            UPDATE_RULES)
    optimizer: str = _opt("sgd", "sgd: momentum SGD (paper); lars: layer-wise trust ratio for large batches "
                                 "(You et al. 2017; biases left out)", OPTIMIZERS)
    lars_eta: float = _opt(1e-3, "lars: trust coefficient eta (a layer moves by about eta x lr of its norm)",
                           kind="positive")
    accumulate: int = _opt(1, "take each process's share of the batch in this many parts, gradients added up: "
                              "the same step in less memory (a large --batch-size on few devices)", kind="count")
    schedule: str = _opt("plateau", "plateau: divide when val top-1 stops improving (paper); step; cosine", SCHEDULES)
    patience: int = _opt(5, "plateau: epochs without improvement before dividing the learning rate", kind="count")
    max_lr_drops: int = _opt(3, "plateau: at most this many divisions (the paper made 3)", kind="non-negative")
    step_epochs: int = _opt(30, "step: divide the learning rate every this many epochs", kind="count")
    lr_gamma: float = _opt(0.1, "the factor each division multiplies the learning rate by", kind="positive")
    warmup_epochs: float = _opt(0.0, "linear learning-rate warm-up from zero, in epochs", kind="non-negative")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy", kind="fraction")
    # the data (paper section 4.1)
    normalization: str = _opt("mean-image", "mean-image: minus the per-pixel training mean (paper); channel; imagenet",
                              NORMALIZATIONS)
    pca_noise: str = _opt("paper", "PCA colour noise: paper (alpha lambda), cuda-convnet (alpha sqrt(lambda)), none",
                          PCA_CHOICES)
    flip: bool = _opt(True, "random horizontal reflections")
    small: str = _opt("upscale", "images whose shorter side is under 256: upscale (paper), or pad: placed unscaled "
                                 "at the centre of a 256x256 canvas of ImageNet's mean colour; a prepared store "
                                 "made with the other is refused", SMALL)
    stats_images: int = _opt(0, "images used for the mean image and PCA (0: all) where a statistics pass runs; a "
                                "prepared store brings prepare's, over all its images", kind="non-negative")
    # the machine
    device: str = _opt("auto", "auto: CUDA when present, else CPU; cpu; cuda: this process's GPU (its local rank's "
                               "under torchrun); cuda:N: GPU N (one process)")
    precision: str = _opt("auto", "auto: bf16 autocast where the hardware has it, else fp32; fp64: float64 weights "
                                  "and arithmetic, slow, a reference free of float32 rounding", TRAIN_PRECISIONS)
    channels_last: bool = _opt(True, "channels_last memory format")
    compile: bool = _opt(False, "torch.compile the model")
    towers: int = _opt(1, "2: the paper network's towers on two processes, as on the paper's two GPUs "
                          "(torchrun with a multiple of 2 processes: towers x data-parallel replicas)", kind="count")
    workers: int | None = _opt(None, "data-loading processes per training process (default: where they decode "
                                       "images for a GPU, the process's share of the cores less one, 2 to 16; 2 "
                                       "where images are decoded on a CPU or stored pixels feed a GPU; 0 for "
                                       "prepared data on a CPU)", kind="non-negative")
    seed: int = _opt(0, "random seed (each process adds its rank)", kind="non-negative")
    # bookkeeping
    save_every: int = _opt(0, "also write last.pt every this many steps (0: at the end of each epoch only)",
                           kind="non-negative")
    save_every_minutes: float = _opt(0.0, "also write last.pt when this many minutes have passed since the last "
                                          "save (0: never by the clock); a preemption costs at most this much",
                                     kind="non-negative")
    log_every: int = _opt(10, "steps between progress-bar updates; without a terminal, between progress lines",
                          kind="count")
    tensorboard: bool = _opt(False, "also log to RUN/tensorboard (needs the tensorboard package)")

    def validate(self) -> TrainConfig:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"]:
                _choice(f.name, value, f.metadata["choices"])
            _check_number(f.name, value, f.metadata["kind"])
        device_setting(self.device)
        if self.seed >= 2**63:   # each process seeds torch with seed + rank, a signed 64-bit number
            raise UserError(f"seed must be below 2^63, got {self.seed}")
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than the run ({self.epochs} epochs)")
        if self.dropout and self.dropout_start > self.epochs:
            raise UserError(f"dropout_start ({self.dropout_start}) is after the last epoch ({self.epochs}): "
                            f"dropout would never switch on")
        if self.towers not in (1, 2):
            raise UserError(f"towers must be 1 or 2 (the paper network has two), got {self.towers}")
        # With --weights fc8 may be the file's, not at zero: finetune.check_fc8_start judges it, knowing.
        if self.optimizer == "lars" and self.zero_init_fc8 and not self.weights:
            raise UserError("--optimizer lars scales each layer's step by its weights' norm: fc8 started at zero "
                            "would take the whole learning rate at its first step; add --no-zero-init-fc8")
        if self.optimizer == "lars" and (self.bias_decay or self.update_rule != "paper"):
            raise UserError("--optimizer lars leaves biases out of weight decay and keeps the paper's update rule "
                            "(the learning rate inside the velocity); leave --bias-decay and --update-rule out")
        if self.towers == 2 and self.optimizer == "lars":
            raise UserError("--optimizer lars needs whole layers' norms, and with --towers 2 each process holds "
                            "half of a layer; use data parallelism (--towers 1)")
        if self.freeze != "none" and self.towers == 2:
            raise UserError("--freeze is for one network per process; fine-tune with --towers 1")
        if not self.weights:   # else the network is the file's, not the preset's: finetune.adopt checks it
            check_towers_fit(self.towers, self.variant)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def crop(self) -> int:
        return INPUT_SIZE[self.variant]


def check_towers_fit(towers: int, variant: str) -> None:
    if towers == 2 and variant != "paper":
        raise UserError(f"--towers 2 splits the paper network's two towers; the {variant} variant has none")


def _check_number(name: str, value: Any, kind: str | None) -> None:
    if value is None:  # an optional setting left to be chosen automatically
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if kind is not None:
        ok, must = KINDS[kind]
        if not ok(value):
            raise UserError(f"{name} {must}, got {value}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def preset_values(name: str) -> dict[str, Any]:
    """The settings a preset file holds (only those that differ from the paper defaults)."""
    _choice("preset", name, PRESETS)
    text = resources.files("alexnet.presets").joinpath(f"{name}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    return _checked(values, f"preset {name}")


def _checked(values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(TrainConfig)}
    # key=str: a hand-edited file may mix keys YAML reads as numbers with names, which do not sort together
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise UserError(f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}")
    out = {}
    for key, value in values.items():
        out[key] = _coerce(key, value, known[key].type, where)
    return out


def _coerce(key: str, value: Any, type_name: str, where: str) -> Any:
    # Types are strings under `from __future__ import annotations`; YAML already gives int/float/bool/str.
    base = type_name.replace(" | None", "")
    if value is None and "None" in type_name:
        return None
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[base]
    if not ok(value):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[base]
        raise UserError(f"{where}: {key} must be {kind}, got {value!r}")
    if base == "float" and isinstance(value, int) and abs(value) > sys.float_info.max:
        # float() would raise OverflowError; the digits are not repeated (there may be thousands of them)
        raise UserError(f"{where}: {key} must be a finite number, got an integer of {value.bit_length()} bits, "
                        f"over the largest a float holds ({sys.float_info.max:.3g})")
    return float(value) if base == "float" else value


# What LARS does of SGD's own settings: no decay on biases, the learning rate inside the velocity.
LARS_SGD_SETTINGS = {"bias_decay": False, "update_rule": "paper"}


def resolve(preset: str, overrides: dict[str, Any], resuming: bool = False) -> TrainConfig:
    """Defaults <- preset file <- overrides (command-line flags that were given), validated. An override this
    run would never read, and that is not the preset's own value, is refused (refuse_settings_that_do_nothing;
    the command judges every flag given); ``resuming``: the configuration is for continuing a run, whose
    checkpoint holds its own settings."""
    values = preset_values(preset)
    given = _checked({k: v for k, v in overrides.items() if v is not None}, "flags")
    if "epochs" in given and "warmup_epochs" not in given and values.get("warmup_epochs") and values.get("epochs"):
        # The preset's warm-up keeps its share of the run, as its cosine keeps its shape: `--preset demo
        # --epochs 1` warms up over a fifth of an epoch, not over more than the run.
        values["warmup_epochs"] = values["warmup_epochs"] * given["epochs"] / values["epochs"]
    # What the caller asked for: the overrides that differ from the preset's values (a whole recorded
    # configuration passed back in, config.yaml's, asks for nothing the run would not read).
    preset_made = TrainConfig(**values).to_dict()
    asked = {k: v for k, v in given.items() if k not in preset_made or preset_made[k] != v}
    values.update(given)
    if values.get("optimizer") == "lars":
        # SGD's settings in the preset (demo's torch rule) do not apply to LARS: only flags given for it are
        # refused (validate), not the preset's.
        values.update({k: v for k, v in LARS_SGD_SETTINGS.items() if k not in given})
    values["preset"] = preset
    config = TrainConfig(**values).validate()
    refuse_settings_that_do_nothing(config, asked, resuming)
    return config


def refuse_lrn_for_owt(variant: str | None, lrn: str | None) -> None:
    """An LRN convention asked for the owt network, which has none: it would change nothing. ("paper", every
    run's default and what config.yaml records for owt runs too, passes; so does an old owt run's other
    value on resume, which names no variant.)"""
    if variant == "owt" and lrn not in (None, "paper"):
        raise UserError(f"--lrn {lrn} does nothing with --variant owt, which has no LRN layers; leave --lrn out")


# Settings that act only where another one has these values (the learning-rate schedule, the optimizer):
# given where it has another, each would change nothing, and is refused as --lrn is with owt.
ONLY_WITH = {"lars_eta": ("optimizer", ("lars",)), "patience": ("schedule", ("plateau",)),
             "max_lr_drops": ("schedule", ("plateau",)), "step_epochs": ("schedule", ("step",)),
             "lr_gamma": ("schedule", ("plateau", "step"))}
# Settings that act only where other settings' values let them: (those deciding settings, whether this run
# reads it, why not, what to give instead). Checked after ONLY_WITH, which names a wrong schedule first.
ONLY_WHERE = {
    "dropout_start": (("dropout",), lambda c: bool(c.dropout),
                      "is the epoch dropout switches on at, and this run's dropout is 0",
                      "give --dropout too (e.g. 0.5)"),
    "patience": (("schedule", "max_lr_drops"), lambda c: c.max_lr_drops > 0,
                 "is how long the plateau schedule waits before it divides, and this run's max_lr_drops is 0 (it "
                 "never divides)", "give --max-lr-drops above 0 too"),
    "lr_gamma": (("schedule", "max_lr_drops"), lambda c: c.schedule != "plateau" or c.max_lr_drops > 0,
                 "is what each division multiplies the learning rate by, and this run's plateau schedule has "
                 "max_lr_drops 0 (it never divides)", "give --max-lr-drops above 0 too"),
    "bias_decay": (("weight_decay",), lambda c: bool(c.weight_decay),
                   "says whether weight decay reaches the biases, and this run's weight_decay is 0",
                   "give --weight-decay above 0 too"),
}


def refuse_settings_that_do_nothing(config: TrainConfig, given: dict[str, Any], resuming: bool = False) -> None:
    """Settings given (flags, or resolve's overrides) that this run never reads. Only given ones: a preset
    sets such values for its own schedule, which another schedule leaves unread. Not on a resume: the run's
    settings are its checkpoint's, and none of these may change there (a change is refused as one), while the
    same flags given again (a requeued job's command; a run an earlier version started with them) must
    continue it."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    if resuming:
        return
    if "weights" not in given:   # else the weights decide the network, and refuse what contradicts it
        refuse_lrn_for_owt(config.variant, given.get("lrn"))
    for name, (on, values) in ONLY_WITH.items():
        if name in given and getattr(config, on) not in values:
            raise UserError(f"{flag(name)} applies to {flag(on)} {' or '.join(values)}; this run's {on} is "
                            f"{getattr(config, on)}, so it would do nothing; leave {flag(name)} out")
    for name, (on, reads, why, remedy) in ONLY_WHERE.items():
        if name in given and not reads(config):
            asked = _given_flag(name, given[name])
            raise UserError(f"{asked} {why}, so it would do nothing; {remedy}, or leave {asked} out")


def _given_flag(name: str, value: Any) -> str:
    """The flag as given: a switch's --no- form for False (--no-bias-decay)."""
    return f"--{'no-' if value is False else ''}{name.replace('_', '-')}"


# Settings added after runs were recorded without them, and what such an SGD run did (LARS runs did what
# the defaults do): an earlier run resumes as it was trained, not with today's default.
_BEFORE_RECORDED = {"bias_decay": True, "update_rule": "pytorch"}


def from_dict(values: dict[str, Any], where: str) -> TrainConfig:
    """A configuration recorded by an earlier run (config.yaml or a checkpoint)."""
    if values.get("optimizer", "sgd") == "sgd":
        values = {k: v for k, v in _BEFORE_RECORDED.items() if k not in values} | values
    config = TrainConfig(**_checked(values, where)).validate()
    # A recorded network is the run's own, also one taken from --weights: validate leaves that case to
    # finetune.adopt, which a resume (free to change --towers) never calls.
    check_towers_fit(config.towers, config.variant)
    return config


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as e:   # its own words take several lines, with a picture of the place
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise UserError(f"cannot read {path}: not YAML ({e.problem or e.context}{where})") from None
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    except ValueError as e:   # an integer of more digits than Python converts (4300); its advice is for code
        raise UserError(f"cannot read {path}: {str(e).split(';')[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} does not hold a mapping of settings")
    return values


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
