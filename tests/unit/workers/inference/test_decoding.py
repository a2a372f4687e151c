"""Unit tests for workers.inference.decoding. The corpus is generated here, in code: no files,
no network."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from storage.records import ErrorReason
from workers.inference import ALLOWED_FORMATS, ImageRejected, configure_pillow, decode_image

SIZE = (24, 40)  # (height, width); not square, so a swapped order shows
MAX_PIXELS = 50_000_000
RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

Array = npt.NDArray[np.uint8]


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _decode(data: bytes, size: tuple[int, int] = SIZE, max_pixels: int = MAX_PIXELS) -> Array:
    return decode_image(data, size, max_pixels=max_pixels)


def _rejection(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        _decode(data, max_pixels=max_pixels)
    return caught.value


def _assert_colour(pixels: Array, colour: tuple[int, int, int], tolerance: int = 0) -> None:
    error = np.abs(pixels.astype(int) - np.array(colour)).max()
    assert error <= tolerance, f"expected {colour} +-{tolerance}, off by {error}"


def _noise(width: int = 128, height: int = 96) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _halves(mode: str, size: tuple[int, int], left: Any, right: Any) -> Image.Image:
    """An image of ``size`` (width, height) whose left half is ``left`` and right half ``right``."""
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def _blank_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of any size; all-zero rows compress to a few KB.

    Built chunk by chunk so a 20000x20000 bomb never needs 400 MB in memory here.
    """

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body)
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_allowed_formats() -> None:
    assert sorted(ALLOWED_FORMATS) == ["BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP"]


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [("JPEG", 4), ("PNG", 0), ("WEBP", 6), ("GIF", 0), ("BMP", 0), ("TIFF", 0)],
)
def test_allowed_format_decodes_to_requested_size(fmt: str, tolerance: int) -> None:
    colour = (200, 100, 50)
    out = _decode(_encode(Image.new("RGB", (64, 48), colour), fmt))
    assert out.shape == (*SIZE, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    assert out.flags["WRITEABLE"]
    _assert_colour(out, colour, tolerance)


def test_stretches_without_cropping() -> None:
    img = Image.new("RGB", (200, 20), RED)  # 10:1, far wider than SIZE
    img.paste((0, 255, 0), (0, 0, 20, 20))
    img.paste(BLUE, (180, 0, 200, 20))
    out = _decode(_encode(img, "PNG"))
    _assert_colour(out[:, 0], (0, 255, 0))  # a centre crop would have lost both edges
    _assert_colour(out[:, -1], BLUE)


def test_fine_detail_is_averaged_when_shrinking_far() -> None:
    # Two white columns in every ten, shrunk 10x: each output pixel must carry the average (51),
    # not whichever two source columns a bilinear sample lands on (black, here).
    height, width = SIZE
    columns = np.where(np.arange(width * 10) % 10 < 2, 255, 0).astype(np.uint8)
    stripes = np.broadcast_to(columns[None, :, None], (height * 10, width * 10, 3))
    out = _decode(_encode(Image.fromarray(np.ascontiguousarray(stripes)), "PNG"))
    _assert_colour(out, (51, 51, 51), tolerance=1)


def test_empty() -> None:
    assert _rejection(b"").reason == ErrorReason.EMPTY


@pytest.mark.parametrize(
    "data",
    [
        b"This is a text file someone named photo.jpg\n",
        b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    ],
    ids=["text", "html", "random"],
)
def test_not_an_image(data: bytes) -> None:
    assert _rejection(data).reason == ErrorReason.NOT_AN_IMAGE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated(fmt: str) -> None:
    data = _encode(_noise(), fmt)
    rejected = _rejection(data[: len(data) // 2])
    assert rejected.reason == ErrorReason.TRUNCATED
    assert fmt in rejected.detail


def _bogus_marker_in_scan(data: bytearray) -> None:
    middle = (data.index(b"\xff\xda") + len(data)) // 2  # inside the entropy-coded scan
    data[middle : middle + 2] = b"\xff\x78"  # not a JPEG marker: libjpeg stops with an error


def _garbage_huffman_table(data: bytearray) -> None:
    table = data.index(b"\xff\xc4")
    data[table + 5 : table + 25] = b"\xff" * 20


@pytest.mark.parametrize("corrupt", [_bogus_marker_in_scan, _garbage_huffman_table])
def test_corrupt_jpeg_is_unreadable(corrupt: Callable[[bytearray], None]) -> None:
    # Flipped bits inside the scan alone usually decode to garbage with no error at all:
    # libjpeg only warns. Structural damage is what it rejects, as "broken data stream".
    data = bytearray(_encode(_noise(256, 256), "JPEG", quality=90))
    corrupt(data)
    rejected = _rejection(bytes(data))
    assert rejected.reason == ErrorReason.UNREADABLE
    assert "JPEG" in rejected.detail
    assert "broken data stream" in rejected.detail


def test_corrupt_png_data_is_unreadable() -> None:
    data = bytearray(_encode(_noise(), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 50] = bytes(50)
    assert _rejection(bytes(data)).reason == ErrorReason.UNREADABLE


def test_broken_header_of_allowed_format_is_unreadable() -> None:
    data = _encode(_noise(), "GIF")[:10]  # the signature, then the header stops
    rejected = _rejection(data)
    assert rejected.reason == ErrorReason.UNREADABLE
    assert "GIF" in rejected.detail


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "PPM", "TGA"])
def test_unsupported_format(fmt: str) -> None:
    rejected = _rejection(_encode(Image.new("RGB", (32, 32), RED), fmt))
    assert rejected.reason == ErrorReason.UNSUPPORTED_FORMAT
    assert fmt in rejected.detail


def test_cmyk_jpeg_colour() -> None:
    data = _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    _assert_colour(_decode(data), RED, tolerance=6)


@pytest.mark.parametrize(
    ("dtype", "fmt", "mode", "left", "right", "expected"),
    [
        # The headline case: every value > 255. Clipping would make it all white.
        (np.uint16, "PNG", "I;16", 40000, 40000, (156, 156)),
        (np.uint16, "PNG", "I;16", 0, 65535, (0, 255)),
        (">u2", "TIFF", "I;16B", 40000, 257 * 100, (156, 100)),
        (np.int32, "TIFF", "I", 0, 65535, (0, 255)),  # fits 16 bits: the 16-bit range
        (np.int32, "TIFF", "I", -1000, 1_000_000, (0, 255)),  # its own range
        (np.float32, "TIFF", "F", 0.0, 0.5, (0, 128)),  # 0..1 stays 0..1
        (np.float32, "TIFF", "F", 100.0, 300.0, (0, 255)),  # its own range
    ],
)
def test_wide_grayscale_is_scaled_not_clipped(
    dtype: Any, fmt: str, mode: str, left: float, right: float, expected: tuple[int, int]
) -> None:
    values = np.full((8, 8), right, dtype=dtype)
    values[:, :4] = left
    data = _encode(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really holds that mode
    out = _decode(data, size=(8, 8))
    assert (out[:, :4] == expected[0]).all()
    assert (out[:, 4:] == expected[1]).all()


@pytest.mark.parametrize("mode", ["1", "L", "P", "YCbCr", "LAB", "RGBA"])
def test_other_modes_become_rgb(mode: str) -> None:
    data = _encode(Image.new("RGB", (16, 16), WHITE).convert(mode), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    _assert_colour(_decode(data), WHITE, tolerance=3)


def test_gray_is_replicated() -> None:
    out = _decode(_encode(Image.new("L", (16, 16), 77), "PNG"))
    _assert_colour(out, (77, 77, 77))


def test_palette_transparency_becomes_white() -> None:
    img = _halves("P", (16, 16), 0, 1)
    img.putpalette([*RED, *BLACK])  # index 1 is black under its transparency
    data = _encode(img, "PNG", transparency=1)
    out = _decode(data, size=(16, 16))
    _assert_colour(out[:, 0], RED)
    _assert_colour(out[:, -1], WHITE)


@pytest.mark.parametrize(
    ("base", "colour", "fmt", "params"),
    [
        ("L", BLACK, "PNG", {}),  # LA
        ("RGB", BLUE, "PNG", {}),  # RGBA
        ("RGB", BLUE, "WEBP", {"lossless": True}),
        ("L", BLACK, "TIFF", {}),
    ],
)
def test_alpha_is_composited_on_white(
    base: str, colour: tuple[int, int, int], fmt: str, params: dict[str, Any]
) -> None:
    img = Image.new(base, (16, 16), colour[0] if base == "L" else colour)
    img.putalpha(_halves("L", (16, 16), 255, 0))  # left opaque, right fully transparent
    out = _decode(_encode(img, fmt, **params), size=(16, 16))
    _assert_colour(out[:, 0], colour)
    _assert_colour(out[:, -1], WHITE)


def test_half_transparent_black_is_mid_gray() -> None:
    img = Image.new("LA", (8, 8), (0, 128))
    _assert_colour(_decode(_encode(img, "PNG"), size=(8, 8)), (127, 127, 127), tolerance=1)


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True}), ("TIFF", {})]
)
def test_first_frame_only(fmt: str, params: dict[str, Any]) -> None:
    red, blue = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    data = _encode(red, fmt, save_all=True, append_images=[blue], **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    _assert_colour(_decode(data), RED)


def _dark_side(out: Array) -> str:
    quarter = out.shape[0] // 4
    sides = {
        "top": out[:quarter],
        "bottom": out[-quarter:],
        "left": out[:, :quarter],
        "right": out[:, -quarter:],
    }
    return min(sides, key=lambda side: float(sides[side].mean()))


@pytest.mark.parametrize(
    ("orientation", "dark_side"), [(1, "left"), (3, "right"), (6, "top"), (8, "bottom")]
)
def test_exif_orientation(orientation: int, dark_side: str) -> None:
    stored = _halves("RGB", (64, 32), BLACK, WHITE)  # wide: black left, white right
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = _decode(_encode(stored, "JPEG", exif=exif), size=(32, 32))
    # 6 is "rotate 90 degrees clockwise to view": the stored left edge ends up on top.
    assert _dark_side(out) == dark_side


@pytest.mark.parametrize(
    ("fmt", "width", "height"),
    [("PNG", 1, 1), ("JPEG", 1, 1), ("PNG", 5000, 2), ("PNG", 10000, 1), ("PNG", 1, 10000)],
)
def test_tiny_and_extreme_aspect(fmt: str, width: int, height: int) -> None:
    out = _decode(_encode(Image.new("RGB", (width, height), RED), fmt))
    assert out.shape == (*SIZE, 3)
    _assert_colour(out, RED, tolerance=4)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (5000, 5000),  # 25 Mpx: under Pillow's default limit, caught by max_pixels
        (20000, 20000),  # 400 Mpx: Pillow's own DecompressionBombError fires first
    ],
)
def test_decompression_bomb_rejected_before_decoding(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> Any:
        loads.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    rejected = _rejection(_blank_png(width, height), max_pixels=10_000_000)
    assert rejected.reason == ErrorReason.DECOMPRESSION_BOMB
    assert "pixels" in rejected.detail
    assert loads == []


def test_configure_pillow_makes_bomb_warning_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    with warnings.catch_warnings():  # the filter is process-global: undo it for other tests
        configure_pillow(10_000_000)
        assert Image.MAX_IMAGE_PIXELS == 10_000_000
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
        # 16 Mpx: over Pillow's limit but under 2x, where Pillow only warns by default.
        rejected = _rejection(_blank_png(4000, 4000), max_pixels=10**9)
    assert rejected.reason == ErrorReason.DECOMPRESSION_BOMB
    assert "decompression bomb" in rejected.detail


def test_configure_pillow_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        configure_pillow(0)


@pytest.mark.parametrize(
    ("stored", "orientation", "size", "drafted"),
    [
        ((4000, 3000), 1, (224, 224), (500, 375)),  # 1/8 scale, still >= 224 both ways
        # Shown sideways: (h=1000, w=250) on screen is (1000, 250) stored, so 1/4 scale.
        # Without the swap, the draft would ask for (250, 1000) and get no reduction.
        ((4000, 1000), 6, (1000, 250), (1000, 250)),
        ((300, 200), 1, (224, 224), (300, 200)),  # smaller than the target: left alone
    ],
)
def test_big_jpeg_is_drafted(
    stored: tuple[int, int],
    orientation: int,
    size: tuple[int, int],
    drafted: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy_draft(self: JpegImagePlugin.JpegImageFile, mode: Any, request: Any) -> Any:
        result = real_draft(self, mode, request)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.new("RGB", stored, RED), "JPEG", exif=exif)
    out = decode_image(data, size, max_pixels=MAX_PIXELS)
    assert sizes == [drafted]
    assert out.shape == (*size, 3)
    _assert_colour(out, RED, tolerance=4)


def test_many_threads_at_once() -> None:
    formats = sorted(ALLOWED_FORMATS)
    colours = [((i * 37) % 256, (i * 91) % 256, (i * 53) % 256) for i in range(64)]
    corpus = [
        _encode(Image.new("RGB", (300, 200), colour), formats[i % len(formats)])
        for i, colour in enumerate(colours)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(_decode, corpus))
    for out, colour in zip(outputs, colours, strict=True):
        assert out.shape == (*SIZE, 3)
        _assert_colour(out, colour, tolerance=8)


def test_bad_arguments_are_caller_bugs() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_image(b"x", (0, 10), max_pixels=MAX_PIXELS)


def test_rejection_survives_pickling() -> None:
    rejected = pickle.loads(pickle.dumps(ImageRejected(ErrorReason.EMPTY, "nothing here")))  # noqa: S301
    assert (rejected.reason, rejected.detail) == (ErrorReason.EMPTY, "nothing here")
    assert str(rejected) == "empty: nothing here"
