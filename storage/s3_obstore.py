"""GETs and PUTs of one S3 bucket through obstore (Rust ``object_store``), the hot path.

botocore spends ~1.7-2.4 ms of Python CPU on each request; obstore ~0.4-0.7 ms. obstore runs
with its own retries off: this module retries as botocore's ``standard`` mode does (same
retryable failures, same jittered backoff, ``max_attempts`` tries in all) so that every retry
can be reported, and translates obstore's errors into the storage hierarchy with short messages.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    InvalidPathError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store as ObstoreS3Store

from storage.base import Blob, ObjectInfo
from storage.errors import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
    WriteConflict,
)

if TYPE_CHECKING:
    from obstore import ObjectMeta, PutMode
    from obstore.store import ClientConfig, S3CredentialProvider

T = TypeVar("T")
RetryCounter = Callable[[int], None]  # retries one call made -> None

_MAX_BACKOFF = 20.0  # seconds, botocore's cap
# No whole-request limit, as in botocore: ``read_timeout`` catches a stalled transfer, and a
# model file may take minutes on a slow link (obstore's default would cut it at 30 s).
_WHOLE_REQUEST = timedelta(days=1)
# What botocore's standard mode retries besides connection errors and timeouts.
_RETRIED_STATUS = {429, 500, 502, 503, 504}
_RETRIED_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable"} | _RETRIED_CODES
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_KIND = re.compile(r"kind: (\w+)")

_runtime_pid: int | None = None  # the process whose first call started obstore's tokio runtime


@dataclass(frozen=True)
class ObstoreSettings:
    """Where and how obstore reaches the bucket: what the process's boto3 client resolved."""

    endpoint_url: str
    region: str
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    ca_bundle: str | None = None  # PEM file of a private CA, as boto3 was given it


class ObstoreBucket:
    """GET and PUT of one bucket's objects; thread-safe (obstore releases the GIL)."""

    def __init__(
        self, bucket: str, settings: ObstoreSettings, credentials: S3CredentialProvider
    ) -> None:
        client: ClientConfig = {
            "connect_timeout": timedelta(seconds=settings.connect_timeout),
            "read_timeout": timedelta(seconds=settings.read_timeout),
            "timeout": _WHOLE_REQUEST,
        }
        if settings.endpoint_url.startswith("http://"):
            client["allow_http"] = True
        if settings.ca_bundle:
            with open(settings.ca_bundle, "rb") as pem:
                client["root_certificate"] = pem.read()
        self._store = ObstoreS3Store(
            bucket,
            endpoint=settings.endpoint_url.rstrip("/"),
            region=settings.region,
            virtual_hosted_style_request=False,  # path-style, as the boto3 client
            credential_provider=credentials,
            client_options=client,
            retry_config={"max_retries": 0},  # we retry, and count (see module docstring)
        )
        self._max_attempts = max(1, settings.max_attempts)

    def get(self, path: str, key: str, max_bytes: int | None, retried: RetryCounter) -> Blob:
        """Read one object; over ``max_bytes`` its body is never read (the connection is dropped
        once the headers have said its size)."""

        def attempt() -> tuple[ObjectMeta, bytes | None]:
            result = obstore.get(self._store, path)
            meta = result.meta
            if max_bytes is not None and meta["size"] > max_bytes:
                return meta, None
            return meta, bytes(result.bytes())

        meta, data = self._retrying(attempt, key, retried)
        if data is None:
            raise ObjectTooLarge(key, meta["size"], max_bytes or 0)
        etag = (meta["e_tag"] or "").strip('"')
        return Blob(ObjectInfo(key, len(data), etag, meta["last_modified"].timestamp()), data)

    def put(
        self,
        path: str,
        key: str,
        data: bytes,
        *,
        content_type: str | None,
        if_match: str | None,
        if_none_match: bool,
        retried: RetryCounter,
    ) -> ObjectInfo:
        """Write one object in one request. S3 conditional writes compare and write in one step:
        ``if_match`` an ETag (without quotes), or ``if_none_match`` (create only)."""
        attributes = {"Content-Type": content_type} if content_type else None
        mode: PutMode | None = None
        if if_match is not None:
            mode = {"e_tag": f'"{if_match}"'}
        elif if_none_match:
            mode = "create"

        def attempt() -> str:
            result = obstore.put(
                self._store, path, data, mode=mode, attributes=attributes, use_multipart=False
            )
            return result["e_tag"] or ""

        etag = self._retrying(attempt, key, retried)
        return ObjectInfo(key, len(data), etag.strip('"'), time.time())

    def _retrying(self, attempt: Callable[[], T], key: str, retried: RetryCounter) -> T:
        """Run ``attempt`` up to ``max_attempts`` times, with botocore's jittered backoff."""
        _refuse_a_forked_runtime()
        retries = 0
        while True:
            try:
                value = attempt()
            except (BaseError, OSError, ValueError) as exc:
                error, retryable = translate(exc, key)
                if retryable and retries + 1 < self._max_attempts:
                    retries += 1
                    time.sleep(min(random.random() * 2 ** (retries - 1), _MAX_BACKOFF))
                    continue
                if retries:
                    retried(retries)
                raise error from exc
            if retries:
                retried(retries)
            return value


def translate(exc: Exception, key: str) -> tuple[StorageError, bool]:
    """The storage error for an obstore failure, and whether botocore would retry it."""
    summary = str(exc).split("\n\nDebug source:", 1)[0]
    status_match, code_match = _STATUS.search(summary), _CODE.search(summary)
    status = int(status_match.group(1)) if status_match else None
    code = code_match.group(1) if code_match else ""
    message_match = _MESSAGE.search(summary)
    message = f"{code or status} for {key!r}: {message_match.group(1) if message_match else ''}"
    message = message.rstrip(": ")
    if code == "NoSuchBucket":
        return PermanentStorageError(message), False
    if isinstance(exc, PreconditionError) and status == 404:  # If-Match on a deleted object
        return WriteConflict(f"{key!r} was deleted since it was read"), False
    if isinstance(exc, PreconditionError | AlreadyExistsError):
        return WriteConflict(f"{key!r} changed since it was read ({code or status})"), False
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(f"no object at {key!r}"), False
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return AccessDenied(message), False
    if isinstance(exc, ValueError | InvalidPathError):
        return InvalidKey(f"invalid request for {key!r}: {summary}"), False
    if status is None and isinstance(exc, GenericError):
        # Connection refused or reset, a timeout, a body cut short: the endpoint may be back soon.
        kind = _KIND.search(str(exc))
        cause = summary.rsplit(" - ", 1)[-1].removeprefix("Generic S3 error: ")
        cause = cause.removeprefix("HTTP error: ")
        detail = f"{cause} ({kind.group(1)})" if kind else cause
        return TransientStorageError(f"S3 unreachable for {key!r}: {detail}"), True
    if status is None:  # not supported, not configured: nothing a retry changes
        return PermanentStorageError(f"S3 request for {key!r} failed: {summary}"), False
    if status in _RETRIED_STATUS or code in _RETRIED_CODES:
        return TransientStorageError(message), True
    if status >= 500 or code in _TRANSIENT_CODES:
        return TransientStorageError(message), False
    return PermanentStorageError(message), False


def _refuse_a_forked_runtime() -> None:
    """obstore's tokio runtime does not survive fork: a child would hang on its first request."""
    global _runtime_pid
    pid = os.getpid()
    if _runtime_pid is None:
        _runtime_pid = pid
    elif _runtime_pid != pid:
        raise RuntimeError(
            f"obstore was used in process {_runtime_pid} before it forked this one ({pid}): "
            "build S3 stores after fork"
        )
