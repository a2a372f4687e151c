"""Review previews: untrusted bytes in, a small PNG that we encoded ourselves out.

The original bytes are never served: whatever a file claims to be (HTML named ``.jpg``, SVG with
script), a reviewer's browser only ever receives a PNG that Pillow produced from decoded pixels.

Previews run inside the web app, so their memory is bounded three ways: a pixel limit of their
own (formats that must be fully decoded first), JPEG decoded at a reduced scale, and only a few
decodes at once; a small cache answers the prefetch-then-show pattern of the page.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from storage import TransientError
from workers.inference import ALLOWED_FORMATS, ImageRejected, decode_image

PREVIEW_CONTENT_TYPE = "image/png"
# 16 Mpx: a 12 Mpx phone photo passes; fully decoded as RGB it is ~48 MB per decode.
PREVIEW_MAX_PIXELS = 16_000_000
PREVIEW_DECODES = 2  # at once per process: with the pixel limit, ~250 MB at worst
CACHE_BYTES = 8 * 1024 * 1024  # ~50 previews at 512 px
_WAIT_SECONDS = 30.0


class PreviewBusy(TransientError):
    """Every preview slot stayed taken for a while: ask again later."""


def preview_png(
    data: bytes, *, max_side: int, max_pixels: int, preview_max_pixels: int = PREVIEW_MAX_PIXELS
) -> bytes:
    """The image scaled to fit ``max_side`` (aspect kept, never enlarged), as PNG bytes.

    Args:
        data: The image bytes, untrusted.
        max_side: The longer side of the preview.
        max_pixels: The labeling limit; a JPEG up to it is shown (it decodes at 1/8 scale).
        preview_max_pixels: The limit for every other format, which decodes at full size.

    Raises:
        ImageRejected: The bytes are not an allowed image, or too large to preview.
    """
    try:
        with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as img:
            width, height, fmt = img.size[0], img.size[1], img.format
    except Exception:  # decode_image below says precisely what is wrong
        width, height, fmt = max_side, max_side, None
    scale = min(1.0, max_side / max(width, height, 1))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    limit = max_pixels if fmt == "JPEG" else min(max_pixels, preview_max_pixels)
    pixels = decode_image(data, size, max_pixels=limit)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG", optimize=False)
    return out.getvalue()


class PreviewRenderer:
    """:func:`preview_png` with a bound on concurrent decodes and a small cache by key and ETag.

    Safe to call from many threads (the web app's thread pool).
    """

    def __init__(
        self,
        *,
        max_side: int,
        max_pixels: int,
        preview_max_pixels: int = PREVIEW_MAX_PIXELS,
        decodes: int = PREVIEW_DECODES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.preview_max_pixels = preview_max_pixels
        self._slots = threading.BoundedSemaphore(decodes)
        # Decodes run on these threads only: glibc keeps an arena per thread, and memory freed
        # by a decode stays in its thread's arena, so any web thread decoding would keep ~70 MB.
        self._decoders = ThreadPoolExecutor(decodes, thread_name_prefix="preview")
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()

    def render(self, key: str, etag: str, load: Callable[[], tuple[bytes, str]]) -> bytes:
        """The preview of ``key`` at ``etag``; ``load`` fetches (bytes, their ETag) on a miss.

        Raises:
            ImageRejected: Not an allowed image, or too large to preview.
            PreviewBusy: No decode slot came free in time.
        """
        cached = self._cached((key, etag))
        if cached is not None:
            return cached
        if not self._slots.acquire(timeout=_WAIT_SECONDS):
            raise PreviewBusy(f"{key!r}: every preview slot is busy; try again")
        try:
            data, etag = load()  # cached under what was read: it may have changed since
            png = self._decoders.submit(
                preview_png,
                data,
                max_side=self.max_side,
                max_pixels=self.max_pixels,
                preview_max_pixels=self.preview_max_pixels,
            ).result()
        finally:
            self._slots.release()
        self._store((key, etag), png)
        return png

    def _cached(self, entry: tuple[str, str]) -> bytes | None:
        with self._lock:
            png = self._cache.get(entry)
            if png is not None:
                self._cache.move_to_end(entry)
            return png

    def _store(self, entry: tuple[str, str], png: bytes) -> None:
        if len(png) > self._cache_bytes // 4:
            return  # one odd preview must not flush the rest
        with self._lock:
            self._cache[entry] = png
            self._cache.move_to_end(entry)
            while sum(map(len, self._cache.values())) > self._cache_bytes:
                self._cache.popitem(last=False)


__all__ = [
    "PREVIEW_CONTENT_TYPE",
    "PREVIEW_MAX_PIXELS",
    "ImageRejected",
    "PreviewBusy",
    "PreviewRenderer",
    "preview_png",
]
