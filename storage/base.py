"""The object-store interface every backend implements, and the key rules they share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from storage.errors import InvalidKey

_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")  # NUL and the other C0 controls, and DEL
_MAX_KEY_BYTES = 1024  # S3's limit; the local store keeps the same rule so keys stay portable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD or a listing says about an object. ``etag`` has no quotes."""

    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Blob:
    """An object's bytes together with the metadata they were read with."""

    info: ObjectInfo
    data: bytes


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable-per-write objects under one root (bucket + prefix or dir).

    Keys are relative to the root, ``/``-separated, and checked by :func:`validate_key`.
    Implementations are safe to share between threads.
    """

    uri: str

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        """Read an object; raise ``ObjectTooLarge`` before downloading when over ``max_bytes``."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and ETag without the bytes."""
        ...

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
        """Write atomically: readers see the old object or the new one, never a part.

        Args:
            key: Where to write.
            data: The whole object.
            content_type: Stored with the object where the backend keeps it.
            if_match: Write only if the object's current ETag is this one (compare-and-set).
            if_none_match: Write only if no object exists at ``key`` yet.
            durable: Return only once the object would survive a crash of the machine. With
                False it may be durable only after the next :meth:`sync`: a caller writing
                many objects pays for durability once, before it acknowledges them.

        Raises:
            WriteConflict: A condition did not hold; nothing was written.
        """
        ...

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, after ``start_after`` if given.

        With ``etags=False`` a backend may leave ``etag`` empty where it costs a read (a local
        file's MD5); callers that only compare keys and times list much more cheaply.
        """
        ...

    def sync(self) -> None:
        """Make every write made so far with ``durable=False`` durable."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error (as in S3)."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``InvalidKey``.

    Refused: empty keys, a leading ``/``, ``.``/``..`` segments, empty segments, NUL and other
    control characters, and keys longer than 1024 UTF-8 bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if _CONTROL_CHARACTER.search(key):
        raise InvalidKey(f"object key {key!r} contains NUL or a control character")
    if key.startswith("/") or key.startswith("\\"):
        raise InvalidKey(f"object key {key!r} is absolute; keys are relative to the store root")
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {_MAX_KEY_BYTES} bytes")
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments) or "\\" in key:
        raise InvalidKey(f"object key {key!r} contains '.', '..' or a backslash")
    if any(seg == "" for seg in segments[:-1]):
        raise InvalidKey(f"object key {key!r} has an empty path segment")
    if segments[-1] == "":
        raise InvalidKey(f"object key {key!r} ends with '/': that names a folder, not an object")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-like string that may end with ``/``."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix
