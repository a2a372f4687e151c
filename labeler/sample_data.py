"""Real sample images that ship with scikit-learn: handwritten digits and two photos.

Used by the demo, the tests and the benchmarks; nothing is downloaded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Sample:
    key: str
    label: str
    data: bytes


def digit_samples() -> list[Sample]:
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` as grayscale PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    samples = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(gray, mode="L").save(buffer, "PNG")
        samples.append(Sample(f"{target}/digit-{index:04d}.png", str(target), buffer.getvalue()))
    return samples


def photo_jpegs(size: tuple[int, int], count: int, *, quality: int = 90) -> list[bytes]:
    """``count`` JPEGs of ``size`` (width, height) cut and scaled from scikit-learn's photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(image) for image in load_sample_images().images]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        # Vary the crop so the JPEGs differ (different bytes, different ETags).
        shift = (i * 7) % 40
        crop = photo.crop((shift, shift // 2, photo.width - 40 + shift, photo.height - 20))
        buffer = io.BytesIO()
        crop.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out
