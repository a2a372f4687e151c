"""``s3://bucket/prefix``: any S3-compatible endpoint through boto3 (AWS, MinIO, moto).

One client per process (build it after fork with :func:`make_s3_client`, share it between stores
and threads: boto3 clients are thread-safe). botocore's ``standard`` retry mode already retries
throttling, 5xx and connection errors with jittered backoff; what still fails after that surfaces
as :class:`~storage.errors.TransientStorageError` for the task layer to retry later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

from storage.base import Blob, ObjectInfo, validate_key, validate_prefix
from storage.errors import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    PermanentStorageError,
    TransientStorageError,
    WriteConflict,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client as S3Client
else:
    S3Client = Any

RetryObserver = Callable[[str, int], None]  # (operation, retries botocore made) -> None

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
}
# 409 ConditionalRequestConflict: another conditional write to the key is in flight.
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
_TRANSIENT = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible endpoint. Secrets stay out of ``repr``."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_attempts: int = 5  # total attempts, first one included (botocore "standard" mode)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_pool_connections: int = 32  # at least the number of concurrent GETs a batch makes

    def __repr__(self) -> str:
        return (
            f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"access_key_id={'***' if self.access_key_id else None}, "
            f"max_attempts={self.max_attempts})"
        )


def make_s3_client(options: S3Options) -> S3Client:
    """Build the process's S3 client: path-style, standard retries, explicit timeouts."""
    config = Config(
        region_name=options.region,
        retries={"mode": "standard", "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        max_pool_connections=options.max_pool_connections,
        # MinIO and moto serve buckets under the path, not as virtual hosts.
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=options.region,
    )
    client: S3Client = session.client("s3", endpoint_url=options.endpoint_url, config=config)
    return client


class S3Store:
    """An :class:`~storage.base.ObjectStore` over one bucket and key prefix."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        on_retry: RetryObserver | None = None,
    ) -> None:
        self.bucket = bucket
        self._on_retry = on_retry
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        full = self._full(key)
        with _s3_errors(key, self._retried("get")):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            self._retried("get")(response)
            body = response["Body"]
            size = int(response["ContentLength"])
            if max_bytes is not None and size > max_bytes:
                body.close()  # never read the body of an oversized object
                raise ObjectTooLarge(key, size, max_bytes)
            data = body.read()
        info = ObjectInfo(
            key, len(data), _etag(response["ETag"]), response["LastModified"].timestamp()
        )
        return Blob(info, data)

    def head(self, key: str) -> ObjectInfo:
        full = self._full(key)
        with _s3_errors(key, self._retried("head")):
            response = self._client.head_object(Bucket=self.bucket, Key=full)
            self._retried("head")(response)
        return ObjectInfo(
            key,
            int(response["ContentLength"]),
            _etag(response["ETag"]),
            response["LastModified"].timestamp(),
        )

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        durable: bool = True,  # an S3 PUT is durable once answered: nothing to defer
    ) -> ObjectInfo:
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else {}
        # S3 conditional writes: the server compares and writes in one step (412 when it lost).
        if if_match is not None:
            extra["IfMatch"] = f'"{if_match}"'
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            with _s3_errors(key, self._retried("put")):
                response = self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)  # type: ignore[arg-type]
                self._retried("put")(response)
        except ObjectNotFound as exc:
            if if_match is None:
                raise
            raise WriteConflict(f"{key!r} was deleted since it was read") from exc
        return ObjectInfo(key, len(data), _etag(response["ETag"]), time.time())

    def sync(self) -> None:
        """Nothing to do: every PUT was durable when S3 answered it."""

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        """Upload a local file in parts (boto3's managed transfer): memory stays a few parts
        whatever its size, and the object appears only once every part has arrived."""
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            with _s3_errors(key, self._retried("put")):
                self._client.upload_file(str(path), self.bucket, full, ExtraArgs=extra)
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                with _s3_errors(key, self._retried("put")):
                    raise cause from exc
            raise TransientStorageError(f"upload of {key!r} failed: {exc}") from exc

    def list(
        self, prefix: str = "", *, start_after: str | None = None, etags: bool = True
    ) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)  # ETags come with every listing page: ``etags`` changes nothing
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        paginator = self._client.get_paginator("list_objects_v2")
        with _s3_errors(prefix or "/", self._retried("list")):
            for page in paginator.paginate(**kwargs):
                self._retried("list")(page)
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if not key or key.endswith("/"):
                        continue  # folder markers made by consoles are not objects
                    yield ObjectInfo(
                        key,
                        int(item["Size"]),
                        _etag(item["ETag"]),
                        item["LastModified"].timestamp(),
                    )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self._full(key)
        with _s3_errors(key, self._retried("delete")):
            self._retried("delete")(self._client.delete_object(Bucket=self.bucket, Key=full))

    def _retried(self, operation: str) -> Callable[[Any], None]:
        """Report botocore's retries of one call (``ResponseMetadata.RetryAttempts``)."""

        def note(response: Any) -> None:
            attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)
            if attempts and self._on_retry is not None:
                self._on_retry(operation, attempts)

        return note

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)


def _etag(raw: str) -> str:
    return raw.strip('"')


@contextmanager
def _s3_errors(key: str, retried: Callable[[Any], None]) -> Iterator[None]:
    """Translate botocore failures into the storage error hierarchy."""
    try:
        yield
    except ClientError as exc:
        retried(exc.response)
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"{code or status} for {key!r}: {error.get('Message', '')}".rstrip(": ")
        if code in _CONFLICT or status in (409, 412):
            raise WriteConflict(f"{key!r} changed since it was read ({code or status})") from exc
        if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
            raise ObjectNotFound(f"no object at {key!r}") from exc
        if code in _DENIED or status == 403:
            raise AccessDenied(message) from exc
        if code in _TRANSIENT or status >= 500 or status == 429:
            raise TransientStorageError(message) from exc
        raise PermanentStorageError(message) from exc
    except NoCredentialsError as exc:
        raise AccessDenied(f"no S3 credentials configured ({exc})") from exc
    except ParamValidationError as exc:
        raise InvalidKey(f"invalid request for {key!r}: {exc}") from exc
    except BotoCoreError as exc:
        # Connection refused, timeouts, a body cut short: the endpoint may be back soon.
        raise TransientStorageError(f"S3 unreachable for {key!r}: {exc}") from exc
