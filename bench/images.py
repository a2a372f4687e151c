"""Benchmark image sets: real photos (scikit-learn's samples) as JPEGs, placed under many keys.

Encoding a 12-megapixel JPEG takes ~0.2 s, so each set has a few dozen distinct images that are
reused under as many keys as a run needs. Every key is still fetched, hashed and decoded on its
own: nothing in the worker caches by content.
"""

from __future__ import annotations

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


def place_local(images: ImageSet, root: Path, keys: list[str]) -> None:
    """Drop ``images`` under ``keys`` into a local store rooted at ``root``, a new file each.

    For a ``file://`` store, dropping an image is putting a file in the directory. Each key gets
    its own file (not a hard link to a shared one: the store caches an ETag per inode, so links
    would let the worker skip the MD5 that every real drop costs it).
    """
    for n, key in enumerate(keys):
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images.blobs[n % len(images.blobs)])


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
