"""Bucket events exactly as MinIO and AWS send them, for feeding a dispatcher.

MinIO escapes keys with Go's ``url.QueryEscape``; AWS form-encodes them but keeps ``/``; an
EventBridge event carries its key as it is.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

EVENT_TIME = "2024-05-01T10:00:00.000Z"


def s3_record(
    bucket: str, key: str, etag: str | None, *, event: str, minio: bool, size: int = 1234
) -> dict[str, Any]:
    """One record as MinIO (``minio=True``) or AWS writes it; ``key`` is the full object key."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="" if minio else "/"), "sequencer": "1"}
    if etag is not None:
        obj.update(size=size, eTag=etag)
    return {
        "eventVersion": "2.0" if minio else "2.1",
        "eventSource": "minio:s3" if minio else "aws:s3",
        "awsRegion": "" if minio else "us-east-1",
        "eventTime": EVENT_TIME,
        "eventName": event,
        "userIdentity": {"principalId": "minioadmin" if minio else "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "172.18.0.1"},
        "responseElements": {"x-amz-request-id": "17C9A0F7E1C3B3A1"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "labeler",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "minioadmin"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def minio_event(
    bucket: str, key: str, etag: str | None, event: str = "s3:ObjectCreated:Put"
) -> str:
    """A list item exactly as MinIO's Redis target RPUSHes it in ``access`` format."""
    record = s3_record(bucket, key, etag, event=event, minio=True)
    return json.dumps([{"Event": [record], "EventTime": EVENT_TIME}])


def minio_documented_event(
    bucket: str, key: str, etag: str | None, event: str = "s3:ObjectCreated:Put"
) -> str:
    """The ``[timestamp, event]`` shape MinIO's documentation describes for ``access`` format."""
    record = s3_record(bucket, key, etag, event=event, minio=True)
    body = {"EventName": event, "Key": f"{bucket}/{key}", "Records": [record]}
    return json.dumps([EVENT_TIME, body])


def aws_event(bucket: str, key: str, etag: str | None, event: str = "ObjectCreated:Put") -> str:
    """An S3 event notification as S3 delivers it to SQS."""
    return json.dumps({"Records": [s3_record(bucket, key, etag, event=event, minio=False)]})


def sns_event(bucket: str, key: str, etag: str | None, event: str = "ObjectCreated:Put") -> str:
    """An S3 notification published to SNS, as an SQS subscription receives it (not raw)."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
            "Subject": "Amazon S3 Notification",
            "Message": aws_event(bucket, key, etag, event),
            "Timestamp": EVENT_TIME,
            "SignatureVersion": "1",
        }
    )


def eventbridge_event(
    bucket: str, key: str, etag: str | None, detail_type: str = "Object Created"
) -> str:
    """An EventBridge event from S3 (its key is not URL-encoded)."""
    obj: dict[str, Any] = {"key": key, "size": 1234, "sequencer": "0064D3901D00059242"}
    if etag is not None:
        obj["etag"] = etag
    return json.dumps(
        {
            "version": "0",
            "id": "c9888434-815d-c6f4-9fc2-4dd7bdeccaaf",
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": "123456789012",
            "time": EVENT_TIME,
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": bucket},
                "object": obj,
                "request-id": "XRRTKJXSZQCWNQR1",
                "requester": "123456789012",
                "reason": "PutObject",
            },
        }
    )
