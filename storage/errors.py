"""Storage errors, split by what the caller should do.

``TransientStorageError`` means "try again later" (timeouts, 5xx, throttling, endpoint down):
Celery tasks retry it with backoff. ``PermanentStorageError`` means retrying cannot help (missing
object, bad key, no permission): the caller records it and moves on.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error raised by ``storage``."""


class TransientStorageError(StorageError):
    """The store could not answer now; the same call may succeed later."""


class PermanentStorageError(StorageError):
    """The call can never succeed as made."""


class ObjectNotFound(PermanentStorageError):
    """No object at that key."""


class InvalidKey(PermanentStorageError, ValueError):
    """A key that is empty, absolute, contains ``..`` or NUL, or would escape the store's root."""


class AccessDenied(PermanentStorageError):
    """Credentials are missing, wrong, or lack permission."""


class ObjectTooLarge(PermanentStorageError):
    """The object is bigger than the caller's limit; it was not downloaded."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key!r} is {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class WriteConflict(StorageError):
    """A conditional write lost: the object changed (or appeared) since the caller read it.

    Neither retry-as-is nor give up: read the object again, re-apply the change, write again.
    """


class InvalidStoreUri(ValueError):
    """A storage URI that is neither ``s3://bucket[/prefix]`` nor ``file:///dir``."""
