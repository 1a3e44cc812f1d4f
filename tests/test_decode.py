"""Every kind of file a real dataset holds: decoded to correct RGB, or refused with a reason."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from alexnet.data.decode import UndecodableImage, load_fixed, open_rgb, resize_center


def patches(w=64, h=48) -> np.ndarray:
    """Four flat colour quadrants: easy to compare after lossy coding."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (200, 30, 60)
    a[: h // 2, w // 2:] = (20, 180, 90)
    a[h // 2:, : w // 2] = (40, 60, 220)
    a[h // 2:, w // 2:] = (240, 220, 30)
    return a


def inner(a: np.ndarray, margin=6) -> np.ndarray:
    """Quadrant centres, away from the edges JPEG blurs."""
    h, w = a.shape[:2]
    return np.stack([a[margin:h // 2 - margin, margin:w // 2 - margin].mean((0, 1)),
                     a[margin:h // 2 - margin, w // 2 + margin:-margin].mean((0, 1)),
                     a[h // 2 + margin:-margin, margin:w // 2 - margin].mean((0, 1)),
                     a[h // 2 + margin:-margin, w // 2 + margin:-margin].mean((0, 1))])


def png_bytes(width, height, bit_depth, colour_type, raw_rows: bytes, trns: bytes | None = None) -> bytes:
    """A PNG written by hand, for the kinds PIL will not write (48-bit RGB, 2-bit grey, absurd sizes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"tRNS", trns) if trns else b"")
            + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b""))


def test_rgb_jpeg(tmp_path):
    Image.fromarray(patches()).save(tmp_path / "a.jpg", quality=95)
    got = np.asarray(open_rgb(tmp_path / "a.jpg"))
    assert np.abs(inner(got) - inner(patches())).max() < 4


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    Image.fromarray(patches()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = open_rgb(tmp_path / "cmyk.jpg")
    assert got.mode == "RGB"
    assert np.abs(inner(np.asarray(got)) - inner(patches())).max() < 6


def test_png_named_jpeg_is_read_by_content(tmp_path):
    Image.fromarray(patches()).save(tmp_path / "n01440764_1.JPEG", format="PNG")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "n01440764_1.JPEG")), patches())


def test_greyscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((30, 40), 77, np.uint8), "L").save(tmp_path / "g.jpg")
    got = np.asarray(open_rgb(tmp_path / "g.jpg")).astype(int)
    assert got.shape == (30, 40, 3) and np.abs(got - 77).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    a = patches(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "o.jpg", quality=95, exif=exif)
    got = np.asarray(open_rgb(tmp_path / "o.jpg"))
    assert got.shape == (64, 48, 3)
    expected = np.rot90(a, k=-1)  # clockwise
    assert np.abs(got.astype(int) - expected).mean() < 4


def test_broken_exif_does_not_lose_the_image(tmp_path):
    Image.fromarray(patches()).save(tmp_path / "e.jpg", quality=95, exif=b"Exif\x00\x00MM\x00*garbage\xff\xff")
    got = np.asarray(open_rgb(tmp_path / "e.jpg"))
    assert np.abs(inner(got) - inner(patches())).max() < 4


def test_transparent_pixels_show_white_and_opaque_keep_colour(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)          # transparent black
    rgba[:10] = (10, 200, 30, 255)                   # opaque green top half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    got = np.asarray(open_rgb(tmp_path / "t.png"))
    assert (got[:10] == (10, 200, 30)).all() and (got[10:] == 255).all()


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 8, 4))
    p.save(tmp_path / "p.png", transparency=0)
    got = np.asarray(open_rgb(tmp_path / "p.png"))
    assert (got[:4] == (250, 0, 0)).all() and (got[4:] == 255).all()


def on_white(img: Image.Image) -> np.ndarray:
    """PIL's own reading of ``img``'s transparency, laid on white."""
    rgba = img.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB"))


def test_colour_key_transparency_is_composited_on_white(tmp_path):
    # A PNG's tRNS chunk in an RGB or grey image (one colour is transparent) was read as if opaque: the
    # transparent half black, where an RGBA image of the same pixels gave white.
    a = np.full((280, 320, 3), 200, np.uint8)
    a[:, :160] = 0
    a[:40, 200:] = (10, 90, 250)
    Image.fromarray(a).save(tmp_path / "rgb_key.png", transparency=(0, 0, 0))
    Image.fromarray(a[..., 2]).save(tmp_path / "l_key.png", transparency=0)
    for name in ("rgb_key.png", "l_key.png"):
        got = np.asarray(open_rgb(tmp_path / name))
        assert np.array_equal(got, on_white(Image.open(tmp_path / name))), name
        assert (got[:, :160] == 255).all() and (got[40:, 160:] == 200).all(), name
    assert load_fixed(tmp_path / "rgb_key.png")[:, :100].float().mean() == 255
    rgba = np.dstack([a, np.where(a.any(2), 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(load_fixed(tmp_path / "rgb_key.png"), load_fixed(tmp_path / "rgba.png"))
    # 16-bit grey: the key's pixels white, the others scaled by the bit depth (PIL would clip them to white).
    g = np.array([[0, 257 * 64, 32896, 65535]], np.uint16)
    Image.fromarray(g).save(tmp_path / "g16_key.png", transparency=257 * 64)
    assert Image.open(tmp_path / "g16_key.png").info["transparency"] == 257 * 64
    assert on_white(Image.open(tmp_path / "g16_key.png"))[0, :, 0].tolist() == [0, 255, 255, 255]
    assert np.asarray(open_rgb(tmp_path / "g16_key.png"))[0, :, 0].tolist() == [0, 255, 128, 255]
    assert np.asarray(open_rgb(tmp_path / "g16_key.png"))[0, :2].tolist() == [[0, 0, 0], [255, 255, 255]]


@pytest.mark.parametrize("depth", [2, 4])
def test_colour_key_of_a_2_or_4_bit_grey_png(tmp_path, depth):
    # The PNG standard compares tRNS's grey key with the file's own samples; PIL scales 2- and 4-bit samples
    # to 8 bits and not the key, so a key of 1 (85 or 17 once scaled) left its pixels opaque.
    samples = [0, 1, 2, 2**depth - 1]
    row = int("".join(format(v, f"0{depth}b") for v in samples * (8 // depth)), 2).to_bytes(4, "big")
    path = tmp_path / f"g{depth}.png"
    path.write_bytes(png_bytes(4 * (8 // depth), 2, depth, 0, (b"\0" + row) * 2, trns=struct.pack(">H", 1)))
    scale = 255 // (2**depth - 1)
    got = np.asarray(open_rgb(path))
    assert got.shape == (2, 4 * (8 // depth), 3) and (got == got[..., :1]).all()
    assert got[0, :4, 0].tolist() == [0, 255, 2 * scale, 255]


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 64, 32896, 65535]], np.uint16)  # 0, 64, 128, 255 in 8 bits
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert got[0, :, 0].tolist() == [0, 64, 128, 255] and (got[..., 0] == got[..., 2]).all()


def test_16_bit_rgb_png(tmp_path):
    w, h = 4, 2
    values = np.array([[[65535, 0, 32896]] * w] * h, dtype=">u2")
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(h))
    (tmp_path / "rgb48.png").write_bytes(png_bytes(w, h, 16, 2, rows))
    got = np.asarray(open_rgb(tmp_path / "rgb48.png"))
    assert got.shape == (2, 4, 3) and (got == (255, 0, 128)).all()


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpg", b"", r"an empty file \(0 bytes\)"),
    ("notes.jpg", b"these are my notes, not a picture\n", "not an image"),
])
def test_files_that_are_not_images_are_refused(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UndecodableImage, match=reason):
        open_rgb(tmp_path / name)


def test_pipes_devices_and_folders_are_refused_without_reading_them(tmp_path):
    # A named pipe would block the open until a writer came; /dev/zero would be read for ever.
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    for path, reason in ((tmp_path / "pipe.jpg", "not a regular file"), ("/dev/zero", "not a regular file"),
                         (tmp_path / "folder.jpg", "a folder, not an image file")):
        with pytest.raises(UndecodableImage, match=reason):
            open_rgb(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(tmp_path, fmt):
    rng = np.random.default_rng(0)
    path = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UndecodableImage):
        load_fixed(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 100,000 x 100,000 pixels declared in 60 bytes: must be refused from the header alone.
    (tmp_path / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 1, 0, b"\x00" * 64))
    # PIL refuses it first (over twice its limit, in its own words and number): said as the limit here is.
    with pytest.raises(UndecodableImage, match="^10,000,000,000 pixels is over the 89,478,485-pixel limit "
                                               r"\(a decompression bomb\?\)$"):
        open_rgb(tmp_path / "bomb.png")
    Image.fromarray(patches()).save(tmp_path / "big.png")
    with pytest.raises(UndecodableImage, match="limit"):
        open_rgb(tmp_path / "big.png", max_pixels=1000)


def test_a_jpeg_over_the_limit_is_judged_at_the_scale_it_decodes_at(tmp_path, monkeypatch):
    # A 200-megapixel phone photo decodes at 1/8 scale, far under the limit; PIL's own refusal at open (over
    # twice its MAX_IMAGE_PIXELS, here made small to stand for 178M) must not stop it.
    Image.fromarray(np.kron(patches(), np.ones((25, 25, 1), np.uint8))).save(tmp_path / "big.jpg", quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    got = np.asarray(open_rgb(tmp_path / "big.jpg", min_side=64, max_pixels=100_000))   # 1600x1200 -> 200x150
    assert got.shape == (150, 200, 3) and np.abs(inner(got, 3) - inner(patches(200, 150), 3)).max() < 6
    with pytest.raises(UndecodableImage, match="1600x1200 pixels is over the 100,000-pixel limit"):
        open_rgb(tmp_path / "big.jpg", max_pixels=100_000)   # no reduced scale asked for: the whole of it


def test_a_progressive_jpeg_over_the_limit_is_judged_at_its_full_size(tmp_path):
    # libjpeg holds a progressive JPEG's coefficients at full size whatever the scale it decodes at: a
    # 24000x24000 one of 1 MB took 1.1 GB. Here 1600x1200 against a limit of 100,000 stands for it.
    big = Image.fromarray(np.kron(patches(), np.ones((25, 25, 1), np.uint8)))
    big.save(tmp_path / "baseline.jpg", quality=95)
    big.save(tmp_path / "progressive.jpg", quality=95, progressive=True)
    assert Image.open(tmp_path / "progressive.jpg").info.get("progressive")
    assert open_rgb(tmp_path / "baseline.jpg", min_side=64, max_pixels=100_000).size == (200, 150)
    with pytest.raises(UndecodableImage, match=r"^1600x1200 pixels \(a JPEG of several scans, held whole as "
                                               r"it decodes\) is over the 100,000-pixel limit \(a decompression "
                                               r"bomb\?\)$"):
        open_rgb(tmp_path / "progressive.jpg", min_side=64, max_pixels=100_000)
    # Under the limit it still decodes at the reduced scale.
    assert open_rgb(tmp_path / "progressive.jpg", min_side=64, max_pixels=2_000_000).size == (200, 150)


def grey_jpeg(w: int, h: int, scans_apart: bool) -> bytes:
    """A baseline (not progressive) JPEG of w x h flat grey, its three components in one scan or each in a
    scan of its own: 2 bits a block, so a 20000x20000 one is 4.7 MB."""
    def segment(marker, body):
        return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body

    one_code = bytes([1] + [0] * 15) + b"\x00"   # one symbol (DC difference 0; AC end of block), code "0"
    out = b"\xff\xd8" + segment(0xDB, b"\x00" + bytes([1] * 64))
    out += segment(0xC0, bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([3, 1, 0x11, 0, 2, 0x11, 0,
                                                                                          3, 0x11, 0]))
    out += segment(0xC4, b"\x00" + one_code) + segment(0xC4, b"\x10" + one_code)
    blocks = ((w + 7) // 8) * ((h + 7) // 8)
    if scans_apart:
        for c in (1, 2, 3):
            out += segment(0xDA, bytes([1, c, 0, 0, 63, 0])) + bytes((2 * blocks + 7) // 8)
    else:
        out += segment(0xDA, bytes([3, 1, 0, 2, 0, 3, 0, 0, 63, 0])) + bytes((6 * blocks + 7) // 8)
    return out + b"\xff\xd9"


def test_a_baseline_jpeg_of_several_scans_over_the_limit_is_judged_at_its_full_size(tmp_path):
    # libjpeg buffers every coefficient at full size for a baseline JPEG whose colours come in scans of their
    # own, as for a progressive one: a 20000x20000 one of 4.7 MB took 2.8 GB decoded at 1/8 scale, where one
    # of a single scan took 0.6 GB. Here 1600x1200 against a limit of 100,000 stands for it.
    (tmp_path / "apart.jpg").write_bytes(grey_jpeg(1600, 1200, scans_apart=True))
    (tmp_path / "one.jpg").write_bytes(grey_jpeg(1600, 1200, scans_apart=False))
    assert not Image.open(tmp_path / "apart.jpg").info.get("progressive")
    assert open_rgb(tmp_path / "one.jpg", min_side=64, max_pixels=100_000).size == (200, 150)
    with pytest.raises(UndecodableImage, match=r"^1600x1200 pixels \(a JPEG of several scans, held whole"):
        open_rgb(tmp_path / "apart.jpg", min_side=64, max_pixels=100_000)
    # Under the limit it decodes (flat grey), at the reduced scale.
    got = open_rgb(tmp_path / "apart.jpg", min_side=64, max_pixels=2_000_000)
    assert got.size == (200, 150) and np.ptp(np.asarray(got)) == 0


def test_deep_greyscale_is_scaled_by_its_bit_depth_not_its_values(tmp_path):
    dark = np.array([[0, 100, 200, 255]], np.int64)   # a dark 16-bit image: it stays dark, whatever the format
    (tmp_path / "dark.pgm").write_bytes(b"P5 4 1 65535\n" + dark.astype(">u2").tobytes())
    Image.fromarray((dark * 65536).astype(np.int32), "I").save(tmp_path / "int32.tif")    # signed 32-bit: white 2^31-1
    Image.fromarray((dark / 255).astype(np.float32), "F").save(tmp_path / "unit.tif")   # float: white 1.0
    assert Image.open(tmp_path / "dark.pgm").mode == "I"
    assert np.asarray(open_rgb(tmp_path / "dark.pgm"))[0, :, 0].tolist() == [0, 0, 1, 1]           # v / 257
    # v * 2^16 * 255 / (2^31 - 1)
    assert np.asarray(open_rgb(tmp_path / "int32.tif"))[0, :, 0].tolist() == [0, 1, 2, 2]
    assert np.asarray(open_rgb(tmp_path / "unit.tif"))[0, :, 0].tolist() == [0, 100, 200, 255]
    # A 10-bit PGM: PIL scales it to 16 bits (1023 -> 65535), so white is white.
    (tmp_path / "ten.pgm").write_bytes(b"P5 2 1 1023\n" + np.array([0, 1023], ">u2").tobytes())
    assert np.asarray(open_rgb(tmp_path / "ten.pgm"))[0, :, 0].tolist() == [0, 255]


def tiff_bytes(values, bits: int, signed: bool, order: str = "<") -> bytes:
    """A one-row uncompressed greyscale TIFF of integer ``values`` (PIL writes no unsigned 32-bit ones)."""
    data = np.asarray(values).astype(f"{order}{'i' if signed else 'u'}{bits // 8}").tobytes()
    ifd_at, data_at = 8, 8 + 2 + 12 * 9 + 4
    # (tag, type, value): 3 is a 16-bit SHORT, 4 a 32-bit LONG, both held in the entry's 4 bytes
    tags = [(256, 3, len(values)), (257, 3, 1), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, data_at),
            (278, 3, 1), (279, 4, len(data)), (339, 3, 2 if signed else 1)]   # 339: SampleFormat
    entries = b"".join(struct.pack(f"{order}HHI", tag, kind, 1)
                       + (struct.pack(f"{order}HH", value, 0) if kind == 3 else struct.pack(f"{order}I", value))
                       for tag, kind, value in tags)
    head = (b"II" if order == "<" else b"MM") + struct.pack(f"{order}HI", 42, ifd_at)
    return head + struct.pack(f"{order}H", len(tags)) + entries + struct.pack(f"{order}I", 0) + data


@pytest.mark.parametrize("bits, signed, values, grey", [
    (32, False, [0, 2**31, 2**32 - 1], [0, 128, 255]),         # PIL reads 2^31 and up as negative numbers
    (32, True, [-2**31, 0, 2**30, 2**31 - 1], [0, 0, 128, 255]),
    (16, True, [-2**15, 0, 2**14, 2**15 - 1], [0, 0, 128, 255]),   # white 32767, as signed 32-bit's 2^31 - 1
    (16, False, [0, 2**15, 2**16 - 1], [0, 128, 255]),
])
@pytest.mark.parametrize("order", ["<", ">"])
def test_deep_greyscale_tiff_is_scaled_by_its_bit_depth_and_sign(tmp_path, bits, signed, values, grey, order):
    (tmp_path / "g.tif").write_bytes(tiff_bytes(values, bits, signed, order))
    if order == ">" and (bits, signed) == (32, False):   # PIL opens none: a file skipped as any it cannot read
        with pytest.raises(UndecodableImage, match="not an image"):
            open_rgb(tmp_path / "g.tif")
        return
    assert Image.open(tmp_path / "g.tif").mode in ("I", "I;16", "I;16B")
    got = np.asarray(open_rgb(tmp_path / "g.tif"))
    assert got[0, :, 0].tolist() == grey and (got == got[..., :1]).all()


@pytest.mark.parametrize("values", [[0.0, 255.0], [0.0, float("nan")], [-0.5, 0.5]])
def test_floating_point_pixels_outside_black_to_white_are_refused(tmp_path, values):
    Image.fromarray(np.array([values], np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(UndecodableImage, match="floating-point pixels from .* not 0 to 1"):
        open_rgb(tmp_path / "f.tif")


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (2, 3000), (4000, 7)])
def test_tiny_and_extreme_images_give_256_squares(tmp_path, size):
    Image.new("RGB", size, (12, 34, 56)).save(tmp_path / "x.png")
    out = load_fixed(tmp_path / "x.png")
    assert out.shape == (256, 256, 3) and out.dtype == torch.uint8
    assert (out == torch.tensor([12, 34, 56], dtype=torch.uint8)).all()


def test_resize_center_matches_torchvision_resize_then_center_crop():
    # A smooth image, so that sub-pixel differences in where the crop lands stay small.
    y, x = np.mgrid[0:300, 0:450]
    a = np.stack([x * 255 / 450, y * 255 / 300, (x + y) * 255 / 750], -1).astype(np.uint8)
    img = Image.fromarray(a)
    ours = torch.from_numpy(np.array(resize_center(img, 256))).permute(2, 0, 1).float()
    tv = TF.center_crop(TF.resize(TF.pil_to_tensor(img), 256, antialias=True), [256, 256]).float()
    assert (ours - tv).abs().mean() < 1.5


def test_large_jpeg_decoded_in_draft_mode_matches_full_decode(tmp_path):
    y, x = np.mgrid[0:1200, 0:1600]
    a = np.stack([x * 255 / 1600, y * 255 / 1200, np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=95)
    fast = load_fixed(tmp_path / "big.jpg").float()
    full = torch.from_numpy(np.array(resize_center(Image.open(tmp_path / "big.jpg").convert("RGB")))).float()
    assert (fast - full).abs().mean() < 2


def test_a_signal_while_decoding_is_no_unreadable_image(tmp_path, monkeypatch):
    # A scheduler's SIGTERM lands wherever the trainer is, often inside a decoder: it must end the command,
    # not be taken for a broken file (skipped, and the statistics cached without the image).
    import signal

    from alexnet.errors import Stopped

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")

    def signalled(*args, **kwargs):
        raise Stopped(signal.SIGTERM)
    monkeypatch.setattr(Image.Image, "load", signalled)
    with pytest.raises(Stopped):
        load_fixed(tmp_path / "a.png")


def test_deep_greyscale_is_converted_a_few_rows_at_a_time(tmp_path):
    # Its float64 copies were made of the whole image: 27 bytes a pixel at the peak (2.4 GB for a 9400x9400
    # 16-bit PNG of 172 KB, under the pixel limit), against 4 for an 8-bit RGB image. NumPy's allocations
    # are what tracemalloc sees; the values are the float64 formula's, v * 255 / 65535 rounded.
    import tracemalloc

    from alexnet.data.decode import _deep_to_rgb

    values = (np.arange(3000 * 3000, dtype=np.int64) * 7919 % 65536).reshape(3000, 3000)
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "deep.png")
    img = Image.open(tmp_path / "deep.png")
    img.load()
    tracemalloc.start()
    try:
        got = _deep_to_rgb(img, 65535)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * values.size, f"{peak / values.size:.1f} bytes a pixel"
    expected = np.clip(np.rint(values * (255 / 65535)), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(got)[..., 0], expected) and got.mode == "RGB"


def test_stray_bytes_between_a_jpegs_segments_do_not_make_it_several_scans(tmp_path):
    # libjpeg skips bytes between segments (with a warning) and decodes such a file at any scale; the marker
    # reading judged it as of several scans, at its full size, and refused it as a bomb.
    one, apart = grey_jpeg(1600, 1200, scans_apart=False), grey_jpeg(1600, 1200, scans_apart=True)
    sof = one.index(b"\xff\xc0")
    (tmp_path / "padded.jpg").write_bytes(one[:sof] + b"\x00\x00\x17" + one[sof:])
    (tmp_path / "padded-apart.jpg").write_bytes(apart[:sof] + b"\x00\x00\x17" + apart[sof:])
    assert open_rgb(tmp_path / "padded.jpg", min_side=64, max_pixels=100_000).size == (200, 150)
    with pytest.raises(UndecodableImage, match=r"^1600x1200 pixels \(a JPEG of several scans"):
        open_rgb(tmp_path / "padded-apart.jpg", min_side=64, max_pixels=100_000)
