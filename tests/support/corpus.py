"""A bad-input corpus built in code: the trouble an image bucket sees, and valid odd images.

Each :class:`Case` says what the worker must write for it: an error with an exact
:class:`~storage.records.ErrorReason`, a label equal to the digit it shows (valid images in odd
modes and formats are made from real digits, so the label can be checked against the truth), or
just some label of the model (a 1x1 image shows no digit).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from labeler.sample_data import Sample
from storage import ErrorReason
from testbed.digits import CLASSES, INPUT_SIZE
from workers.inference import decode_image

ANY_LABEL = "*"  # Case.label for a valid image that shows no digit: any class of the model
BOMB_SIDE = 40_000  # 1.6 Gpx: decoded as Pillow's 1-bit mode that is 1.6 GB, far over 500 MB
TRANSPARENT_FROM = 240  # palette case: grays this bright become the transparent index

_EXIF_ORIENTATION = 0x0112
_ROTATE_90_CW_TO_VIEW = 6

# Keys with characters that URL-encoding, form-decoding and path handling often get wrong.
ODD_KEY_NAMES = (
    "with space.png",
    "plus+sign.png",
    "percent%20literal.png",
    "hash#fragment.png",
    "question?mark.png",
    "amp&equals=.png",
    "semi;colon,comma.png",
    "brackets[1]{2}(3).png",
    "quote'double\".png",
    "tilde~at@dollar$.png",
    "colon:star*.png",
    "unicode-數字-ü-é.png",  # precomposed é
    "combining-e\u0301.png",  # e + combining acute: a different key from the one above
    "emoji-😀.png",
    "caret^pipe|back`tick.png",
    "x..dots..png",
)


@dataclass(frozen=True)
class DigitView:
    """A held-out digit as the model sees it: 32x32 gray, plus its original PNG."""

    label: str
    gray: npt.NDArray[np.uint8]  # (32, 32)
    png: bytes


@dataclass(frozen=True)
class Case:
    """One object to drop into ``incoming/`` and what its record must say."""

    kind: str
    key: str
    data: bytes
    reason: ErrorReason | None = None  # the error expected; None: a label is expected
    label: str | None = None  # with reason None: the expected label, or ANY_LABEL

    @property
    def labeled(self) -> bool:
        return self.reason is None


def confident_views(model_path: Path, samples: list[Sample], count: int) -> Iterator[DigitView]:
    """Digits the model gets right with >= 0.95, as it sees them.

    Variants of these must keep their label: a wrong one then means the worker decoded the image
    differently, not that the model is imperfect.
    """
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    pixels = np.stack([decode_image(s.data, INPUT_SIZE, max_pixels=10**6) for s in samples])
    probabilities = np.asarray(model.predict(pixels.astype(np.float32), verbose=0))
    views = [
        DigitView(sample.label, pixels[i, :, :, 0].copy(), sample.data)
        for i, sample in enumerate(samples)
        if CLASSES[int(probabilities[i].argmax())] == sample.label
        and probabilities[i].max() >= 0.95
    ]
    if len(views) < count:
        raise AssertionError(f"only {len(views)} of {len(samples)} digits are confident")
    return iter(views)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width: int = 128, height: int = 96, seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def blank_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of any size; zero rows compress ~1000:1 (40000^2 is ~190 KB).

    Built row by row so the 200 MB of raw rows never sit in this process's memory.
    """

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose screen and frame descriptors claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen descriptor
    frame = data.index(b",")  # image descriptor: separator, left, top, width, height
    data[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def corrupt_jpeg() -> bytes:
    """A JPEG with a bogus marker inside its scan: libjpeg stops with "broken data stream"."""
    data = bytearray(encode(noise(256, 256), "JPEG", quality=90))
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    data[middle : middle + 2] = b"\xff\x78"
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is zeroed in the middle: zlib fails, not truncation."""
    data = bytearray(encode(noise(), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 50] = bytes(50)
    return bytes(data)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def error_cases(prefix: str, oversized_bytes: int) -> list[Case]:
    """Inputs that must each get an error record with exactly this reason."""
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
        b"newpath 0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n"
    )
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="32" '
        b'height="32"><rect width="32" height="32"/></svg>'
    )
    html = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n"
    oversized = np.random.default_rng(5).integers(0, 256, oversized_bytes, np.uint8).tobytes()
    R = ErrorReason  # noqa: N806 - a table reads better with a short name
    table: list[tuple[str, str, bytes, ErrorReason]] = [
        ("truncated JPEG", "truncated.jpg", half(encode(noise(), "JPEG")), R.TRUNCATED),
        ("truncated PNG", "truncated.png", half(encode(noise(), "PNG")), R.TRUNCATED),
        ("corrupt JPEG scan", "corrupt.jpg", corrupt_jpeg(), R.UNREADABLE),
        ("corrupt PNG data", "corrupt.png", corrupt_png(), R.UNREADABLE),
        ("GIF cut inside its header", "header-only.gif", encode(noise(), "GIF")[:10], R.UNREADABLE),
        ("zero bytes", "empty.jpg", b"", R.EMPTY),
        (
            "text named .jpg",
            "text.jpg",
            b"just some text someone named photo.jpg\n",
            R.NOT_AN_IMAGE,
        ),
        ("HTML named .jpg", "html.jpg", html, R.NOT_AN_IMAGE),
        ("SVG named .png", "vector.png", svg, R.NOT_AN_IMAGE),
        ("ICO", "icon.jpg", encode(red, "ICO"), R.UNSUPPORTED_FORMAT),
        ("PCX", "paint.jpg", encode(red, "PCX"), R.UNSUPPORTED_FORMAT),
        ("TGA", "targa.png", encode(red, "TGA"), R.UNSUPPORTED_FORMAT),
        ("PPM", "netpbm.png", encode(red, "PPM"), R.UNSUPPORTED_FORMAT),
        ("EPS (Ghostscript never runs)", "postscript.jpg", eps, R.UNSUPPORTED_FORMAT),
        (
            f"PNG bomb {BOMB_SIDE}x{BOMB_SIDE}",
            "bomb-40000.png",
            blank_png(BOMB_SIDE, BOMB_SIDE),
            R.DECOMPRESSION_BOMB,
        ),
        # 64 Mpx: over the 50 Mpx limit but under 2x, where Pillow only warns by default.
        ("PNG bomb 8000x8000", "bomb-8000.png", blank_png(8000, 8000), R.DECOMPRESSION_BOMB),
        ("GIF claiming 65535x65535", "bomb.gif", gif_claiming(65535, 65535), R.DECOMPRESSION_BOMB),
        (f"object of {oversized_bytes:,} bytes", "too-large.png", oversized, R.TOO_LARGE),
    ]
    return [Case(kind, f"{prefix}{name}", data, reason) for kind, name, data, reason in table]


def valid_odd_cases(prefix: str, views: Iterator[DigitView]) -> list[Case]:
    """Valid images in odd modes, formats and shapes; the digit ones must keep their label."""
    cases = []
    for kind, name, make in _DIGIT_VARIANTS:
        view = next(views)
        cases.append(Case(kind, f"{prefix}{name}", make(view, views), label=view.label))
    red = Image.new("RGB", (1, 1), (255, 0, 0))
    strip = noise(4000, 4).convert("L")
    cases += [
        Case("tiny 1x1", f"{prefix}tiny-1x1.png", encode(red, "PNG"), label=ANY_LABEL),
        Case("extreme 4000x4", f"{prefix}wide-4000x4.png", encode(strip, "PNG"), label=ANY_LABEL),
        Case(
            "extreme 4x4000",
            f"{prefix}tall-4x4000.jpg",
            encode(strip.transpose(Image.Transpose.ROTATE_90).convert("RGB"), "JPEG"),
            label=ANY_LABEL,
        ),
    ]
    return cases


def odd_key_cases(prefix: str, views: Iterator[DigitView]) -> list[Case]:
    """Plain digit PNGs under keys with odd characters: labeled, at the very same key."""
    cases = []
    for name in ODD_KEY_NAMES:
        view = next(views)
        cases.append(Case(f"key {name!r}", f"{prefix}{name}", view.png, label=view.label))
    return cases


def _cmyk_jpeg(view: DigitView, _: Iterator[DigitView]) -> bytes:
    img = Image.fromarray(view.gray).convert("RGB").convert("CMYK")
    return encode(img, "JPEG", quality=100, subsampling=0)


def _gray16_png(view: DigitView, _: Iterator[DigitView]) -> bytes:
    wide = view.gray.astype(np.uint16) * 257  # the same picture on 0..65535: all but 0 over 255
    return encode(Image.fromarray(wide), "PNG")


def _palette_transparency_png(view: DigitView, _: Iterator[DigitView]) -> bytes:
    """Index = gray level, except the brightest grays use index 255: transparent, stored black.

    Flattened onto white (as viewers do) the strokes stay white; a decoder that ignored the
    transparency would paint them black and erase the digit.
    """
    indices = np.where(view.gray >= TRANSPARENT_FROM, 255, view.gray).astype(np.uint8)
    img = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    palette = [level for gray in range(256) for level in (gray, gray, gray)]
    palette[255 * 3 : 256 * 3] = [0, 0, 0]
    img.putpalette(palette)
    return encode(img, "PNG", transparency=255)


def _animated_gif(view: DigitView, views: Iterator[DigitView]) -> bytes:
    other = next(v for v in views if v.label != view.label)  # frame 2 shows another digit
    first, second = Image.fromarray(view.gray), Image.fromarray(other.gray)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _exif_rotated_jpeg(view: DigitView, _: Iterator[DigitView]) -> bytes:
    """Stored turned a quarter left; EXIF orientation 6 says "turn 90 degrees right to view"."""
    stored = Image.fromarray(view.gray).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = _ROTATE_90_CW_TO_VIEW
    return encode(stored, "JPEG", quality=100, subsampling=0, exif=exif)


def _progressive_jpeg(view: DigitView, _: Iterator[DigitView]) -> bytes:
    img = Image.fromarray(view.gray)
    return encode(img, "JPEG", quality=100, progressive=True)


def _rgba_webp(view: DigitView, _: Iterator[DigitView]) -> bytes:
    img = Image.fromarray(view.gray).convert("RGBA")  # opaque alpha: composited, unchanged
    return encode(img, "WEBP", lossless=True)


def _la_tiff(view: DigitView, _: Iterator[DigitView]) -> bytes:
    return encode(Image.fromarray(view.gray).convert("LA"), "TIFF", compression="tiff_deflate")


_DIGIT_VARIANTS = (
    ("CMYK JPEG", "cmyk.jpg", _cmyk_jpeg),
    ("16-bit grayscale PNG", "gray16.png", _gray16_png),
    ("palette PNG with transparency", "palette-transparent.png", _palette_transparency_png),
    ("animated GIF (first frame)", "animated.gif", _animated_gif),
    ("EXIF-rotated JPEG", "exif-rotated.jpg", _exif_rotated_jpeg),
    ("progressive JPEG", "progressive.jpg", _progressive_jpeg),
    ("RGBA WebP", "rgba.webp", _rgba_webp),
    ("LA TIFF (deflate)", "gray-alpha.tif", _la_tiff),
)
