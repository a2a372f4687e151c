"""ETags of local files without re-reading them: the MD5 of a file version, remembered by what
identifies that version (inode, size, modification time)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

ETAG_CACHE_ENTRIES = 100_000  # ~10 MB; a bigger tree re-hashes only what falls out

Signature = tuple[int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What identifies one version of a file without reading it."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class EtagCache:
    """A bounded, thread-safe LRU of file signature -> MD5."""

    def __init__(self, capacity: int = ETAG_CACHE_ENTRIES) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Signature, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, signature: Signature) -> str | None:
        with self._lock:
            etag = self._entries.get(signature)
            if etag is not None:
                self._entries.move_to_end(signature)
            return etag

    def put(self, signature: Signature, etag: str) -> None:
        with self._lock:
            self._entries[signature] = etag
            self._entries.move_to_end(signature)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


def md5_file(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
