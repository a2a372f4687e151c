"""``s3://bucket/prefix``: any S3-compatible endpoint (AWS, MinIO, moto).

One :class:`S3Client` per process (build it after fork with :func:`make_s3_client`, share it
between stores and threads). GETs and PUTs, the hot path, go through obstore
(:mod:`storage.s3_obstore`); listings, heads, deletes and multipart uploads through boto3. Both
retry throttling, 5xx and connection errors as botocore's ``standard`` mode does; what still
fails after that surfaces as :class:`~storage.errors.TransientStorageError` for the task layer
to retry later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError
from obstore.auth.boto3 import Boto3CredentialProvider

from storage.base import Blob, ObjectInfo, validate_key, validate_prefix
from storage.errors import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    PermanentStorageError,
    TransientStorageError,
    WriteConflict,
)
from storage.s3_obstore import ObstoreBucket, ObstoreSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client as BotoS3Client
else:
    BotoS3Client = Any

RetryObserver = Callable[[str, int], None]  # (operation, retries the client made) -> None

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
_CREDENTIALS_TTL = timedelta(minutes=5)


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


class S3Client:
    """The process's S3 clients over one endpoint, region and credential chain: ``boto3`` (also
    for what the stores do not cover: buckets, versioning, notifications) and, per bucket, an
    obstore client for GETs and PUTs, built on first use."""

    def __init__(
        self, boto3_client: BotoS3Client, session: botocore.session.Session, options: S3Options
    ) -> None:
        self.boto3 = boto3_client
        self._session = session  # boto3's: its credential chain and configuration
        self._options = options
        self._buckets: dict[str, ObstoreBucket] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Client({self._options!r})"

    def objects(self, bucket: str) -> ObstoreBucket:
        """GET and PUT in ``bucket``, with the endpoint, region and credentials boto3 resolved."""
        with self._lock:
            if bucket not in self._buckets:
                self._buckets[bucket] = ObstoreBucket(bucket, self._settings(), self._credentials())
            return self._buckets[bucket]

    def _settings(self) -> ObstoreSettings:
        meta = self.boto3.meta
        ca_bundle = self._session.get_config_variable("ca_bundle")  # AWS_CA_BUNDLE, config
        return ObstoreSettings(
            endpoint_url=meta.endpoint_url,
            region=meta.region_name,
            max_attempts=self._options.max_attempts,
            connect_timeout=self._options.connect_timeout,
            read_timeout=self._options.read_timeout,
            ca_bundle=ca_bundle if isinstance(ca_bundle, str) else None,
        )

    def _credentials(self) -> Boto3CredentialProvider:
        try:
            # obstore keeps each set until the ttl ends; botocore hands out temporary ones with
            # 10+ minutes left (its mandatory refresh), so 5 minutes never outlives them.
            return Boto3CredentialProvider(self._session, ttl=_CREDENTIALS_TTL)
        except ValueError as exc:  # the chain found nothing
            raise AccessDenied(f"no S3 credentials configured ({exc})") from exc


def make_s3_client(options: S3Options) -> S3Client:
    """Build the process's S3 clients: path-style, standard retries, explicit timeouts."""
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
    core = botocore.session.get_session()
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=options.region,
        botocore_session=core,
    )
    client: BotoS3Client = session.client("s3", endpoint_url=options.endpoint_url, config=config)
    return S3Client(client, core, options)


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
        self._boto3 = client.boto3

    @cached_property
    def _objects(self) -> ObstoreBucket:
        return self._client.objects(self.bucket)  # on first use: after fork, in a worker

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        full = self._full(key)
        return self._objects.get(full, key, max_bytes, self._counted("get"))

    def head(self, key: str) -> ObjectInfo:
        full = self._full(key)
        with _s3_errors(key, self._retried("head")):
            response = self._boto3.head_object(Bucket=self.bucket, Key=full)
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
        return self._objects.put(
            full,
            key,
            data,
            content_type=content_type,
            if_match=if_match,
            if_none_match=if_none_match,
            retried=self._counted("put"),
        )

    def sync(self) -> None:
        """Nothing to do: every PUT was durable when S3 answered it."""

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        """Upload a local file in parts (boto3's managed transfer): memory stays a few parts
        whatever its size, and the object appears only once every part has arrived."""
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            with _s3_errors(key, self._retried("put")):
                self._boto3.upload_file(str(path), self.bucket, full, ExtraArgs=extra)
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
        paginator = self._boto3.get_paginator("list_objects_v2")
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
            self._retried("delete")(self._boto3.delete_object(Bucket=self.bucket, Key=full))

    def _counted(self, operation: str) -> Callable[[int], None]:
        """Report the retries obstore calls made (see :mod:`storage.s3_obstore`)."""

        def note(retries: int) -> None:
            if self._on_retry is not None:
                self._on_retry(operation, retries)

        return note

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
