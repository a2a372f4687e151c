"""labeler's error family, and the storage errors in it.

Every error labeler raises on purpose is a :class:`LabelerError`, split by what the caller should
do: a :class:`TransientError` may succeed later (Celery tasks retry it with backoff: storage
timeouts, 5xx, throttling, no model yet); a :class:`PermanentError` never will as made (a bad
payload, key or image, a refused model): record it and move on. The root lives here, in the
package every other one imports, so each layer's errors join it without an upward import.
"""

from __future__ import annotations

from collections.abc import Iterator


class LabelerError(Exception):
    """Root of every error labeler raises on purpose."""


class TransientError(LabelerError):
    """The same call may succeed later: retry with backoff."""


class PermanentError(LabelerError):
    """Retrying cannot help: report it, record it, or fix the input."""


def error_classes(root: type[LabelerError] = LabelerError) -> Iterator[type[LabelerError]]:
    """``root`` and every subclass defined so far (of the modules imported), depth first."""
    yield root
    for sub in sorted(root.__subclasses__(), key=lambda c: c.__name__):
        yield from error_classes(sub)


class StorageError(LabelerError):
    """Root of every error raised by ``storage``."""


class TransientStorageError(StorageError, TransientError):
    """The store could not answer now; the same call may succeed later."""


class PermanentStorageError(StorageError, PermanentError):
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


class InvalidStoreUri(PermanentError, ValueError):
    """A storage URI that is neither ``s3://bucket[/prefix]`` nor ``file:///dir``."""
