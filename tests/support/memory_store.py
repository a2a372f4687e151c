"""An in-memory :class:`~storage.ObjectStore` for the unit tier: the same contract as the real
backends (``tests/storage/test_contract.py`` runs it beside them), no disk, no server."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from storage import (
    Blob,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    WriteConflict,
    validate_key,
)


class MemoryStore:
    """Objects in a dict; counts calls per operation so tests can see what was read."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.uri = "memory://"
        self.clock = clock  # stamps ``last_modified`` on every put
        self.calls: Counter[str] = Counter()
        self.keys_read: list[str] = []  # every get, in order
        self.not_synced: set[str] = set()  # written with durable=False since the last sync
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        self.calls["get"] += 1
        self.keys_read.append(key)
        data, info = self._find(key)
        if max_bytes is not None and info.size > max_bytes:
            raise ObjectTooLarge(key, info.size, max_bytes)
        return Blob(info, data)

    def head(self, key: str) -> ObjectInfo:
        self.calls["head"] += 1
        return self._find(key)[1]

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        durable: bool = True,
    ) -> ObjectInfo:
        self.calls["put"] += 1
        validate_key(key)
        etag = hashlib.md5(data).hexdigest()  # noqa: S324 - S3's ETag, not security
        info = ObjectInfo(key, len(data), etag, self.clock())
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise WriteConflict(f"{key!r} already exists")
            if if_match is not None and (current is None or current[1].etag != if_match):
                raise WriteConflict(f"{key!r} changed since it was read")
            self._objects[key] = (bytes(data), info)
            if not durable:
                self.not_synced.add(key)
        return info

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidKey(f"invalid prefix {prefix!r}")
        with self._lock:
            infos = [info for _, info in self._objects.values()]
        for info in sorted(infos, key=lambda i: i.key):
            if info.key.startswith(prefix) and (start_after is None or info.key > start_after):
                yield info

    def sync(self) -> None:
        self.calls["sync"] += 1
        with self._lock:
            self.not_synced.clear()

    def exists(self, key: str) -> bool:
        validate_key(key)
        return key in self._objects

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def _find(self, key: str) -> tuple[bytes, ObjectInfo]:
        validate_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(f"no object at {key!r}")
        return found
