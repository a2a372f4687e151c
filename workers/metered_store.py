"""An object store that times every call and counts failures, for any backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from monitoring.metrics import STORAGE_OPERATIONS, Metrics
from storage import Blob, ObjectInfo, ObjectNotFound, ObjectStore, StorageError, WriteConflict


class MeteredStore:
    """Wraps an :class:`~storage.ObjectStore`; same interface, plus storage metrics."""

    def __init__(self, store: ObjectStore, metrics: Metrics) -> None:
        self.inner = store
        self.uri = store.uri
        self._metrics = metrics
        for operation in STORAGE_OPERATIONS:
            for error in ("TransientStorageError", "AccessDenied", "PermanentStorageError"):
                metrics.storage_errors.labels(operation, error)  # exported at 0 from the start

    def __repr__(self) -> str:
        return f"MeteredStore({self.inner!r})"

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        with self._timed("get"):
            return self.inner.get(key, max_bytes=max_bytes)

    def head(self, key: str) -> ObjectInfo:
        with self._timed("head"):
            return self.inner.head(key)

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
        with self._timed("put"):
            return self.inner.put(
                key,
                data,
                content_type=content_type,
                if_match=if_match,
                if_none_match=if_none_match,
                durable=durable,
            )

    def sync(self) -> None:
        with self._timed("sync"):
            self.inner.sync()

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        with self._timed("list"):
            yield from self.inner.list(prefix, start_after=start_after, etags=etags)

    def exists(self, key: str) -> bool:
        with self._timed("head"):
            return self.inner.exists(key)

    def delete(self, key: str) -> None:
        with self._timed("delete"):
            self.inner.delete(key)

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except (ObjectNotFound, WriteConflict):
            raise  # an answer, not a failure: "is there a label yet?" is asked all the time
        except StorageError as exc:
            self._metrics.storage_errors.labels(operation, type(exc).__name__).inc()
            raise
        finally:
            self._metrics.storage_seconds.labels(operation).observe(time.perf_counter() - started)
