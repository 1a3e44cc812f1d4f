"""The training checkpoint (RUN/last.pt, RUN/best.pt): the one module that writes, reads and checks it.

A checkpoint is a dict of tensors and plain Python data (numbers, strings, lists, dicts), so
``torch.load(path, weights_only=True)`` reads it; a file that would need to unpickle anything else is
refused with a clear message instead of being trusted. Its fields:

    format            FORMAT; a file of another format is refused by name
    model             the single-device network's state_dict (whatever the run's towers or processes)
    config            TrainConfig.to_dict(): the run is resumed or reproduced from it alone
    variant           "paper" | "owt"
    classes, names    one folder name and one readable name per output
    preprocessing     crop, normalization, mean (and std), pca_eigvals, pca_eigvecs, pca_convention
    epoch, step_in_epoch   where training continues (epochs finished, steps into the next)
    best              {"top1": best val top-1 so far, "epoch": when}
  and, in a resumable checkpoint (last.pt; best.pt holds weights and meaning only):
    optimizer, schedule, scaler   their state_dicts
    rng               one random-number state per process, in rank order

Every field is checked when read: a damaged or foreign file is a one-line UserError naming the field,
never a KeyError deep in the loop.
"""

from __future__ import annotations

import math
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet.config import TrainConfig, from_dict
from alexnet.data.decode import FIXED_SIZE
from alexnet.data.stats import STATS_FILE
from alexnet.data.transforms import NORMALIZATIONS, PCA_CONVENTIONS, Normalize, PCANoise, Preprocessing
from alexnet.errors import UserError
from alexnet.files import utf8_name, write_or_say
from alexnet.model import AlexNet, freeze, is_float, state_mismatch
from alexnet.step import optimizer_for

FORMAT = 1
RESUMABLE = ("optimizer", "schedule", "scaler", "rng")
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
# CUDA's Philox generator: its seed and its offset, 8 bytes each (torch.cuda.set_rng_state takes the seed alone too).
CUDA_RNG_BYTES = (16, 8)


# ---- writing ----

def training_state(*, model: dict, config: TrainConfig, classes: list[str], names: list[str], prep: Preprocessing,
                   epoch: int, step_in_epoch: int, best: dict, optimizer: dict | None = None,
                   schedule: dict | None = None, scaler: dict | None = None, rng: list | None = None,
                   so_far: dict | None = None, data: dict | None = None) -> dict:
    """The checkpoint's dict; with optimizer, schedule, scaler and rng it is resumable (``so_far``, ``data``:
    see Resumable)."""
    pca = prep.pca
    state = {"format": FORMAT, "model": model, "config": config.to_dict(), "variant": config.variant,
             "classes": list(classes), "names": list(names),
             "preprocessing": {"crop": prep.size, "normalization": config.normalization,
                               "mean": prep.norm.mean, "std": prep.norm.std,
                               "pca_eigvals": None if pca is None else pca.eigvals,
                               "pca_eigvecs": None if pca is None else pca.eigvecs,
                               "pca_convention": None if pca is None else pca.convention},
             "epoch": epoch, "step_in_epoch": step_in_epoch, "best": dict(best)}
    extra = {"optimizer": optimizer, "schedule": schedule, "scaler": scaler, "rng": rng}
    if any(v is not None for v in extra.values()):
        if any(v is None for v in extra.values()):
            raise ValueError("a resumable checkpoint needs optimizer, schedule, scaler and rng together")
        state |= extra
        if so_far:
            state["so_far"] = dict(so_far)
        if data:
            state["data"] = dict(data)
    return state


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename: never half a checkpoint. A write
    that fails (a full disk, say) leaves the previous file as it was and is a one-line UserError."""
    write_or_say(path, lambda tmp: torch.save(state, tmp), need=_tensor_bytes(state))


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested state (what the file will mostly be)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# ---- reading ----

def read(path: str | Path) -> dict[str, Any]:
    """Any alexnet checkpoint, onto the CPU with ``weights_only=True``; UserError if missing or unsafe."""
    state = torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        hint = ""
        if isinstance(state, dict) and "features.0.weight" in state:
            conv1 = state["features.0.weight"]
            if isinstance(conv1, torch.Tensor) and tuple(conv1.shape) == (64, 3, 11, 11):   # torchvision's layout
                hint = "; it looks like a bare state_dict: for torchvision's weights use `alexnet import-torchvision`"
            else:   # this project's own network, saved without its classes and preprocessing
                hint = ("; it looks like a bare state_dict, which names no classes or preprocessing: load it in "
                        "Python with AlexNet(variant, num_classes).load_state_dict(...)")
        raise UserError(f"{path} is not an alexnet checkpoint (no 'model' entry){hint}")
    return state


def recorded_config(path: str | Path) -> dict[str, Any] | None:
    """The settings a checkpoint records, as it holds them (unchecked), for a decision made before it is read:
    the tensors are mapped, not read, nor their checksums. None where it cannot be read (reading it says why)."""
    try:
        state = torch_load(path, crcs=False)
    except UserError:
        return None
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


@dataclass
class Resumable:
    """A checked resumable checkpoint: everything a run needs to continue exactly where it stopped."""
    config: TrainConfig
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]
    classes: list[str]
    names: list[str]
    prep: Preprocessing
    epoch: int
    step_in_epoch: int
    best: dict[str, Any]
    # The stopped epoch's training so far, summed over the processes (its metrics row adds the rest):
    # loss, images, seconds, step_seconds, data_seconds. Empty where the checkpoint is at an epoch's end,
    # or older than this field.
    so_far: dict[str, float] = field(default_factory=dict)
    # The training images it was trained on: {"images": count, "fingerprint": data.stats.fingerprint}, so
    # that a resume can say they changed. Empty in checkpoints older than this field.
    data: dict[str, Any] = field(default_factory=dict)


SO_FAR = ("loss", "images", "seconds", "step_seconds", "data_seconds")
SO_FAR_SINCE = ("skipped",)   # kept by later versions; a checkpoint of an earlier one has none (0)


def read_resumable(path: str | Path) -> Resumable:
    """last.pt, every field checked; a one-line UserError names the first that is wrong."""
    ckpt = read(path)
    if ckpt.get("format") != FORMAT or "config" not in ckpt:
        found = f"format {ckpt['format']!r}" if "format" in ckpt else "no format"
        raise UserError(f"{path} is not a resumable training checkpoint of this version "
                        f"({found}{'' if 'config' in ckpt else ', no config'}; this version writes format {FORMAT})")
    missing = [k for k in RESUMABLE if k not in ckpt]
    if missing:
        raise UserError(f"{path} holds weights only (no {', '.join(missing)}); resume from a run's last.pt")
    try:
        config = from_dict(_field(ckpt, "config", dict, path), "config")
    except UserError as e:
        raise _damaged(path, "config", str(e)) from None
    if ckpt.get("variant") != config.variant:
        raise _damaged(path, "variant", f"{ckpt.get('variant')!r} where the config says {config.variant!r}")
    classes, names = _classes(ckpt, path)
    epoch, step = _count(ckpt, "epoch", path), _count(ckpt, "step_in_epoch", path)
    best = _field(ckpt, "best", dict, path)
    if not (_number(best.get("top1")) and math.isfinite(best["top1"]) and _integer(best.get("epoch"))):
        raise _damaged(path, "best", "expected {'top1': a finite number, 'epoch': an integer}")
    model, network = _model(ckpt, config, len(classes), path)
    optimizer = _optimizer(ckpt, config, network, path)
    schedule = _field(ckpt, "schedule", dict, path)
    if not (_integer(schedule.get("drops")) and _number(schedule.get("best")) and _integer(schedule.get("bad_epochs"))):
        raise _damaged(path, "schedule", "expected {'drops': an integer, 'best': a number, 'bad_epochs': an integer}")
    scaler = _field(ckpt, "scaler", dict, path)
    if scaler and not all(_number(scaler.get(k)) for k in SCALER_KEYS):
        raise _damaged(path, "scaler", f"expected a gradient scaler's state_dict ({', '.join(SCALER_KEYS)}) or {{}}")
    rng = _field(ckpt, "rng", list, path)
    if not rng or not all(isinstance(r, dict) and _cpu_rng(r.get("torch"))
                          and ("cuda" not in r or _cuda_rng(r["cuda"])) for r in rng):
        raise _damaged(path, "rng", "expected one random-number state per process, as torch.get_rng_state and "
                                    "torch.cuda.get_rng_state give them")
    prep = _preprocessing(ckpt, path)
    if prep.size != config.crop:
        raise _damaged(path, "preprocessing", f"crop {prep.size} does not match the {config.variant} network")
    kind = ckpt["preprocessing"]["normalization"]
    if kind != config.normalization:
        raise _damaged(path, "preprocessing", f"normalization {kind} where the config says {config.normalization}")
    if prep.norm.per_pixel != (kind == "mean-image") or (prep.norm.std is None) != (kind == "mean-image"):
        raise _damaged(path, "preprocessing", f"the {kind} normalization needs " + (
            f"a ({FIXED_SIZE}, {FIXED_SIZE}, 3) mean and no std" if kind == "mean-image" else "a (3,) mean and std"))
    pca = "none" if prep.pca is None else prep.pca.convention
    if pca != config.pca_noise:
        raise _damaged(path, "preprocessing", f"PCA noise {pca} where the config says {config.pca_noise}")
    so_far = ckpt.get("so_far", {})
    if not isinstance(so_far, dict) or (so_far and not (set(SO_FAR) <= set(so_far) <= {*SO_FAR, *SO_FAR_SINCE} and all(
            _number(v) and math.isfinite(v) and v >= 0 for v in so_far.values()))):
        raise _damaged(path, "so_far", f"expected {{}} or non-negative numbers for {', '.join(SO_FAR)} "
                                       f"(and {', '.join(SO_FAR_SINCE)})")
    data = ckpt.get("data", {})
    if not isinstance(data, dict) or (data and not (set(data) == {"images", "fingerprint"} and _integer(data["images"])
                                                    and data["images"] >= 0 and isinstance(data["fingerprint"], str))):
        raise _damaged(path, "data", "expected {} or {'images': a count, 'fingerprint': a string}")
    return Resumable(config, model, optimizer, schedule, scaler, rng, classes, names, prep, epoch, step, best,
                     {k: float(v) for k, v in so_far.items()}, data)


def meaning(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What a checkpoint's weights mean, for weights.load_model: variant, lrn, classes, names, crop,
    normalization, mean, std, metrics, small (checked there, with the same rules as a safetensors file's)."""
    if "preprocessing" in ckpt and not isinstance(ckpt["preprocessing"], dict):   # a tensor: an IndexError below
        raise _damaged(path, "preprocessing", f"expected a dict, found {type(ckpt['preprocessing']).__name__}")
    try:
        variant, classes, prep = ckpt["variant"], ckpt["classes"], ckpt["preprocessing"]
        crop, kind, mean, std = prep["crop"], prep["normalization"], prep["mean"], prep.get("std")
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a training checkpoint of this version (it has no {e} entry)") from None
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    best = ckpt.get("best") if isinstance(ckpt.get("best"), dict) else {}
    # The best accuracy describes these weights only where they are the best epoch's (best.pt, or last.pt
    # when its epoch was the best): a later last.pt's are other weights. Counts that are not integers (none,
    # a tensor) say nothing of the kind.
    epoch, best_epoch, step = ckpt.get("epoch"), best.get("epoch"), ckpt.get("step_in_epoch", 0)
    at_best = _integer(epoch) and _integer(best_epoch) and epoch == best_epoch and _integer(step) and step == 0
    metrics = {"val_top1": best["top1"], "epoch": best["epoch"]} if _number(best.get("top1", -1)) and \
        best.get("top1", -1) >= 0 and at_best else {}
    return {"state": ckpt["model"], "variant": variant, "lrn": config.get("lrn", "paper") if variant == "paper" else None,
            "classes": classes, "names": _names(ckpt, classes), "crop": crop, "kind": kind, "mean": mean,
            "std": std, "metrics": metrics, "small": config.get("small", "upscale")}


def _names(ckpt: dict[str, Any], classes: Any) -> Any:
    """The readable names, the classes' own where the checkpoint has none; anything else goes on to be checked
    (a tensor is neither true nor false)."""
    names = ckpt.get("names")
    return classes if names is None or (isinstance(names, list) and not names) else names


def torch_load(path: str | Path, crcs: bool = True) -> Any:
    """``torch.load(weights_only=True)`` with every failure as a one-line UserError (``crcs``: check the parts'
    CRC-32s first, which reads the whole file)."""
    path = existing_file(path)
    if crcs:
        _check_crcs(path)
    try:
        # A plain pickle (not torch.save's zip) makes torch warn about its protocol before failing, and a
        # sparse tensor about checking it; the one line that follows says all that matters.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            warnings.filterwarnings("ignore", message="Validating sparse tensor", category=UserWarning)
            # Mapped, not read: a resume copies the tensors into the network and momentum once, instead
            # of holding a second copy of them in memory on every process (1 GB per process for a
            # float64 paper run). Only torch.save's zip format can be mapped.
            with utf8_name(path) as name:
                return torch.load(name, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        # Running code from a pickle needs a callable fetched by name, which weights_only reports as an
        # unsupported global; anything else it stumbles on is a damaged or foreign file.
        if "unsupported global" in str(e).lower():
            raise UserError(f"{path} holds Python objects that would run code when loaded; refusing to load it "
                            f"(only tensors and plain data are accepted)") from None
        if not _written_by_torch(path):   # a YAML, a log: the unpickler's complaint would say nothing
            raise UserError(f"{path} is not a readable checkpoint (neither a file torch.save writes nor "
                            f"safetensors)") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        after = [b for a, b in zip(lines, lines[1:]) if a.endswith("WeightsUnpickler error:")]
        detail = after[0] if after else (lines[0] if lines else type(e).__name__)
        if detail.startswith("Unsupported operand") and _legacy_pickle_protocol(path) >= 4:
            # torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4 or 5): the safe loader
            # reads only protocols 2 and 3 of the old format, and names a byte code where it stops.
            detail = (f"written in torch.save's old format with pickle protocol {_legacy_pickle_protocol(path)}, "
                      f"which only a loader that runs code reads; save it again with torch.save's default format")
        raise UserError(f"{path} is not a readable checkpoint ({detail})") from None
    except Exception as e:  # truncated zip, wrong format, ...
        if not _written_by_torch(path):
            raise UserError(f"{path} is not a readable checkpoint (neither a file torch.save writes nor "
                            f"safetensors)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "central directory" in first:   # miniz's paragraph about it, for a zip without its end
            first = "cut short or damaged: the zip's directory at its end is missing"
        raise UserError(f"{path} is not a readable checkpoint ({first})") from None


def _check_crcs(path: Path) -> None:
    """torch.save's zip keeps a CRC-32 of every part, which torch.load never checks: flipped bits in the
    weights would load as other weights and give other answers. Checked here (0.1 s for the 228 MB of
    best.pt, from the page cache)."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError):
        return   # a broken directory: torch.load says how
    except RuntimeError as e:   # NotImplementedError too, a RuntimeError
        # zipfile's words for a part stored by a method it does not know, or flagged as encrypted ("password
        # required": none would help); torch.save does neither, so the file is damaged or another program's.
        how = "stored in a way zip readers do not know" if isinstance(e, NotImplementedError) else "marked as encrypted"
        raise UserError(f"{path} is not a readable checkpoint (damaged, or not written by torch.save: a part of it "
                        f"is {how})") from None
    if bad is not None:
        # torch.save names the archive's top folder after the file it wrote: here the temporary name of
        # an atomic write (".best.pt.x1y2tmp/data/10"), which would mean nothing to the reader.
        part = bad.split("/", 1)[-1]
        raise UserError(f"{path} is damaged: its part {part} fails its checksum (CRC-32); use another copy")


def _written_by_torch(path: Path) -> bool:
    """Starts as torch.save's files do (whole or cut short): a zip holding a pickle, or before PyTorch 1.6 a
    pickle of protocol 2 or later."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return head[:1] == b"\x80"
    try:   # a whole zip is torch's if it holds a pickle (ARCHIVE/data.pkl); NumPy's .npz and others do not
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return True   # cut short: its directory is gone, and it may be torch's


def _legacy_pickle_protocol(path: Path) -> int:
    """The pickle protocol of a file torch.save wrote in its pre-1.6 format (0 for its zip format)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[1] if head[:1] == b"\x80" and len(head) == 2 else 0


def existing_file(path: str | Path) -> Path:
    if "://" in str(path):  # Path() would fold the URL's "//" and name a file that cannot exist
        raise UserError(f"{path} is an address: nothing is downloaded; download the file and give its local path")
    path = Path(path)
    if path.is_dir():   # most likely a run folder, or an export's: name the weight files in it
        # Not hidden files (a run's .last-previous.pt) nor its statistics cache, which hold no network.
        inside = sorted(str(p) for pattern in ("*.pt", "*.safetensors") for p in path.glob(pattern)
                        if p.is_file() and not p.name.startswith(".") and p.name != STATS_FILE)
        raise UserError(f"{path} is a folder; give a checkpoint file" + (f" ({', '.join(inside)})" if inside else ""))
    if not path.is_file():
        raise UserError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    return path


# ---- checks ----

def _damaged(path: str | Path, field: str, what: str) -> UserError:
    return UserError(f"{path}: field {field!r} is damaged ({what})")


def _field(ckpt: dict, name: str, kind: type, path: str | Path) -> Any:
    value = ckpt.get(name)
    if not isinstance(value, kind):
        raise _damaged(path, name, f"expected a {kind.__name__}, found {type(value).__name__}")
    return value


def _count(ckpt: dict, name: str, path: str | Path) -> int:
    value = ckpt.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _damaged(path, name, f"expected a non-negative integer, found {value!r}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rng(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1 \
        and value.layout == torch.strided and value.device.type == "cpu"


def _cpu_rng(value: Any) -> bool:
    """A state torch.set_rng_state takes: tried on a generator of its own, since its size is not all it
    checks (a Mersenne Twister state of zeros is refused too), and the resume would end in its RuntimeError."""
    if not _rng(value) or value.numel() != torch.get_rng_state().numel():
        return False
    try:
        torch.Generator().set_state(value)
    except RuntimeError:
        return False
    return True


def _cuda_rng(value: Any) -> bool:
    return _rng(value) and value.numel() in CUDA_RNG_BYTES   # no GPU is needed to read the file


def _model(ckpt: dict, config: TrainConfig, num_classes: int, path: str | Path) -> tuple[dict, AlexNet]:
    """The weights, checked against the network the config and classes describe; and that network (on the
    meta device)."""
    state = _field(ckpt, "model", dict, path)
    if not all(isinstance(k, str) for k in state):   # named otherwise, they could not even be listed
        raise _damaged(path, "model", "expected a state_dict, its weights named by strings")
    with torch.device("meta"):
        network = AlexNet(config.variant, num_classes=num_classes, init="pytorch")
    problem = state_mismatch(network.state_dict(), state)
    if problem:
        raise _damaged(path, "model", f"the weights do not fit the {config.variant} network with {num_classes} "
                                      f"classes: {problem}")
    return state, network


def _optimizer(ckpt: dict, config: TrainConfig, network: AlexNet, path: str | Path) -> dict:
    """The optimizer's state_dict, checked against the network: torch loads any tensor as a momentum
    buffer, and the fused SGD step then fails on one of another shape (a segmentation fault) or on one
    missing for a weight that learns (a TypeError)."""
    optimizer = _field(ckpt, "optimizer", dict, path)
    # The run's own optimizer over the meta network, its frozen layers too: state_dict numbers the
    # parameters 0, 1, ... in the order of its groups (weights, then biases, where they are decayed apart).
    freeze(network, config.freeze)
    groups = [g["params"] for g in optimizer_for(network, config, torch.device("meta")).param_groups]
    params = [p for g in groups for p in g]
    saved, state = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(state, dict) or not isinstance(saved, list) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved) or \
            [len(g["params"]) for g in saved] != [len(g) for g in groups] or \
            [i for g in saved for i in g["params"]] != list(range(len(params))):
        raise _damaged(path, "optimizer", f"expected an optimizer state_dict of the network's {len(params)} "
                                          f"parameters, in groups of {' and '.join(str(len(g)) for g in groups)}")
    # The last learning rate is the one setting a resume takes from the groups (the paper's update rule
    # scales the next step's momentum by it, step.set_lr): a NaN there spread to every weight in one step.
    rates = [g.get("lr") for g in saved]
    if not all(_number(lr) and math.isfinite(lr) and lr >= 0 for lr in rates):
        raise _damaged(path, "optimizer", f"learning rates {rates}; expected finite numbers, 0 or more")
    problem = _momentum(state, params)
    if problem:
        raise _damaged(path, "optimizer", problem)
    return optimizer


def _momentum(state: dict, params: list[torch.Tensor]) -> str:
    """What is wrong with an optimizer's per-parameter state, "" when nothing: SGD and LARS keep one
    momentum buffer for each parameter that learns, from the first step on (none before it)."""
    for i, s in state.items():
        if not _integer(i) or not 0 <= i < len(params):
            return f"state for a parameter {i!r}; the network has {len(params)}"
        if not isinstance(s, dict) or set(s) != {"momentum_buffer"}:
            return f"parameter {i}'s state is not a momentum buffer"
        buffer, shape = s["momentum_buffer"], tuple(params[i].shape)
        if not is_float(buffer) or tuple(buffer.shape) != shape or not all_finite(buffer):
            return f"parameter {i}'s momentum is not a finite {shape} tensor"
    missing = [i for i, p in enumerate(params) if p.requires_grad and i not in state]
    if state and missing:
        return f"no momentum for parameter {missing[0]}, where others have one"
    return ""


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _classes(ckpt: dict, path: str | Path) -> tuple[list[str], list[str]]:
    classes, names = ckpt.get("classes"), ckpt.get("names")
    if not _strings(classes):
        raise _damaged(path, "classes", "expected one folder name per output")
    if not _strings(names) or len(names) != len(classes):
        raise _damaged(path, "names", f"expected one readable name for each of the {len(classes)} classes")
    return classes, names


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t``. A NaN or an infinity makes the sum one, so a finite sum settles it
    without the element-wise check, whose temporaries as large as the tensor (the paper network's fc6:
    151 MB in float32, fresh pages each time) made it 215 ms for the 61M weights against 10 ms (2-core
    Xeon); a sum that overflows is checked element by element."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _tensor(value: Any, shapes: tuple[tuple[int, ...], ...]) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) in shapes \
        and all_finite(value)


def _preprocessing(ckpt: dict, path: str | Path) -> Preprocessing:
    p = _field(ckpt, "preprocessing", dict, path)
    crop, kind, mean, std = p.get("crop"), p.get("normalization"), p.get("mean"), p.get("std")
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 < crop <= FIXED_SIZE:
        raise _damaged(path, "preprocessing", f"crop {crop!r} is not a size between 1 and {FIXED_SIZE}")
    if kind not in NORMALIZATIONS:
        raise _damaged(path, "preprocessing", f"unknown normalization {kind!r}")
    # A std of 0 or below is refused as weights.load_model refuses it: the resumed run would divide by it and
    # diverge, and the divergence would be blamed on the learning rate.
    if not _tensor(mean, ((3,), (FIXED_SIZE, FIXED_SIZE, 3))) or \
            not (std is None or (_tensor(std, ((3,),)) and bool((std > 0).all()))):
        raise _damaged(path, "preprocessing", "the mean must be a finite (3,) or (256, 256, 3) tensor, "
                                              "the std a positive and finite (3,) tensor or absent")
    pca = None
    if p.get("pca_eigvals") is not None:
        vals, vecs, convention = p.get("pca_eigvals"), p.get("pca_eigvecs"), p.get("pca_convention")
        if not _tensor(vals, ((3,),)) or not _tensor(vecs, ((3, 3),)) or convention not in PCA_CONVENTIONS:
            raise _damaged(path, "preprocessing", "the PCA needs (3,) eigenvalues, (3, 3) eigenvectors and "
                                                  f"a convention among {', '.join(PCA_CONVENTIONS)}")
        pca = PCANoise(vals.clone(), vecs.clone(), convention=convention)
    # Copies: a view of the mapped file would keep it on disk after the run replaces it (a checkpoint's worth).
    return Preprocessing(crop, Normalize(mean.clone(), None if std is None else std.clone()), pca)
