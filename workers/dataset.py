"""Labeled training data read through a store: ``training/<class>/<file>``, split by key hash.

The split hashes the file's path *inside* its class folder, so an image keeps its split across
nights even when it is relabeled (moved to another class), and the test set that old and new
models are compared on stays the same as long as the files do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage import ObjectInfo, ObjectStore
from workers.decoding import ImageRejected, decode_image

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
    keys: list[str]
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]


@dataclass
class TrainingData:
    class_names: list[str]
    train: Split
    validation: Split
    test: Split
    fingerprint: str  # changes when any file or label changes
    skipped: dict[str, str]  # undecodable key -> reason


def split_of(key: str, ratios: SplitRatios = SplitRatios()) -> str:
    """``train``, ``validation`` or ``test`` for a ``<class>/<path>`` key; stable forever."""
    path = key.split("/", 1)[1] if "/" in key else key
    bucket = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % 100
    if bucket < ratios.train:
        return "train"
    return "validation" if bucket < ratios.train + ratios.validation else "test"


def load_training_data(
    store: ObjectStore,
    input_size: tuple[int, int],
    *,
    ratios: SplitRatios = SplitRatios(),
    max_pixels: int = 50_000_000,
    threads: int = 8,
) -> TrainingData:
    """Read and decode every image under the store (decoded exactly as the workers decode)."""
    infos = [i for i in store.list() if "/" in i.key]
    class_names = sorted({i.key.split("/", 1)[0] for i in infos})
    if len(class_names) < 2:
        raise ValueError(
            f"training data needs at least two class folders under {store.uri}, "
            f"found {class_names or 'none'}"
        )
    index = {name: n for n, name in enumerate(class_names)}

    def decode(info: ObjectInfo) -> tuple[ObjectInfo, npt.NDArray[np.uint8] | str]:
        try:
            return info, decode_image(store.get(info.key).data, input_size, max_pixels=max_pixels)
        except ImageRejected as exc:
            return info, str(exc)

    parts: dict[str, tuple[list[str], list[npt.NDArray[np.uint8]], list[int]]] = {
        s: ([], [], []) for s in SPLITS
    }
    skipped: dict[str, str] = {}
    with ThreadPoolExecutor(threads) as pool:
        for info, result in pool.map(decode, infos):
            if isinstance(result, str):
                skipped[info.key] = result
                continue
            keys, images, labels = parts[split_of(info.key, ratios)]
            keys.append(info.key)
            images.append(result)
            labels.append(index[info.key.split("/", 1)[0]])
    if skipped:
        log.warning("skipped %d undecodable training images", len(skipped))
    splits = {name: _split(*parts[name], input_size) for name in SPLITS}
    for name, split in splits.items():
        if len(split.keys) == 0:
            raise ValueError(f"the {name} split is empty: add more training images")
    return TrainingData(
        class_names, splits["train"], splits["validation"], splits["test"],
        _fingerprint(infos), skipped,
    )  # fmt: skip


def _split(
    keys: list[str], images: list[npt.NDArray[np.uint8]], labels: list[int], size: tuple[int, int]
) -> Split:
    stacked = np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)
    return Split(keys, stacked, np.asarray(labels, dtype=np.int64))


def _fingerprint(infos: Iterable[ObjectInfo]) -> str:
    digest = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.key):
        digest.update(f"{info.key}\0{info.etag}\n".encode())
    return digest.hexdigest()[:16]
