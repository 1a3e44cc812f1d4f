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

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet.config import TrainConfig, from_dict
from alexnet.data.decode import FIXED_SIZE
from alexnet.data.transforms import NORMALIZATIONS, PCA_CONVENTIONS, Normalize, PCANoise, Preprocessing
from alexnet.errors import UserError
from alexnet.files import atomic_write

FORMAT = 1
RESUMABLE = ("optimizer", "schedule", "scaler", "rng")


# ---- writing ----

def training_state(*, model: dict, config: TrainConfig, classes: list[str], names: list[str], prep: Preprocessing,
                   epoch: int, step_in_epoch: int, best: dict, optimizer: dict | None = None,
                   schedule: dict | None = None, scaler: dict | None = None, rng: list | None = None) -> dict:
    """The checkpoint's dict; with optimizer, schedule, scaler and rng it is resumable."""
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
    return state


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename: never half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


# ---- reading ----

def read(path: str | Path) -> dict[str, Any]:
    """Any alexnet checkpoint, onto the CPU with ``weights_only=True``; UserError if missing or unsafe."""
    state = torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        hint = ""
        if isinstance(state, dict) and "features.0.weight" in state:
            hint = "; it looks like a bare state_dict: for torchvision's weights use `alexnet import-torchvision`"
        raise UserError(f"{path} is not an alexnet checkpoint (no 'model' entry){hint}")
    return state


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


def read_resumable(path: str | Path) -> Resumable:
    """last.pt, every field checked; a one-line UserError names the first that is wrong."""
    ckpt = read(path)
    if ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise UserError(f"{path} is not a resumable training checkpoint of this version")
    missing = [k for k in RESUMABLE if k not in ckpt]
    if missing:
        raise UserError(f"{path} holds weights only (no {', '.join(missing)}); resume from a run's last.pt")
    config = from_dict(_field(ckpt, "config", dict, path), str(path))
    classes, names = _classes(ckpt, path)
    epoch, step = _count(ckpt, "epoch", path), _count(ckpt, "step_in_epoch", path)
    best = _field(ckpt, "best", dict, path)
    if not (_number(best.get("top1")) and isinstance(best.get("epoch"), int)):
        raise _damaged(path, "best", "expected {'top1': a number, 'epoch': an integer}")
    optimizer = _field(ckpt, "optimizer", dict, path)
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise _damaged(path, "optimizer", "expected an optimizer state_dict")
    rng = _field(ckpt, "rng", list, path)
    if not rng or not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) for r in rng):
        raise _damaged(path, "rng", "expected one random-number state per process")
    prep = _preprocessing(ckpt, path)
    if prep.size != config.crop:
        raise _damaged(path, "preprocessing", f"crop {prep.size} does not match the {config.variant} network")
    return Resumable(config, _field(ckpt, "model", dict, path), optimizer, _field(ckpt, "schedule", dict, path),
                     _field(ckpt, "scaler", dict, path), rng, classes, names, prep, epoch, step, best)


def meaning(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What a checkpoint's weights mean, for weights.load_model: variant, lrn, classes, names, crop,
    normalization, mean, std, metrics (checked there, with the same rules as a safetensors file's)."""
    try:
        variant, classes, prep = ckpt["variant"], ckpt["classes"], ckpt["preprocessing"]
        crop, kind, mean, std = prep["crop"], prep["normalization"], prep["mean"], prep.get("std")
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a training checkpoint of this version (it has no {e} entry)") from None
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    best = ckpt.get("best") if isinstance(ckpt.get("best"), dict) else {}
    metrics = {"val_top1": best["top1"], "epoch": best["epoch"]} if _number(best.get("top1", -1)) and \
        best.get("top1", -1) >= 0 else {}
    return {"state": ckpt["model"], "variant": variant, "lrn": config.get("lrn", "paper") if variant == "paper" else None,
            "classes": classes, "names": ckpt.get("names") or classes, "crop": crop, "kind": kind, "mean": mean,
            "std": std, "metrics": metrics}


def torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure as a one-line UserError."""
    path = existing_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Running code from a pickle needs a callable fetched by name, which weights_only reports as an
        # unsupported global; anything else it stumbles on is a damaged or foreign file.
        if "unsupported global" in str(e).lower():
            raise UserError(f"{path} holds Python objects that would run code when loaded; refusing to load it "
                            f"(only tensors and plain data are accepted)") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        after = [b for a, b in zip(lines, lines[1:]) if a.endswith("WeightsUnpickler error:")]
        detail = after[0] if after else (lines[0] if lines else type(e).__name__)
        raise UserError(f"{path} is not a readable checkpoint ({detail})") from None
    except Exception as e:  # truncated zip, wrong format, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint ({first})") from None


def existing_file(path: str | Path) -> Path:
    path = Path(path)
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


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _classes(ckpt: dict, path: str | Path) -> tuple[list[str], list[str]]:
    classes, names = ckpt.get("classes"), ckpt.get("names")
    if not _strings(classes) or not _strings(names) or len(names) != len(classes):
        raise _damaged(path, "classes", "expected one folder name and one readable name per output")
    return classes, names


def _tensor(value: Any, shapes: tuple[tuple[int, ...], ...]) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) in shapes \
        and bool(torch.isfinite(value).all())


def _preprocessing(ckpt: dict, path: str | Path) -> Preprocessing:
    p = _field(ckpt, "preprocessing", dict, path)
    crop, kind, mean, std = p.get("crop"), p.get("normalization"), p.get("mean"), p.get("std")
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 < crop <= FIXED_SIZE:
        raise _damaged(path, "preprocessing", f"crop {crop!r} is not a size between 1 and {FIXED_SIZE}")
    if kind not in NORMALIZATIONS:
        raise _damaged(path, "preprocessing", f"unknown normalization {kind!r}")
    if not _tensor(mean, ((3,), (FIXED_SIZE, FIXED_SIZE, 3))) or not (std is None or _tensor(std, ((3,),))):
        raise _damaged(path, "preprocessing", "the mean must be a finite (3,) or (256, 256, 3) tensor, "
                                              "the std a finite (3,) tensor or absent")
    pca = None
    if p.get("pca_eigvals") is not None:
        vals, vecs, convention = p.get("pca_eigvals"), p.get("pca_eigvecs"), p.get("pca_convention")
        if not _tensor(vals, ((3,),)) or not _tensor(vecs, ((3, 3),)) or convention not in PCA_CONVENTIONS:
            raise _damaged(path, "preprocessing", "the PCA needs (3,) eigenvalues, (3, 3) eigenvectors and "
                                                  f"a convention among {', '.join(PCA_CONVENTIONS)}")
        pca = PCANoise(vals, vecs, convention=convention)
    return Preprocessing(crop, Normalize(mean, std), pca)
