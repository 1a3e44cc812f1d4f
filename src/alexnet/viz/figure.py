"""A matplotlib figure of an exact pixel size, and writing it so that a kill never leaves half a file.

Figures are made without pyplot: no global figure list to leak from and no backend that could try to
open a window; the Agg canvas renders on any machine, display or not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alexnet.errors import UserError, printable
from alexnet.files import atomic_write, head, replaceable, tail

DPI = 100
FORMATS = ("png", "svg", "pdf")


def new_figure(width_px: int, height_px: int) -> Figure:
    """A blank figure that saves as exactly ``width_px`` x ``height_px`` pixels (no tight bbox)."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def axes_at(fig: Figure, left: float, top: float, width: float, height: float):
    """Axes placed in pixels from the figure's top-left corner; exact placement keeps image tiles crisp."""
    w, h = fig.get_size_inches() * DPI
    return fig.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))


def writable(path: str | Path) -> Path:
    """``path`` if a picture may be written there (checked before the work that draws it, and again when
    saving): a known format, not a folder, and not a file other than an earlier figure."""
    path = Path(path)
    if path.suffix.lstrip(".").lower() not in FORMATS + ("",):
        raise UserError(f"cannot write a picture as {path.name}; use a .png (or .svg, .pdf) file name")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name such as {path / 'picture.png'}")
    # A photo given as --out (the very image being drawn), or any other file of the user's, is kept.
    return replaceable(path, _drawn_by_matplotlib, "a picture drawn by alexnet viz (or matplotlib)")


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from its suffix, PNG by default) through a temporary file."""
    path = writable(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _drawn_by_matplotlib(path: Path) -> bool:
    """Whether ``path`` names itself as made by matplotlib: an earlier figure, which a new one may replace.
    Its PNG and SVG files say so near the start; a PDF in its /Producer, written last, just before the
    cross-reference table, so a figure over 64 KB says it only in its tail."""
    start = head(path, 64 * 1024)
    return b"Matplotlib" in start or (start.startswith(b"%PDF") and b"Matplotlib" in tail(path, 64 * 1024))


def show_image(ax, image: torch.Tensor | np.ndarray) -> None:
    """A uint8 (H, W, 3) image filling ``ax``, without ticks or frame."""
    ax.imshow(np.asarray(image), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of a (H, W, 3) image: the view the network sees at test time."""
    h, w = image.shape[:2]
    top, left = round((h - size) / 2), round((w - size) / 2)   # as transforms.view_positions rounds
    return image[top:top + size, left:left + size]


def shorten(text: str, limit: int) -> str:
    """A name from the disk as a picture draws it, in at most ``limit`` characters (see ``drawable``)."""
    text = printable(text)
    return drawable(text if len(text) <= limit else text[:limit - 1] + "\u2026")


def drawable(text: str) -> str:
    """``text`` that matplotlib draws as it is: a byte no encoding decoded (a Latin-1 file name, read as
    "\\udce9") and control characters as escapes (matplotlib failed on them, with a traceback), and "$"
    as itself, not the start of a formula ("$5 and $6.jpg", "$\\frac$.png")."""
    return printable(text).replace("$", "\\$")
