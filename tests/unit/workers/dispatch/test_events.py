"""Bucket events parsed into created objects: MinIO's and AWS's real formats, odd keys, and what
is ignored or invalid. In-process: no Redis, no store."""

from __future__ import annotations

import json

import pytest

from testbed.events import (
    EVENT_TIME,
    aws_event,
    eventbridge_event,
    minio_documented_event,
    minio_event,
    sns_event,
)
from workers.dispatch.events import CreatedObject, S3Root, parse_event

ROOT = S3Root("photos", "labeler/incoming/")
AWKWARD_KEYS = [
    "cats/with space.jpg",
    "unicodé/ñandú 猫.png",
    "a+b=c.jpg",
    "escaped%2Fslash.jpg",  # a literal "%2F" in the name, not a folder
    "100% real.jpg",
    "deep/er/x.jpeg",
]


FORMATS = {
    "minio": minio_event,
    "minio_documented": minio_documented_event,
    "aws": aws_event,
    "sns": sns_event,
    "eventbridge": eventbridge_event,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_created_events_map_back_to_incoming_keys(fmt: str, key: str) -> None:
    raw = FORMATS[fmt](ROOT.bucket, ROOT.prefix + key, '"0123abcd"')

    parsed = parse_event(raw.encode(), ROOT)

    assert parsed.objects == [CreatedObject(key, "0123abcd")]
    assert (parsed.ignored, parsed.invalid) == (0, 0)
    assert parsed.source == ("minio" if fmt.startswith("minio") else "s3")


@pytest.mark.parametrize(
    ("raw", "ignored", "invalid"),
    [
        (minio_event("photos", "labeler/incoming/a.jpg", None, "s3:ObjectRemoved:Delete"), 1, 0),
        (aws_event("photos", "labeler/incoming/a.jpg", None, "ObjectRemoved:Delete"), 1, 0),
        (minio_event("photos", "labeler/incoming/a.jpg", "e", "s3:ObjectAccessed:Get"), 1, 0),
        (aws_event("photos", "labeler/incoming/folder/", "d41d8cd9"), 1, 0),
        (minio_event("photos", "labeler/labels/a.jpg.json", "e"), 1, 0),
        (aws_event("photos", "labeler/models/digits/1/model.keras", "e"), 1, 0),
        (aws_event("photos", "labeler/incoming-old/a.jpg", "e"), 1, 0),
        (minio_event("other-bucket", "labeler/incoming/a.jpg", "e"), 1, 0),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "photos"}), 1, 0),
        (aws_event("photos", "labeler/incoming/a/../../etc/passwd", "e"), 0, 1),
        ("this is not json", 0, 1),
        (b"\xff\xfe not utf-8", 0, 1),
        ("42", 0, 1),
        (json.dumps({"Records": []}), 0, 1),
        (json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}), 0, 1),
        (json.dumps([EVENT_TIME, {"EventName": "s3:ObjectCreated:Put"}]), 0, 1),
        (sns_event("photos", "labeler/incoming/a.jpg", None, "ObjectRemoved:Delete"), 1, 0),
        (
            json.dumps({"Type": "Notification", "Message": json.dumps({"Event": "s3:TestEvent"})}),
            1,
            0,
        ),
        (json.dumps({"Type": "Notification", "Message": "not json"}), 0, 1),
        (json.dumps({"Type": "Notification"}), 0, 1),
        (eventbridge_event("photos", "labeler/incoming/a.jpg", "e", "Object Deleted"), 1, 0),
        (eventbridge_event("photos", "labeler/labels/a.jpg.json", "e"), 1, 0),
        (json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}), 0, 1),
    ],
)
def test_other_events_are_ignored_and_broken_ones_invalid(
    raw: str | bytes, ignored: int, invalid: int
) -> None:
    parsed = parse_event(raw, ROOT)

    assert parsed.objects == []
    assert (parsed.ignored, parsed.invalid) == (ignored, invalid)


def test_sources_and_outcomes_are_the_metric_label_sets() -> None:
    from monitoring.metrics import EVENT_OUTCOMES, EVENT_SOURCES
    from workers.dispatch import events as dispatch

    sources = {
        dispatch.SOURCE_MINIO,
        dispatch.SOURCE_S3,
        dispatch.SOURCE_SCAN,
        dispatch.SOURCE_WATCH,
    }
    assert sources == set(EVENT_SOURCES)
    outcomes = {dispatch.QUEUED, dispatch.DUPLICATE, dispatch.IGNORED, dispatch.INVALID}
    assert outcomes == set(EVENT_OUTCOMES)


def test_a_local_store_ignores_bucket_events() -> None:
    assert parse_event(aws_event("photos", "labeler/incoming/a.jpg", "e"), None).ignored == 1
