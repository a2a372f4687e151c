"""Decoded training images on local disk, keyed by (training key, ETag, input size).

A night where 1% of the training data changed fetches and decodes 1% of it; the rest is read
back from here by ``tf.data``. An entry is the raw ``height x width x 3`` uint8 pixels followed
by an 8-byte trailer (magic + CRC-32 of the pixels), so a reader needs no decoder and a
truncated entry is recognised and rebuilt, never trained on (checking every CRC, which reads
the whole cache, is optional). An image that cannot
be decoded gets a small ``.bad`` entry with its reason, so it is not fetched again either.

Entries are written to a private temporary file and renamed into place: a concurrent run sees
a whole entry or none. The directory is bounded by ``max_bytes``: entries the current run does
not use go first, least recently used first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from storage import ObjectInfo, ObjectStore
from workers.inference import ImageRejected, decode_image

log = logging.getLogger(__name__)

_MAGIC = b"LBL1"
TRAILER_BYTES = 8
_STALE_TEMP_SECONDS = 3600  # a temporary file this old belongs to a run that died

CacheProgress = Callable[[dict[str, int]], None]


@dataclass
class CacheReport:
    """What one pass over the training images did: per key, its entry or why it was skipped."""

    total: int = 0
    fetched: int = 0
    reused: int = 0
    failed: int = 0
    entries: dict[str, str] = field(default_factory=dict)  # key -> entry path
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total,
            "fetched": self.fetched,
            "reused": self.reused,
            "failed": self.failed,
        }


class ImageCache:
    """Decoded images of one input size under ``root/<h>x<w>/``."""

    def __init__(self, root: Path, input_size: tuple[int, int], *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.max_bytes = max_bytes
        self.directory = self.root / f"{self.input_size[0]}x{self.input_size[1]}"
        self.pixel_bytes = self.input_size[0] * self.input_size[1] * 3
        self.entry_bytes = self.pixel_bytes + TRAILER_BYTES

    def path(self, key: str, etag: str) -> Path:
        """Where the entry of ``key`` at ``etag`` lives (whether or not it exists yet)."""
        name = hashlib.sha256(f"{key}\0{etag}\0{self.input_size}".encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.u8"

    def lookup(self, key: str, etag: str, *, verify: bool = False) -> Path | str | None:
        """The entry's path if it is whole, the remembered rejection reason, or None.

        Whole means the right size and trailer (what a cut-short write leaves is neither);
        ``verify`` also checks the pixels' CRC, which reads the whole entry.
        """
        path = self.path(key, etag)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return _remembered_failure(path.with_suffix(".bad"))
        try:  # raw calls: a night reuses thousands of entries, so each costs a few syscalls
            size = os.fstat(fd).st_size
            trailer = os.pread(fd, TRAILER_BYTES, max(size - TRAILER_BYTES, 0))
            whole = size == self.entry_bytes and trailer[:4] == _MAGIC
            if whole and verify:
                crc = zlib.crc32(os.pread(fd, self.pixel_bytes, 0))
                whole = crc == int.from_bytes(trailer[4:], "big")
            if whole:
                os.utime(fd)  # recently used: evicted last
                return path
        finally:
            os.close(fd)
        log.warning("cache entry of %s is damaged (%d bytes): rebuilding it", key, size)
        path.unlink(missing_ok=True)
        return None

    def put(self, key: str, etag: str, image: npt.NDArray[np.uint8]) -> Path:
        """Store a decoded image atomically; returns its entry path."""
        if image.shape != (*self.input_size, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 {(*self.input_size, 3)}, got {image.dtype} {image.shape}"
            )
        pixels = np.ascontiguousarray(image).tobytes()
        trailer = _MAGIC + zlib.crc32(pixels).to_bytes(4, "big")
        path = self.path(key, etag)
        _write_atomically(path, pixels + trailer)
        return path

    def put_failure(self, key: str, etag: str, reason: str) -> None:
        _write_atomically(self.path(key, etag).with_suffix(".bad"), reason.encode())

    def evict(self, keep: Iterable[str]) -> int:
        """Delete entries not in ``keep``, oldest use first, until the cache fits; returns bytes
        freed. Temporary files of dead runs go too."""
        kept = set(keep)
        entries, total, now = [], 0, time.time()
        for entry, stat in _files(self.root):
            if entry.name.startswith("."):  # another run's temporary file
                if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                else:
                    total += stat.st_size
                continue
            total += stat.st_size
            if entry.path not in kept:
                entries.append((stat.st_mtime, stat.st_size, entry.path))
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("image cache: evicted %d bytes of unused entries", freed)
        return freed


def fill_cache(
    store: ObjectStore,
    infos: list[ObjectInfo],
    cache: ImageCache,
    *,
    max_pixels: int,
    threads: int = 8,
    verify: bool = False,
    progress: CacheProgress | None = None,
) -> CacheReport:
    """Make sure every image in ``infos`` has a cache entry: reuse whole ones, fetch and decode
    the rest. ``verify`` checks every reused entry's CRC too (reads the whole cache, which
    costs most of a night's data phase). Raises ``ValueError`` if the images cannot fit in
    the cache at all."""
    needed = len(infos) * cache.entry_bytes
    if needed > cache.max_bytes:
        raise ValueError(
            f"{len(infos)} training images at {cache.input_size[0]}x{cache.input_size[1]} need "
            f"{needed} bytes of image cache, more than its limit {cache.max_bytes}: raise "
            "LABELER_TRAIN_CACHE_MAX_BYTES"
        )
    report = CacheReport(total=len(infos))
    last = 0.0

    def tell(final: bool = False) -> None:
        nonlocal last
        if progress and (final or time.monotonic() - last > 0.5):
            last = time.monotonic()
            progress(report.counts())

    def reuse(info: ObjectInfo) -> Path | str | None:
        return cache.lookup(info.key, info.etag, verify=verify)

    def fetch(info: ObjectInfo) -> Path | str:
        try:
            image = decode_image(store.get(info.key).data, cache.input_size, max_pixels=max_pixels)
        except ImageRejected as exc:
            cache.put_failure(info.key, info.etag, str(exc))
            return str(exc)
        return cache.put(info.key, info.etag, image)

    with ThreadPoolExecutor(threads) as pool:
        # A plain lookup is a few syscalls, cheaper inline than handed to a thread; a CRC check
        # reads the entry, so it is worth the threads.
        found = pool.map(reuse, infos) if verify else map(reuse, infos)
        missing = []
        for info, hit in zip(infos, found, strict=True):
            if hit is None:
                missing.append(info)
            else:
                _count(report, info.key, hit, fetched=False)
                tell()
        for info, result in zip(missing, pool.map(fetch, missing), strict=True):
            _count(report, info.key, result, fetched=True)
            tell()
    cache.evict(report.entries.values())
    tell(final=True)
    return report


def _count(report: CacheReport, key: str, result: Path | str, fetched: bool) -> None:
    report.fetched += fetched
    report.reused += not fetched
    if isinstance(result, str):
        report.failed += 1
        report.skipped[key] = result
    else:
        report.entries[key] = str(result)


def _remembered_failure(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with temporary.open("wb") as file:
            file.write(data)
        os.replace(temporary, path)  # readers see the whole entry or none
    finally:
        temporary.unlink(missing_ok=True)


def _files(root: Path) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """Every file under ``root`` with its stat, walked with ``scandir`` (no Path per file)."""
    directories = [str(root)]
    while directories:
        try:
            scan = os.scandir(directories.pop())
        except FileNotFoundError:
            continue  # removed by a concurrent run meanwhile
        with scan:
            for entry in scan:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        directories.append(entry.path)
                    else:
                        yield entry, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
