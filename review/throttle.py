"""Sign-in throttling: per user name and per client address, with exponential backoff.

Counts live in Redis (shared by every app process, kept across restarts). After a few free
failures each further one locks that name (or address) out for twice as long as the last, up to
a cap; while locked, attempts are answered 429 without checking a password at all.
"""

from __future__ import annotations

import hashlib
from typing import Any

_PREFIX = "labeler:review:signin:"
FREE_PER_USER = 5  # typos and a forgotten caps lock
FREE_PER_ADDRESS = 20  # several reviewers behind one NAT
MAX_LOCK_SECONDS = 15 * 60
WINDOW_SECONDS = 3600  # failures are forgotten an hour after the last one


class SignInThrottle:
    """Failed sign-ins counted by user and by address; :meth:`wait` says how long to wait."""

    def __init__(self, client: Any) -> None:
        self._redis = client

    def wait(self, user: str, address: str) -> int:
        """Seconds before another attempt for ``user`` from ``address`` is heard (0: now)."""
        subjects = _subjects(user, address)
        left = [self._redis.pttl(self._key("lock", kind, v)) for kind, v in subjects]
        longest = max([ms for ms in left if ms > 0], default=0)
        return -(-longest // 1000)  # round up: Retry-After is whole seconds

    def failed(self, user: str, address: str) -> None:
        for (kind, value), free in zip(
            _subjects(user, address), (FREE_PER_USER, FREE_PER_ADDRESS), strict=True
        ):
            count_key = self._key("count", kind, value)
            pipe = self._redis.pipeline()
            pipe.incr(count_key)
            pipe.expire(count_key, WINDOW_SECONDS)
            count = int(pipe.execute()[0])
            if count > free:
                seconds = min(2 ** (count - free), MAX_LOCK_SECONDS)
                self._redis.set(self._key("lock", kind, value), b"1", ex=seconds)

    def succeeded(self, user: str, address: str) -> None:
        """The user proved who they are: their count starts over (the address's does not)."""
        self._redis.delete(self._key("count", "user", user), self._key("lock", "user", user))

    def _key(self, what: str, kind: str, value: str) -> str:
        # Hashed: a name is attacker-chosen text of any length.
        digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]
        return f"{_PREFIX}{what}:{kind}:{digest}"


def _subjects(user: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("user", user), ("address", address)


__all__ = ["SignInThrottle"]
