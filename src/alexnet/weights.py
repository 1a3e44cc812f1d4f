"""Reading and writing checkpoints: atomic writes, and loads that never run code from a file.

A checkpoint is a dict of tensors and plain Python data (numbers, strings, lists, dicts), so
``torch.load(path, weights_only=True)`` reads it; a file that would need to unpickle anything else is
refused with a clear message instead of being trusted.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import UserError
from alexnet.files import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename: never half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``weights_only=True``; UserError if it is missing or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(f"{path} holds Python objects that would run code when loaded; refusing to load it "
                            f"(only tensors and plain data are accepted)") from None
        raise UserError(f"{path} is not a readable checkpoint ({detail})") from None
    except Exception as e:  # truncated zip, wrong format, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not an alexnet checkpoint (no 'model' entry)")
    return state
