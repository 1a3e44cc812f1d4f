"""Small datasets the tests write themselves, and the `alexnet` command as a subprocess."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def run_cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    """`python -m alexnet ARGS...` in a fresh interpreter, output captured as text."""
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def write_image_folders(root: Path, colours: dict[str, list[tuple[int, int, int]]],
                        splits=("train", "val"), size=(40, 30)) -> Path:
    """root/<split>/<class>/<i>.png, one flat-coloured image per colour (PNG: colours survive exactly)."""
    for split in splits:
        for cls, cols in colours.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(cols):
                Image.new("RGB", size, c).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_folders(tmp_path):
    """Two classes of flat colours, 3 images each, in train and val."""
    rng = np.random.default_rng(0)
    colours = {cls: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(3)] for cls in ("cat", "dog")}
    return write_image_folders(tmp_path / "data", colours), colours
