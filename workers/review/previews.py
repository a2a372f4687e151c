"""Review previews: untrusted bytes in, a small PNG that we encoded ourselves out.

The original bytes are never served: whatever a file claims to be (HTML named ``.jpg``, SVG with
script), a reviewer's browser only ever receives a PNG that Pillow produced from decoded pixels.
"""

from __future__ import annotations

import io

from PIL import Image

from workers.inference import ALLOWED_FORMATS, ImageRejected, decode_image

PREVIEW_CONTENT_TYPE = "image/png"


def preview_png(data: bytes, *, max_side: int, max_pixels: int) -> bytes:
    """The image scaled to fit ``max_side`` (aspect kept, never enlarged), as PNG bytes.

    Raises:
        ImageRejected: The bytes are not an allowed image (same reasons as labeling).
    """
    try:
        with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as img:
            width, height = img.size
    except Exception:  # decode_image below says precisely what is wrong
        width, height = max_side, max_side
    scale = min(1.0, max_side / max(width, height, 1))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = decode_image(data, size, max_pixels=max_pixels)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG", optimize=False)
    return out.getvalue()


__all__ = ["PREVIEW_CONTENT_TYPE", "ImageRejected", "preview_png"]
