"""Files of weights: one loader for every kind, safetensors with their meaning, torchvision's ImageNet weights.

Nothing here runs code from a file. Training checkpoints are written, read and checked by checkpoint.py
(torch.load with weights_only=True); safetensors files hold only tensors and string metadata by
construction.

Weights travel with what they mean. ``load_model`` takes a training checkpoint (.pt) or a safetensors
file written by ``save_weights`` and returns the ready network together with its classes, their
readable names and the preprocessing its inputs need, so evaluation and prediction see images exactly
as training did. The safetensors layout:

    tensors   the state_dict under its own keys (features.0.weight, ...), plus the normalisation under
              the reserved prefix "preprocessing." (preprocessing.mean: (256, 256, 3) mean image or
              (3,) channel means; preprocessing.std: (3,), absent for the paper's mean-image input)
    metadata  format, format_version, variant, num_classes, lrn, source, and JSON strings: classes
              (folder names, one per output), names (readable), preprocessing (resize, crop,
              normalization, scale) and metrics (measured accuracy, when known)
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet import checkpoint
from alexnet.checkpoint import existing_file
from alexnet.data.class_names import read_pairs
from alexnet.choices import INITS, INPUT_SIZE, SMALL, VARIANTS
from alexnet.data.decode import FIXED_SIZE
from alexnet.data.transforms import NORMALIZATIONS, Normalize
from alexnet.errors import UserError, printable
from alexnet.files import head, replaceable, save_safetensors, utf8_name, utf8_text, write_or_say
from alexnet.inputs import SMALLEST_INPUT
from alexnet.lrn import LRN_CONVENTIONS
from alexnet.model import AlexNet, guess_network, is_float, state_mismatch


FORMAT = "alexnet-weights"
FORMAT_VERSION = 1
RESERVED_PREFIX = "preprocessing."

# torchvision names its weight files <arch>-<first 8 hex digits of the file's sha256>.pth.
TORCHVISION_SHA256_PREFIX = "7be5be79"


@dataclass
class LoadedModel:
    """A ready network (eval mode, on the CPU) and what its inputs and outputs mean."""
    model: AlexNet
    classes: list[str]                      # one per output: the training folder names (ImageNet: WordNet ids)
    names: list[str]                        # readable names, same order
    crop: int                               # input side: a centre crop of the fixed 256x256 image
    normalization: str                      # "mean-image" | "channel" | "imagenet"
    norm: Normalize                         # in 0-255 units
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    small: str = "upscale"                  # images under 256: "upscale" (paper) or "pad" (decode.pad_small)

    @property
    def variant(self) -> str:
        return self.model.variant

    @property
    def lrn(self) -> str | None:
        return getattr(self.model, "lrn", None)


# ---- one loader for every kind of file ----

def load_model(path: str | Path) -> LoadedModel:
    """The network in ``path`` (a training checkpoint or a safetensors file) and its meaning.

    The kind of file is read from its first bytes, not its name. Any problem (unsafe pickle, missing
    metadata, weights that do not fit the network the file claims) is a one-line UserError.

    A training checkpoint records its run's init and dropout, and the network states them (``init`` in its
    repr, for ``reset_classifier``; the dropout layers' p, for fine-tuning). A safetensors file records
    neither: its network says init "pytorch" and has dropout 0.5, as every loaded network did before.
    """
    path = existing_file(path)
    if _is_safetensors(path):
        return _from_safetensors(path)
    return _from_checkpoint(path)


def _is_safetensors(path: Path) -> bool:
    # 8 bytes of little-endian header length, then the JSON header; torch.save files start with a zip
    # signature ("PK") or a pickle opcode, neither of which can be followed by "{" at offset 8.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _from_checkpoint(path: Path) -> LoadedModel:
    ckpt = checkpoint.read(path)
    m = checkpoint.meaning(ckpt, path)
    # The run's settings, where its config records them (checked in _assemble like the rest).
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return _assemble(path, m["state"], m["variant"], m["lrn"], m["classes"], m["names"], m["crop"], m["kind"],
                     m["mean"], m["std"], m["metrics"], str(path), m["small"], config.get("init"),
                     config.get("dropout"))


def _from_safetensors(path: Path) -> LoadedModel:
    from safetensors import safe_open

    try:
        with utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, a truncated header, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({first})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file without alexnet metadata (variant, classes, preprocessing); "
                        f"write one with `alexnet export` or `alexnet import-torchvision`")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise UserError(f"{path} has alexnet weights format version {meta.get('format_version')}; "
                        f"this version reads {FORMAT_VERSION}")
    if "crc32" in meta:   # safetensors keeps no checksum: flipped bits would load as other weights
        try:
            expected = json.loads(meta["crc32"])
        except ValueError:
            expected = None
        got = _crcs(tensors)
        if not isinstance(expected, dict) or expected.keys() != got.keys():
            raise UserError(f"{path} is damaged: its CRC-32 list does not name its tensors; export it again")
        wrong = [k for k in got if got[k] != expected[k]]
        if wrong:
            raise UserError(f"{path} is damaged: {wrong[0]} is not what was written (CRC-32 mismatch"
                            f"{f', and {len(wrong) - 1} more' if len(wrong) > 1 else ''}); export it again")
    try:
        classes, names = json.loads(meta["classes"]), json.loads(meta["names"])
        prep = json.loads(meta["preprocessing"])
        metrics = json.loads(meta.get("metrics") or "{}")
        variant, lrn, crop, kind = meta["variant"], meta.get("lrn"), prep["crop"], prep["normalization"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} has broken alexnet metadata ({type(e).__name__}: {e})") from None
    mean = tensors.pop(RESERVED_PREFIX + "mean", None)
    std = tensors.pop(RESERVED_PREFIX + "std", None)
    if mean is None:
        raise UserError(f"{path} has no {RESERVED_PREFIX}mean tensor")
    lrn = None if variant != "paper" else lrn
    return _assemble(path, tensors, variant, lrn, classes, names, crop, kind, mean, std, metrics,
                     meta.get("source", str(path)), prep.get("small", "upscale"))


def _assemble(path: Path, state: Any, variant: Any, lrn: Any, classes: Any, names: Any, crop: Any, kind: Any,
              mean: Any, std: Any, metrics: Any, source: str, small: Any = "upscale", init: Any = None,
              dropout: Any = None) -> LoadedModel:
    """Check every piece of meaning, then build the network it describes and load the weights into it.
    ``init`` and ``dropout``: the training run's, None where the file does not record them."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}")

    if variant not in VARIANTS:
        raise bad(f"unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    if variant == "paper" and (not isinstance(lrn, str) or lrn not in LRN_CONVENTIONS):   # a list is unhashable
        raise bad(f"unknown LRN convention {lrn!r} (expected one of {', '.join(LRN_CONVENTIONS)})")
    if not _strings(classes) or not classes or not _strings(names) or len(names) != len(classes):
        raise bad("the class list is missing or malformed (expected one folder name and one readable name per output)")
    if len(set(classes)) != len(classes):   # two outputs for one folder: which would a label mean?
        twice = next(c for c in classes if classes.count(c) > 1)
        raise bad(f"the class list names {printable(twice)!r} for more than one output")
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 < crop <= FIXED_SIZE:
        raise bad(f"crop {crop!r} is not a size between 1 and {FIXED_SIZE}")
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise bad(f"metrics must map names to values, got {type(metrics).__name__}")
    if kind not in NORMALIZATIONS:
        raise bad(f"unknown normalization {kind!r} (expected one of {', '.join(NORMALIZATIONS)})")
    if small not in SMALL:
        raise bad(f"unknown small-image setting {small!r} (expected one of {', '.join(SMALL)})")
    if init is not None and init not in INITS:
        raise bad(f"unknown init {init!r} in the run's config (expected one of {', '.join(INITS)})")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= dropout < 1.0):
        raise bad(f"the run's config has dropout {dropout!r}, not a number in [0, 1)")
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) not in ((3,), (FIXED_SIZE, FIXED_SIZE, 3)):
        raise bad(f"the normalisation mean must be a (3,) or ({FIXED_SIZE}, {FIXED_SIZE}, 3) tensor")
    if std is not None and (not isinstance(std, torch.Tensor) or tuple(std.shape) != (3,)):
        raise bad("the normalisation std must be a (3,) tensor")
    image = kind == "mean-image"   # one mean image; the others a mean and a std per channel
    if tuple(mean.shape) != ((FIXED_SIZE, FIXED_SIZE, 3) if image else (3,)) or (std is None) != image:
        raise bad(f"{kind} normalisation takes " + ("a mean image and no std" if image else "a mean and a std per "
                  "channel") + f"; the file has a {tuple(mean.shape)} mean and " + ("no std" if std is None else
                                                                                    "a std"))
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise bad("the weights are not a state_dict (a dict of tensors named by strings)")
    # Numbers a network cannot be used with: they would only print "nan%" and "loss nan" later.
    if not torch.isfinite(mean.float()).all():
        raise bad("the normalisation mean holds NaN or infinite values")
    if std is not None and not (torch.isfinite(std.float()).all() and (std.float() > 0).all()):
        raise bad(f"the normalisation std must be positive and finite, got {[round(v, 4) for v in std.float().tolist()]}")
    model = build_network(state, variant, len(classes), lrn, where=str(path), init=init, dropout=dropout)
    # The paper network's fc6 takes exactly 6x6 from pool5 (a 227 crop); owt pools adaptively, from 63 up.
    low, high = (INPUT_SIZE["paper"],) * 2 if variant == "paper" else (SMALLEST_INPUT["owt"], FIXED_SIZE)
    if not low <= crop <= high:
        raise bad(f"crop {crop} does not fit the {variant} network (expected " +
                  (f"{low})" if low == high else f"a size from {low} to {high})"))
    norm = Normalize(mean.float(), None if std is None else std.float())
    return LoadedModel(model, list(classes), list(names), crop, kind, norm, dict(metrics or {}), source, small)


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def build_network(state: dict[str, Any], variant: str, num_classes: int, lrn: str | None = None,
                  where: str = "the weights", *, init: str | None = None, dropout: float | None = None) -> AlexNet:
    """AlexNet(variant, num_classes) holding ``state``, in eval mode; a one-line UserError if they do not fit.

    ``init`` and ``dropout`` are what the network states about its training (None: not recorded, and then
    init "pytorch" and dropout 0.5, what every loaded network said before); the weights are ``state``'s."""
    # On the meta device the network costs nothing to build, its init included; load_state_dict(assign=True)
    # then puts the file's tensors in place of the empty ones.
    with torch.device("meta"):
        model = AlexNet(variant, num_classes=num_classes, dropout=0.5 if dropout is None else dropout, lrn=lrn,
                        init=init or "pytorch")
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        guess = guess_network(state)
        hint = f"; they look like {guess}" if guess else ""
        raise UserError(f"{where}: the weights do not fit the {variant} network with {num_classes} classes "
                        f"({problem}){hint}")
    bad = next((k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and v.layout == torch.strided and v.device.type != "meta" and not checkpoint.all_finite(v)), None)
    if bad is not None:
        raise UserError(f"{where}: the weights hold NaN or infinite values ({bad}): a diverged run's weights?")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, assign=True)
    return model.eval()


# ---- safetensors with metadata ----

def save_weights(loaded: LoadedModel, path: str | Path) -> None:
    """Write the network and its meaning to one safetensors file (atomically); ``load_model`` reads it back.
    An existing ``path`` is replaced only where it holds weights this project wrote (UserError otherwise)."""
    replaceable(path, is_weights_file, "weights this project exported")

    tensors = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    tensors[RESERVED_PREFIX + "mean"] = loaded.norm.mean.float().contiguous()
    if loaded.norm.std is not None:
        tensors[RESERVED_PREFIX + "std"] = loaded.norm.std.float().contiguous()
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "variant": loaded.variant,
        "num_classes": str(len(loaded.classes)), "lrn": loaded.lrn or "none",
        # Text for people; safetensors takes only UTF-8, and a path may hold another encoding's bytes.
        "source": utf8_text(loaded.source),
        "classes": json.dumps(loaded.classes), "names": json.dumps(loaded.names),
        "preprocessing": json.dumps(preprocessing_description(loaded)), "metrics": json.dumps(loaded.metrics),
        "crc32": json.dumps(_crcs(tensors)),
    }
    write_or_say(path, lambda tmp: save_safetensors(tensors, tmp, metadata=metadata),
                 need=sum(t.numel() * t.element_size() for t in tensors.values()))


def _crcs(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """CRC-32 of each tensor's bytes (about 0.1 s for the paper network's 244 MB)."""
    return {k: zlib.crc32(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            for k, t in sorted(tensors.items())}


def is_weights_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file this project wrote (save_weights): its header names the format."""
    raw = head(path, 8)
    size = int.from_bytes(raw, "little") if len(raw) == 8 else 0
    if not 0 < size < 100 * 2**20:
        return False
    try:
        header = json.loads(head(path, 8 + size)[8:])
    except ValueError:   # not JSON (nor UTF-8): not a file this project wrote
        return False
    # __metadata__ is a dict of strings where safetensors wrote it; a file made by hand may hold anything there.
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def preprocessing_description(loaded: LoadedModel) -> dict[str, Any]:
    """What a user of the weights must do to an image, in words and numbers (the tensors travel apart)."""
    return {"resize": FIXED_SIZE, "small": loaded.small, "crop": loaded.crop, "normalization": loaded.normalization,
            "scale": "RGB 0-255; input = (crop - mean) / std, std 1 when absent",
            "mean": "per-pixel (256, 256, 3), read at the crop's pixels" if loaded.norm.per_pixel else "per channel"}


# ---- torchvision's ImageNet weights ----

def import_torchvision(path: str | Path, classes_file: str | Path | None = None) -> LoadedModel:
    """torchvision's alexnet weights (a local alexnet-owt-*.pth state_dict) as an owt LoadedModel.

    Names are torchvision's 1000 ImageNet categories and preprocessing is torchvision's (224 centre
    crop of the 256 resize, ImageNet mean/std), so predictions match torchvision's own. ``classes_file``
    ("<folder> <name>" per line, e.g. ImageNet's LOC_synset_mapping.txt) names the class folders so
    `alexnet evaluate` can match them with an ImageNet val/ tree; without it the classes are the names.
    """
    from torchvision.models import AlexNet_Weights

    path = existing_file(path)
    # This project's own files hold a network with its classes and preprocessing already: there is nothing
    # to import, and their keys would only be said not to fit torchvision's layout.
    if _is_safetensors(path) and is_weights_file(path):
        what = "this project's weights file (from export or import-torchvision)"
        raise UserError(_ALREADY.format(path=path, what=what))
    state = checkpoint.torch_load(path)
    if isinstance(state, dict) and {"model", "variant", "preprocessing"} <= state.keys():
        raise UserError(_ALREADY.format(path=path, what="this project's training checkpoint"))
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{path} is not a torchvision state_dict (expected a dict of tensors)")
    fc8 = state.get("classifier.6.weight")
    num_classes = fc8.shape[0] if is_float(fc8) and fc8.dim() == 2 else 1000
    meta = AlexNet_Weights.IMAGENET1K_V1.meta
    if num_classes != len(meta["categories"]):
        raise UserError(f"{path} has {num_classes} outputs; torchvision's ImageNet weights have "
                        f"{len(meta['categories'])}")
    model = build_network(state, "owt", num_classes, where=str(path))
    names = list(meta["categories"])
    classes = names
    if classes_file:
        classes, named = _read_classes_file(classes_file, num_classes)
        _check_order(classes_file, named, names)
    metrics = {}
    # Only the published file is IMAGENET1K_V1, with its published accuracy; other weights in its layout
    # (fine-tuned, random, another training) are said to be what they are.
    source = f"torchvision's AlexNet layout from {path.name} (not the published IMAGENET1K_V1 file)"
    if _sha256(path).startswith(TORCHVISION_SHA256_PREFIX):
        acc = meta["_metrics"]["ImageNet-1K"]
        metrics = {"imagenet1k_val_top1": acc["acc@1"] / 100, "imagenet1k_val_top5": acc["acc@5"] / 100}
        source = f"torchvision AlexNet_Weights.IMAGENET1K_V1 ({path.name})"
    return LoadedModel(model, classes, names, 224, "imagenet", Normalize.create("imagenet"), metrics, source)


_ALREADY = ("{path} is {what}, already an alexnet network with its classes and preprocessing: give it to "
            "--checkpoint of predict, evaluate or export directly (import-torchvision reads torchvision's "
            "alexnet-owt-*.pth)")


def _read_classes_file(path: str | Path, count: int) -> tuple[list[str], list[str]]:
    """The folder of each output, and the readable name the file gives it ("" where it gives none)."""
    if Path(path).is_dir():
        raise UserError(f"{path} is a folder; --classes takes a text file, '<folder> <name>' per line in output order")
    rows = read_pairs(existing_file(path))   # a folder named twice is refused there
    if len(rows) != count:
        raise UserError(f"{path} names {len(rows)} classes; the weights have {count} outputs")
    return [folder for folder, _ in rows], [name for _, name in rows]


def _check_order(path: str | Path, named: list[str], names: list[str]) -> None:
    """A mapping file in another order than the weights' outputs (sorted by name, say) would give each output
    another class's folder, and fine-tuning would carry the wrong rows: where the file has readable names,
    most must list torchvision's name of that output among their synonyms ("tench, Tinca tinca")."""
    rows = [i for i, name in enumerate(named) if name]
    if not rows:
        return
    differ = [i for i in rows if names[i].lower() not in {w.strip().lower() for w in named[i].split(",")}]
    if len(differ) > len(rows) / 2:
        i = differ[0]
        print(printable(f"warning: {path} disagrees with the weights' own names at {len(differ)} of its "
                        f"{len(rows)} named classes (output {i}: {names[i]!r}; the file: {named[i]!r}): is it "
                        f"in the order of the outputs, ImageNet's sorted WordNet ids (LOC_synset_mapping.txt)?"),
              file=sys.stderr)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
