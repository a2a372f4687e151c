"""Turn a storage URI into a store: ``s3://bucket[/prefix]`` or ``file:///absolute/dir``."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.base import ObjectStore
from storage.errors import InvalidStoreUri
from storage.local import LocalStore
from storage.s3 import RetryObserver, S3Client, S3Store

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_store_uri(uri: str) -> str:
    """Return ``uri`` if it is a storage URI we can open, else raise ``InvalidStoreUri``."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not _BUCKET.match(parts.netloc):
            raise InvalidStoreUri(
                f"{uri!r}: bucket {parts.netloc!r} must be 3-63 characters of a-z, 0-9, '.', '-'"
            )
        if parts.query or parts.fragment:
            raise InvalidStoreUri(f"{uri!r}: an s3:// URI takes no query or fragment")
        return uri
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidStoreUri(f"{uri!r}: use file:///absolute/path (three slashes)")
        return uri
    raise InvalidStoreUri(
        f"{uri!r}: expected s3://bucket/prefix or file:///absolute/dir, got scheme {parts.scheme!r}"
    )


def join_uri(base: str, area: str) -> str:
    """``join_uri("s3://b/root", "labels") == "s3://b/root/labels"``."""
    return f"{base.rstrip('/')}/{area.strip('/')}"


def open_store(
    uri: str, *, s3_client: S3Client | None = None, on_retry: RetryObserver | None = None
) -> ObjectStore:
    """Open the store a URI names. ``s3://`` needs the process's client (see ``make_s3_client``);
    ``on_retry`` hears of every retry botocore made on it."""
    check_store_uri(uri)
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return LocalStore(Path(unquote(parts.path)))
    if s3_client is None:
        raise ValueError(f"{uri!r} is an S3 URI: pass s3_client=make_s3_client(...)")
    return S3Store(s3_client, parts.netloc, unquote(parts.path).strip("/"), on_retry=on_retry)
