"""The dispatcher's errors: each one transient, so its loop backs off and tries the turn again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from storage import TransientError


class EnqueueFailed(TransientError):
    """``enqueue`` raised: the batch stays buffered and is sent again on the next turn."""


class BrokerUnavailable(TransientError):
    """A Redis call of the dispatcher failed: what it held stays held for the next turn."""


@contextmanager
def redis_errors(operation: str) -> Iterator[None]:
    """Raise :class:`BrokerUnavailable` for a Redis error of ``operation``."""
    try:
        yield
    except RedisError as exc:
        raise BrokerUnavailable(f"Redis {operation}: {type(exc).__name__}: {exc}") from exc
