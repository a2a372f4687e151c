"""Benchmark image sets: real photos (scikit-learn's samples) as JPEGs, placed under many keys.

Encoding a 12-megapixel JPEG takes ~0.2 s, so each set has a few dozen distinct images that are
reused under as many keys as a run needs. Every key is still fetched, hashed and decoded on its
own: nothing in the worker caches by content.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from labeler.sample_data import photo_jpegs
from storage import ObjectStore


@dataclass(frozen=True)
class ImageSet:
    """Distinct JPEGs of one size; ``name`` is used in keys and in the results."""

    name: str
    size: tuple[int, int]  # (width, height)
    blobs: list[bytes]

    @property
    def mean_bytes(self) -> int:
        return sum(len(b) for b in self.blobs) // len(self.blobs)

    def describe(self) -> dict[str, object]:
        width, height = self.size
        return {
            "size": f"{width}x{height}",
            "distinct_images": len(self.blobs),
            "mean_jpeg_bytes": self.mean_bytes,
        }


def make_image_set(size: tuple[int, int], distinct: int) -> ImageSet:
    """``distinct`` JPEGs of ``size`` (width, height), quality 90."""
    width, height = size
    return ImageSet(f"{width}x{height}", size, photo_jpegs(size, distinct))


def keys_for(run: str, count: int) -> list[str]:
    """``count`` fresh keys under ``run/``, so no label record exists for them yet."""
    return [f"{run}/{i:05d}.jpg" for i in range(count)]


def place_local(images: ImageSet, root: Path, keys: list[str], originals: Path) -> None:
    """Drop ``images`` under ``keys`` into a local store rooted at ``root``, as hard links.

    For a ``file://`` store, dropping an image is putting a file in the directory. Hard links
    to one copy of each distinct JPEG make 5,000 keys (or 600 x 1.3 MB) cost nothing to set up,
    while the worker still opens, reads and hashes each key's file.
    """
    sources = _write_originals(images, originals)
    for n, key in enumerate(keys):
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[n % len(sources)], target)


def place_in_store(images: ImageSet, store: ObjectStore, keys: list[str]) -> None:
    """PUT ``images`` under ``keys`` through the store's own client (used for S3)."""
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: store.put(
                    keys[n], images.blobs[n % len(images.blobs)], content_type="image/jpeg"
                ),
                range(len(keys)),
            )
        )


def _write_originals(images: ImageSet, folder: Path) -> list[Path]:
    """One file per distinct image (written once per set; later calls reuse them)."""
    folder = folder / images.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{n:03d}.jpg" for n in range(len(images.blobs))]
    for path, blob in zip(paths, images.blobs, strict=True):
        if not path.exists():
            path.write_bytes(blob)
    return paths
