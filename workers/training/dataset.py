"""Labeled training data read through a store: ``training/<class>/<file>``, split by key hash,
decoded once into an :class:`~workers.training.image_cache.ImageCache` and streamed from it.

The split hashes the file's path *inside* its class folder, so an image keeps its split across
nights even when it is relabeled (moved to another class), and the test set that old and new
models are compared on stays the same as long as the files do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from storage import ObjectInfo, ObjectStore
from workers.training.image_cache import CacheProgress, ImageCache, fill_cache

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitRatios:
    train: int = 80
    validation: int = 10  # test gets the rest of 100

    def __post_init__(self) -> None:
        if self.train <= 0 or self.validation <= 0 or self.train + self.validation >= 100:
            raise ValueError("train and validation must be positive and leave room for test")


@dataclass
class Split:
    """One split's keys and labels, and the cache entries its images are streamed from."""

    keys: list[str]
    labels: npt.NDArray[np.int64]
    entries: list[str]  # decoded-image cache file of each key, in the same order
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.keys)

    def dataset(self) -> Any:
        """A ``tf.data.Dataset`` of ``(uint8 image, label)`` in key order, read from the cache
        in parallel; memory holds a few images, not the split."""
        import tensorflow as tf

        return entry_dataset(self.entries, self.labels, self.input_size, tf.data.AUTOTUNE)

    def images(self, batch_size: int = 64) -> Iterator[npt.NDArray[np.uint8]]:
        """The split's images as uint8 ``(n, h, w, 3)`` arrays of up to ``batch_size``, in key
        order."""
        for images, _ in self.dataset().batch(batch_size).as_numpy_iterator():
            yield images

    def take(self, count: int, where: npt.NDArray[np.bool_] | None = None) -> Split:
        """The first ``count`` items (of those ``where`` is true): a smaller split to hold in
        memory, e.g. INT8 calibration and judging images."""
        chosen = np.flatnonzero(where if where is not None else np.ones(len(self), bool))[:count]
        return Split(
            [self.keys[i] for i in chosen],
            self.labels[chosen],
            [self.entries[i] for i in chosen],
            self.input_size,
        )

    def array(self) -> npt.NDArray[np.uint8]:
        """Every image of the split in one uint8 array: for small splits only (see ``take``)."""
        batches = list(self.images())
        return np.concatenate(batches) if batches else np.zeros((0, *self.input_size, 3), np.uint8)


@dataclass
class TrainingData:
    class_names: list[str]
    train: Split
    validation: Split
    test: Split
    fingerprint: str  # changes when any file or label changes
    skipped: dict[str, str]  # undecodable key -> reason
    cache: dict[str, int] = field(default_factory=dict)  # fetched / reused / failed / total


def split_of(key: str, ratios: SplitRatios = SplitRatios()) -> str:
    """``train``, ``validation`` or ``test`` for a ``<class>/<path>`` key; stable forever."""
    path = key.split("/", 1)[1] if "/" in key else key
    bucket = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % 100
    if bucket < ratios.train:
        return "train"
    return "validation" if bucket < ratios.train + ratios.validation else "test"


def load_training_data(
    store: ObjectStore,
    cache: ImageCache,
    *,
    ratios: SplitRatios = SplitRatios(),
    max_pixels: int = 50_000_000,
    threads: int = 8,
    progress: CacheProgress | None = None,
) -> TrainingData:
    """List the store, bring every image into ``cache`` (decoded exactly as the workers decode;
    only new or changed ones are fetched) and split the keys."""
    infos = [i for i in store.list() if "/" in i.key]
    class_names = sorted({i.key.split("/", 1)[0] for i in infos})
    if len(class_names) < 2:
        raise ValueError(
            f"training data needs at least two class folders under {store.uri}, "
            f"found {class_names or 'none'}"
        )
    index = {name: n for n, name in enumerate(class_names)}
    report = fill_cache(
        store, infos, cache, max_pixels=max_pixels, threads=threads, progress=progress
    )
    if report.skipped:
        log.warning("skipped %d undecodable training images", len(report.skipped))
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for key in sorted(report.entries):
        parts[split_of(key, ratios)].append(key)
    splits = {}
    for name, keys in parts.items():
        if not keys:
            raise ValueError(f"the {name} split is empty: add more training images")
        labels = np.asarray([index[k.split("/", 1)[0]] for k in keys], dtype=np.int64)
        entries = [report.entries[k] for k in keys]
        splits[name] = Split(keys, labels, entries, cache.input_size)
    return TrainingData(
        class_names,
        splits["train"],
        splits["validation"],
        splits["test"],
        _fingerprint(infos),
        report.skipped,
        report.counts(),
    )


def entry_dataset(
    entries: list[str], labels: npt.NDArray[np.int64], size: tuple[int, int], parallel: int
) -> Any:
    """``(uint8 image, label)`` pairs read from cache entries, in the given order."""
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices((entries, labels))
    return files.map(entry_reader(size), num_parallel_calls=parallel, deterministic=True)


def entry_reader(size: tuple[int, int]) -> Callable[[Any, Any], tuple[Any, Any]]:
    """A ``tf.data`` map function: ``(entry path, label) -> (uint8 image, label)``."""
    import tensorflow as tf

    pixel_bytes = size[0] * size[1] * 3

    def read(path: Any, label: Any) -> tuple[Any, Any]:
        pixels = tf.strings.substr(tf.io.read_file(path), 0, pixel_bytes)
        return tf.reshape(tf.io.decode_raw(pixels, tf.uint8), (size[0], size[1], 3)), label

    return read


def _fingerprint(infos: Iterable[ObjectInfo]) -> str:
    digest = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.key):
        digest.update(f"{info.key}\0{info.etag}\n".encode())
    return digest.hexdigest()[:16]
