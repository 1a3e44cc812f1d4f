"""Image files as they really are -> correct RGB at the paper's fixed 256x256, or a reason they can't be.

Real datasets hold CMYK JPEGs (22 in ImageNet's train set), PNGs named .JPEG, greyscale, palette and
RGBA images, 16-bit PNGs, broken EXIF, truncated and zero-byte files, and the odd decompression bomb.
`load_fixed` turns each decodable file into the paper's fixed preprocessing (shorter side to 256,
centre 256x256) as uint8 (H, W, 3), and raises UndecodableImage for the rest, so the caller can skip it.

Images smaller than 256 are upscaled (the paper), or with ``small="pad"`` placed unscaled at the centre of
a canvas of the mean colour (the seed's rule; see pad_small).
"""

from __future__ import annotations

import io
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

FIXED_SIZE = 256
# PIL's own decompression-bomb threshold (about 9,500 x 9,500): larger images are refused, not decoded.
MAX_PIXELS = 89_478_485
TRANSPARENT_BACKGROUND = (255, 255, 255)  # what a viewer shows behind transparent pixels
# The border of a padded small image: ImageNet's mean colour, which torchvision's normalisation maps to
# zero. A data set's own mean is not known when its images are decoded (its statistics are computed from
# the decoded images), so a network normalised by its own mean sees the border as nearly, not exactly, 0.
PAD_FILL = (124, 116, 104)

_SRGB = ImageCms.createProfile("sRGB")


class UndecodableImage(Exception):
    """The file is not an image this project can read; the message says why."""


def open_rgb(path: str | Path, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an upright RGB PIL image.

    With ``min_side``, JPEGs are decoded at a reduced DCT scale (PIL's draft mode) while both sides stay
    at least ``min_side``: a 4000x3000 photo decodes 8x faster, and the later resize to 256 sees the same
    picture within resampling noise.
    """
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            # PIL warns about bombs (refused below, by our own limit) and corrupt EXIF (harmless): a
            # warning per file per epoch would bury the one line about a file that was really skipped.
            warnings.simplefilter("ignore")
            # A Path opens itself: a member of an archive is a Path that reads it (data/tars.py).
            with (path.open("rb") if isinstance(path, Path) else open(path, "rb")) as f, _open_image(f) as img:
                full = img.size
                if min_side and img.format == "JPEG":
                    # Before the limit: a 12000x12000 photo decodes at 1500x1500 and is no bomb. No JPEG
                    # (at most 65535 a side) decodes at 1/8 scale to more than 67M pixels.
                    img.draft(None, (min_side, min_side))
                # A JPEG of several scans is not: libjpeg holds all its coefficients, at full size, whatever
                # the scale it decodes at (a 65535x65535 one of 25 MB would take 26 GB), so its full size is
                # judged. Progressive ones are, and baseline ones whose colours come in scans of their own.
                whole = img.format == "JPEG" and full[0] * full[1] > max_pixels and \
                    (img.info.get("progressive") or _scans_apart(f))
                w, h = full if whole else img.size
                if w * h > max_pixels:
                    kind = " (a JPEG of several scans, held whole as it decodes)" if (w, h) != img.size else ""
                    raise UndecodableImage(f"{full[0]}x{full[1]} pixels{kind} is over the {max_pixels:,}-pixel "
                                           f"limit (a decompression bomb?)")
                _scale_grey_key(img)
                img.load()
                white = _white(img)   # from the file's tags, which the upright copy no longer has
                return _to_rgb(_upright(img), white)
    except UndecodableImage:
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, EOFError, ...
        raise UndecodableImage(_reason(e, path)) from None


def _scans_apart(f) -> bool:
    """Whether the JPEG in ``f`` comes in several scans: its first scan holds fewer components than its
    frame (libjpeg then buffers the whole image, as for a progressive one). Read from the markers up to
    that scan as libjpeg reads them (stray bytes between segments skipped); ``f``'s position is kept. A file
    whose markers lead to no scan is not: libjpeg cannot decode it either, and says why."""
    at = f.tell()
    try:
        f.seek(2)
        frame = None
        while (marker := _next_marker(f)) is not None:
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:   # no length follows
                continue
            length = int.from_bytes(f.read(2), "big")
            if marker == 0xD9 or length < 2:
                return False
            body = f.read(min(length - 2, 8))
            if marker in _FRAMES and len(body) >= 6:
                frame = body[5]
            elif marker == 0xDA:   # start of scan: its first byte counts its components
                return frame is not None and len(body) > 0 and body[0] < frame
            f.seek(length - 2 - len(body), 1)
        return False
    finally:
        f.seek(at)


def _next_marker(f) -> int | None:
    """The next marker's code in ``f``, past any stray bytes and fill bytes before it (as libjpeg's
    next_marker, which warns and goes on); None at the end of the file."""
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None
        if byte != b"\x00":   # FF 00 is a stuffed byte, not a marker
            return byte[0]


_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}   # SOF0-15 but DHT, JPG, DAC


def _open_image(f) -> Image.Image:
    # PIL refuses an image over twice its pixel limit as it opens it; a JPEG (a 200-megapixel phone photo)
    # is opened by its plugin and judged by open_rgb after its reduced-scale draft (a progressive one at full size).
    if f.read(3) == b"\xff\xd8\xff":
        f.seek(0)
        return JpegImagePlugin.JpegImageFile(f)
    f.seek(0)
    return Image.open(f)


def load_fixed(path: str | Path, size: int = FIXED_SIZE, small: str = "upscale") -> torch.Tensor:
    """The paper's fixed preprocessing: shorter side to ``size``, centre ``size`` x ``size``; uint8 (H, W, 3).
    With ``small`` "pad", a shorter side under ``size`` is padded to it instead of scaled (pad_small)."""
    img = open_rgb(path, min_side=size)   # draft mode keeps both sides >= size, so a small image stays whole
    if small == "pad":
        img = pad_small(img, size)
    return torch.from_numpy(np.asarray(resize_center(img, size)).copy())


def pad_small(img: Image.Image, size: int = FIXED_SIZE) -> Image.Image:
    """``img`` at the centre of a PAD_FILL canvas at least ``size`` on each side, its pixels unscaled;
    ``img`` itself when both sides are already ``size`` or more. A 100x60 image becomes the middle of a
    256x256 one; a 100x400 image keeps its height, and the fixed preprocessing then takes its centre rows."""
    w, h = img.size
    if min(w, h) >= size:
        return img
    canvas = Image.new("RGB", (max(w, size), max(h, size)), PAD_FILL)
    canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
    return canvas


def resize_center(img: Image.Image, size: int = FIXED_SIZE) -> Image.Image:
    """Shorter side to ``size``, then the centre ``size`` x ``size``, in one resample.

    Resampling only the central square (PIL's ``box``) scales by exactly size / shorter side, and never
    builds a 256 x 1,000,000 image from an extreme panorama. Resizing the whole image first (torchvision's
    Resize(256), then CenterCrop) rounds the longer side to whole pixels: where it is not whole (500x375 ->
    341.33x256) that scale differs slightly, and so do the pixels.
    """
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF: the pixels are fine, only the orientation tag is not
        return img


def _to_rgb(img: Image.Image, white: int = 65535) -> Image.Image:
    mode = img.mode
    # A colour key (PNG's tRNS chunk in a grey or RGB image, GIF's transparent palette entry): the pixels of
    # one value are transparent, as an alpha channel's 0 is, and are composited on white as those are.
    keyed = "transparency" in img.info and mode in ("1", "L", "P", "RGB", "I", "I;16", "I;16B", "I;16L")
    if mode == "RGB" and not keyed:
        return img
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I;16") or mode in ("I", "F"):
        rgb = _deep_to_rgb(img, white)
        return _keyed_on_white(img, rgb) if keyed else rgb
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or keyed:
        try:
            rgba = img.convert("RGBA")
        except (TypeError, ValueError):
            if not keyed:
                raise
            return img.convert("RGB")   # a key PIL cannot use (a broken chunk): the image, opaque, not lost
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, YCbCr, LAB, HSV


def _keyed_on_white(img: Image.Image, rgb: Image.Image) -> Image.Image:
    """``rgb``, the 8-bit form of a 16- or 32-bit grey ``img``, white where ``img`` holds its colour key:
    PIL's own convert to RGBA finds the key's pixels, but clips the grey of all the others."""
    key = img.info["transparency"]
    if not isinstance(key, int):   # not a grey value: a broken chunk, which leaves the image opaque
        return rgb
    out = np.array(rgb)
    out[np.asarray(img) == key] = TRANSPARENT_BACKGROUND
    return Image.fromarray(out, "RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    # With an embedded ICC profile (usual for print CMYK), convert through it to sRGB; PIL's plain
    # convert() is the naive 255 - (C + K) and shifts those colours noticeably.
    icc = img.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, _SRGB, outputMode="RGB")
        except Exception:  # a broken profile: fall back to the naive conversion rather than drop the image
            pass
    return img.convert("RGB")


def _deep_to_rgb(img: Image.Image, white: int) -> Image.Image:
    # 16-bit (and 32-bit integer or float) greyscale: PIL's convert() clips everything above 255 to white.
    # The scale is the file's bit depth, never its pixels' range: a dark 16-bit image stays dark.
    a = np.asarray(img)
    if white == 2**32 - 1:   # PIL holds unsigned 32-bit pixels in its signed "I": from 2^31 up they read as negative
        a = a.view(np.uint32)
    if img.mode == "F":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        # Float pixels mean 0 (black) to 1 (white) by the usual convention (scikit-image, torchvision);
        # other ranges (0-255, 0-65535, HDR radiance) say nothing of where white is, so they are refused.
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-3 and hi <= 1 + 1e-3):
            raise UndecodableImage(f"floating-point pixels from {lo:g} to {hi:g}, not 0 to 1 (black to white): "
                                   f"save it with 8 or 16 bits per pixel")
    scale = 255.0 if img.mode == "F" else 255.0 / white
    # In float64 a few rows at a time: the whole image's float64 copies took 27 bytes a pixel (2.4 GB for a
    # 9400x9400 16-bit PNG of 172 KB under the pixel limit), against 4 for an 8-bit RGB image.
    out = np.empty(a.shape, np.uint8)
    rows = max(1, 2**20 // max(1, a.shape[-1]))
    for i in range(0, len(a), rows):
        out[i:i + rows] = np.clip(np.rint(a[i:i + rows].astype(np.float64) * scale), 0, 255)
    return Image.fromarray(out, mode="L").convert("RGB")


def _scale_grey_key(img: Image.Image) -> None:
    """A 2- or 4-bit grey PNG's colour key in the 8-bit scale PIL gives its pixels (a 2-bit key of 3 is the
    white 255): PIL scales the pixels and a 1-bit key, not these, so their transparent pixels stayed opaque.
    Read before loading, while the tile still names the file's bit depth."""
    key = img.info.get("transparency")
    tile = img.tile[0] if img.format == "PNG" and img.mode == "L" and len(img.tile) == 1 else None
    depth = {"L;2": 2, "L;4": 4}.get(tile.args if tile is not None else None)
    if depth and isinstance(key, int) and 0 <= key < 2**depth:
        img.info["transparency"] = key * (255 // (2**depth - 1))


def _white(img: Image.Image) -> int:
    """The integer value of white if ``img`` is a 16- or 32-bit greyscale image (PIL's modes I;16* and I)."""
    tags = getattr(img, "tag_v2", None)
    if img.mode == "I" and tags is not None:
        # A TIFF that PIL gives as "I": 32-bit, or signed 16-bit. A signed one's white is its largest
        # positive value (negative pixels are black), whatever its bit depth.
        bits = tuple(np.atleast_1d(tags.get(258, (16,))))[0]
        signed = tuple(np.atleast_1d(tags.get(339, (1,))))[0] == 2   # TIFF's SampleFormat
        if bits in (16, 32):
            return 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    # I;16*, 16-bit PNG and TIFF, and PGM/PPM of more than 8 bits, which PIL gives scaled to 0-65535 as "I"
    return 65535


def _check_regular(path: str | Path) -> None:
    """A named pipe would block the open below until something writes to it, and a device (/dev/zero)
    read as an image never ends: neither is an image file."""
    try:
        # As given: an archive's member (data/tars.py) is a Path whose stat() describes the member.
        mode = (path if isinstance(path, Path) else Path(path)).stat().st_mode
    except (OSError, TypeError, ValueError):
        return   # opening it says why
    if stat.S_ISDIR(mode):
        raise UndecodableImage("a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise UndecodableImage("not a regular file (a pipe or a device)")


def _reason(e: Exception, path: str | Path) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if name == "UnidentifiedImageError":
        # An empty file is a copy or download cut short, not a format to look for.
        return "an empty file (0 bytes)" if _size(path) == 0 else "not an image (or an unsupported format)"
    if isinstance(e, OSError) and e.strerror:   # the file system's own words: no such file, permission denied
        return e.strerror[0].lower() + e.strerror[1:]
    if isinstance(e, Image.DecompressionBombError):   # PIL's refusal at open, at twice its own limit: said as ours
        pixels = re.search(r"\((\d+) pixels\)", text)
        size = f"{int(pixels[1]):,} pixels is " if pixels else ""
        return f"{size}over the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)"
    return f"{name}: {text}" if text else name


def _size(path: str | Path) -> int | None:
    try:
        # As given: an archive's member (data/tars.py) is a Path whose stat() gives the member's size.
        return (path if isinstance(path, Path) else Path(path)).stat().st_size
    except (OSError, TypeError, ValueError):
        return None
