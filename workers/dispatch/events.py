"""Bucket event records: what MinIO (``notify_redis``, ``access`` format) and S3 send, parsed
into the objects created under the incoming store. Parsing never raises: a record is an object,
ignored (not a creation, or outside incoming/), or invalid."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from storage import (
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StorageError,
    TransientStorageError,
    validate_key,
)
from workers.metered_store import MeteredStore

log = logging.getLogger(__name__)

SOURCE_MINIO, SOURCE_S3, SOURCE_SCAN, SOURCE_WATCH = "minio", "s3", "scan", "watch"
QUEUED, DUPLICATE, IGNORED, INVALID = "queued", "duplicate", "ignored", "invalid"


@dataclass(frozen=True)
class S3Root:
    """Where the incoming store lives in its bucket: event keys are mapped back through it."""

    bucket: str
    prefix: str  # "" or ending in "/"


def s3_root(store: ObjectStore) -> S3Root | None:
    """The bucket and prefix of an S3 incoming store; None for a store without events."""
    inner = store.inner if isinstance(store, MeteredStore) else store
    return S3Root(inner.bucket, inner.prefix) if isinstance(inner, S3Store) else None


@dataclass(frozen=True)
class CreatedObject:
    key: str  # relative to the incoming store
    etag: str | None  # None when the event did not say: HEAD the object


@dataclass
class ParsedEvent:
    """What one list item said: created objects under incoming/, and how many records it dropped."""

    source: str
    objects: list[CreatedObject] = field(default_factory=list)
    ignored: int = 0
    invalid: int = 0


def parse_event(raw: bytes | str, root: S3Root | None) -> ParsedEvent:
    """Parse one events-list item; never raises.

    Accepted shapes: MinIO ``access`` format as MinIO writes it (``[{"Event": [record, ...],
    "EventTime": ...}]``) and as documented (``[timestamp, {"EventName", "Key", "Records"}]``),
    S3 event JSON (``{"Records": [record, ...]}``, as sent to SQS), the same wrapped by SNS
    (``{"Type": "Notification", "Message": "<S3 event JSON>"}``), and EventBridge "Object
    Created" events (``detail.bucket.name``, ``detail.object.key``). Only creations of keys
    under ``root`` become objects; other records are ignored (``s3:TestEvent`` too), broken
    ones invalid.
    """
    try:
        doc = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return ParsedEvent(SOURCE_S3, invalid=1)
    if isinstance(doc, dict) and doc.get("Type") == "Notification":  # SNS-wrapped
        message = doc.get("Message")
        return (
            parse_event(message, root)
            if isinstance(message, str)
            else ParsedEvent(SOURCE_S3, invalid=1)
        )
    if isinstance(doc, dict) and doc.get("source") == "aws.s3" and "detail-type" in doc:
        return _eventbridge(doc, root)
    source, records = _records(doc)
    if records is None:
        if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
            return ParsedEvent(source, ignored=1)  # AWS sends one when notifications are set up
        return ParsedEvent(source, invalid=1)
    parsed = ParsedEvent(source)
    for record in records:
        if isinstance(record, dict) and str(record.get("eventSource", "")).startswith("minio:"):
            parsed.source = SOURCE_MINIO
        outcome = _created_object(record, root)
        if isinstance(outcome, CreatedObject):
            parsed.objects.append(outcome)
        elif outcome == IGNORED:
            parsed.ignored += 1
        else:
            parsed.invalid += 1
    return parsed


def _records(doc: Any) -> tuple[str, list[Any] | None]:
    if isinstance(doc, dict):
        records = doc.get("Records")
        return SOURCE_S3, records if isinstance(records, list) and records else None
    if not isinstance(doc, list) or not doc:
        return SOURCE_S3, None
    if len(doc) == 2 and isinstance(doc[1], dict) and isinstance(doc[1].get("Records"), list):
        return SOURCE_MINIO, doc[1]["Records"] or None  # [timestamp, event]
    if all(isinstance(e, dict) and isinstance(e.get("Event"), list) for e in doc):
        records = [r for e in doc for r in e["Event"]]  # [{"Event": [...], "EventTime": ...}]
        return SOURCE_MINIO, records or None
    return SOURCE_MINIO, None


def _eventbridge(doc: dict[str, Any], root: S3Root | None) -> ParsedEvent:
    """An EventBridge event from S3; its key is not URL-encoded (unlike notification records)."""
    if doc["detail-type"] != "Object Created":
        return ParsedEvent(SOURCE_S3, ignored=1)
    try:
        bucket, obj = doc["detail"]["bucket"]["name"], doc["detail"]["object"]
        key = obj["key"]
    except (KeyError, TypeError):
        return ParsedEvent(SOURCE_S3, invalid=1)
    if not isinstance(bucket, str) or not isinstance(key, str):
        return ParsedEvent(SOURCE_S3, invalid=1)
    outcome = _under_root(bucket, key, obj.get("etag"), root)
    if isinstance(outcome, CreatedObject):
        return ParsedEvent(SOURCE_S3, objects=[outcome])
    return ParsedEvent(SOURCE_S3, ignored=int(outcome == IGNORED), invalid=int(outcome == INVALID))


def _created_object(record: Any, root: S3Root | None) -> CreatedObject | str:
    try:
        name, bucket = record["eventName"], record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        encoded = obj["key"]
    except (KeyError, TypeError):
        return INVALID
    if not isinstance(name, str) or not isinstance(bucket, str) or not isinstance(encoded, str):
        return INVALID
    if not name.removeprefix("s3:").startswith("ObjectCreated:"):
        return IGNORED  # deletes, reads, replication, ...
    key = unquote_plus(encoded)  # both encode spaces as "+"; MinIO also escapes "/" as %2F
    return _under_root(bucket, key, obj.get("eTag") or obj.get("etag"), root)


def _under_root(bucket: str, key: str, etag: Any, root: S3Root | None) -> CreatedObject | str:
    """A created object under ``root`` (its key made relative), else IGNORED or INVALID."""
    if root is None or bucket != root.bucket or not key.startswith(root.prefix):
        return IGNORED  # another bucket, or labels/, models/, ...: never a feedback loop
    relative = key[len(root.prefix) :]
    if not relative or relative.endswith("/"):
        return IGNORED  # a folder marker
    try:
        validate_key(relative)
    except InvalidKey:
        return INVALID
    return CreatedObject(relative, str(etag).strip('"') if etag else None)


def with_etags(store: ObjectStore, objects: list[CreatedObject]) -> tuple[list[CreatedObject], int]:
    """``objects`` with their ETags, HEADing those whose event did not say; and how many are gone.

    Raises:
        TransientStorageError: the store is unreachable; nothing was decided, try again later.
    """
    ready, gone = [], 0
    for obj in objects:
        if obj.etag is not None:
            ready.append(obj)
            continue
        try:
            ready.append(CreatedObject(obj.key, store.head(obj.key).etag))
        except ObjectNotFound:
            gone += 1  # deleted since: nothing to label
        except TransientStorageError:
            raise
        except StorageError as exc:
            log.warning("cannot HEAD %r (%s): sending it without an ETag", obj.key, exc)
            ready.append(CreatedObject(obj.key, ""))  # the worker records why it failed
    return ready, gone
