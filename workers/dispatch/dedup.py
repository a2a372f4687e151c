"""The de-duplication ledger: which (key, ETag) the dispatcher sent, for the in-flight window.

A marker only has to outlive the time a batch may spend queued and retried: after that the
worker's own (ETag, model version) check makes a repeat a no-op, and the reconciliation scan,
which looks at records, finds whatever never got one. So markers expire after hours, not days.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_CHECK_CHUNK = 1000  # keys per MGET


class DedupLedger:
    """``<prefix><key>`` -> ETag in Redis, each marker living ``ttl`` seconds."""

    def __init__(self, redis: Any, prefix: str, ttl: int) -> None:
        if ttl < 1:
            raise ValueError("the de-duplication window must be at least 1 second")
        self._redis = redis
        self.prefix = prefix
        self.ttl = ttl

    def sent(self, keys: Iterable[str]) -> dict[str, str]:
        """The ETag each key was last sent with inside the window (absent keys are left out)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _CHECK_CHUNK):
            chunk = wanted[start : start + _CHECK_CHUNK]
            values = self._redis.mget([self.prefix + k for k in chunk])
            for key, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[key] = value.decode() if isinstance(value, bytes) else str(value)
        return found

    def mark(self, pipe: Any, sent: dict[str, str]) -> None:
        """Add the markers of ``sent`` (key -> ETag) to ``pipe``, a Redis pipeline."""
        for key, etag in sent.items():
            pipe.set(self.prefix + key, etag, ex=self.ttl)
