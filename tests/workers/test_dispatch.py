"""The dispatcher engine against a real Redis and real stores, with a recording ``enqueue``.

Event builders here produce the JSON MinIO and AWS really send (MinIO escapes keys with Go's
``url.QueryEscape``; AWS form-encodes them but keeps ``/``); the e2e tests reuse them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import redis
from prometheus_client import CollectorRegistry

from labeler.settings import Settings
from labeler.wiring import dispatch_config
from monitoring.metrics import Metrics
from storage import AccessDenied, LocalStore, ObjectStore, S3Store
from tests.support.records import record_for
from tests.support.services import wait_until
from workers.dispatch import DispatchConfig, Dispatcher
from workers.dispatch.events import CreatedObject, S3Root, parse_event
from workers.metered_store import MeteredStore

EVENT_TIME = "2024-05-01T10:00:00.000Z"
ROOT = S3Root("photos", "labeler/incoming/")
AWKWARD_KEYS = [
    "cats/with space.jpg",
    "unicodé/ñandú 猫.png",
    "a+b=c.jpg",
    "escaped%2Fslash.jpg",  # a literal "%2F" in the name, not a folder
    "100% real.jpg",
    "deep/er/x.jpeg",
]


# --- real-format events -----------------------------------------------------------------------


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


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class Harness:
    """A dispatcher plus what it did: the batches it sent and its metrics."""

    dispatcher: Dispatcher
    redis: redis.Redis
    config: DispatchConfig
    registry: CollectorRegistry
    batches: list[list[str]] = field(default_factory=list)
    backlog: list[int] = field(default_factory=lambda: [0])
    fail_next: list[Exception] = field(default_factory=list)

    def push(self, *items: str) -> None:
        self.redis.rpush(self.config.events_list, *items)

    def turn_until(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached"
            self.dispatcher.step()

    def events(self, source: str, outcome: str) -> float:
        labels = {"source": source, "outcome": outcome}
        return self.registry.get_sample_value("labeler_events_total", labels) or 0.0

    def flushes(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "labeler_dispatched_batches_total", {"reason": reason}
        )
        return value or 0.0

    def keys_sent(self) -> list[str]:
        return [key for batch in self.batches for key in batch]

    def lengths(self) -> tuple[int, int]:
        return (
            int(self.redis.llen(self.config.events_list)),
            int(self.redis.llen(self.config.processing_list)),
        )


class CountingRedis:
    """A redis client that counts the keys asked about with MGET."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.mget_keys = 0

    def mget(self, keys: list[str]) -> Any:
        self.mget_keys += len(keys)
        return self._client.mget(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


class FakeClock:
    """Monotonic seconds the test moves by hand: timing checks that cannot flake on a busy box."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_harness(
    client: Any,
    store: ObjectStore,
    *,
    labels: ObjectStore | None = None,
    clock: Any = time.monotonic,
    **overrides: Any,
) -> Harness:
    values: dict[str, Any] = {
        "events_list": "test:events",
        "batch_max_images": 4,
        "batch_max_wait": 30.0,
        "scan_interval": 0.0,
        "backlog_high_water": 50,
        "backlog_low_water": 25,
        "poll": 0.05,
        "backlog_check": 0.0,
    }
    values.update(overrides)
    config = replace(dispatch_config(Settings()), **values)
    registry = CollectorRegistry()
    holder: dict[str, Harness] = {}

    def enqueue(keys: list[str]) -> None:
        h = holder["h"]
        if h.fail_next:
            raise h.fail_next.pop()
        h.batches.append(list(keys))

    if labels is None:
        labels = LocalStore(tempfile.mkdtemp(prefix="labels-"))  # no records
    dispatcher = Dispatcher(
        client,
        store,
        enqueue,
        lambda: holder["h"].backlog[0],
        Metrics(registry),
        config,
        labels=labels,
        clock=clock,
    )
    raw_client = client._client if isinstance(client, CountingRedis) else client
    holder["h"] = Harness(dispatcher, raw_client, config, registry)
    return holder["h"]


def _etag(n: int) -> str:
    return f"{n:032x}"


def test_full_batches_go_at_once_and_the_rest_after_the_wait(
    client: redis.Redis, s3_store: S3Store
) -> None:
    clock = FakeClock()
    h = make_harness(client, s3_store, batch_max_wait=0.3, clock=clock)
    keys = [f"k/{i}.png" for i in range(10)]
    h.push(*[aws_event(s3_store.bucket, "root/" + k, _etag(i)) for i, k in enumerate(keys)])

    h.turn_until(lambda: len(h.batches) == 2)
    assert h.batches == [keys[:4], keys[4:8]]
    assert h.lengths() == (0, 2)  # the last two events wait for their batch
    clock.now += 0.29
    h.dispatcher.step()
    assert len(h.batches) == 2  # not yet: the wait is not over
    clock.now += 0.02
    h.dispatcher.step()

    assert h.batches[2] == keys[8:]
    assert h.lengths() == (0, 0)
    assert (h.flushes("full"), h.flushes("timeout")) == (2, 1)
    assert h.events("s3", "queued") == 10


def test_the_same_event_three_times_is_sent_once_and_a_new_etag_again(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store, batch_max_wait=0.05)
    event = minio_event(s3_store.bucket, "root/cats/a b.jpg", _etag(1))
    h.push(event, event)

    h.turn_until(lambda: h.batches and h.lengths() == (0, 0))
    h.push(event)  # a late re-delivery, after the batch went
    h.turn_until(lambda: h.lengths() == (0, 0))
    assert h.keys_sent() == ["cats/a b.jpg"]
    assert h.events("minio", "duplicate") == 2
    assert client.get("labeler:dispatched:cats/a b.jpg") == _etag(1).encode()

    h.push(minio_event(s3_store.bucket, "root/cats/a b.jpg", _etag(2)))
    h.turn_until(lambda: len(h.batches) == 2 and h.lengths() == (0, 0))

    assert h.keys_sent() == ["cats/a b.jpg", "cats/a b.jpg"]
    assert client.get("labeler:dispatched:cats/a b.jpg") == _etag(2).encode()


def test_a_restarted_dispatcher_does_not_send_again(client: redis.Redis, s3_store: S3Store) -> None:
    first = make_harness(client, s3_store, batch_max_wait=0.0)
    event = aws_event(s3_store.bucket, "root/x.png", _etag(7))
    first.push(event)
    first.turn_until(lambda: first.batches and first.lengths() == (0, 0))

    second = make_harness(client, s3_store, batch_max_wait=0.0)
    second.push(event)
    second.turn_until(lambda: second.lengths() == (0, 0))

    assert second.batches == []
    assert second.events("s3", "duplicate") == 1


def test_ignored_and_invalid_items_are_counted_once_and_acknowledged(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store)
    h.push(
        "not json at all",
        aws_event(s3_store.bucket, "root/gone.png", None, "ObjectRemoved:Delete"),
        minio_event(s3_store.bucket, "labels/x.png.json", _etag(1)),
        aws_event("elsewhere", "root/x.png", _etag(1)),
    )

    h.turn_until(lambda: h.lengths() == (0, 0))
    h.dispatcher.step()

    assert h.batches == []
    assert (h.events("s3", "invalid"), h.events("s3", "ignored")) == (1, 2)
    assert h.events("minio", "ignored") == 1


def test_events_without_an_etag_head_the_object(client: redis.Redis, s3_store: S3Store) -> None:
    info = s3_store.put("no-etag.png", b"pixels")
    metered = MeteredStore(s3_store, Metrics(CollectorRegistry()))  # as `labeler dispatch` wires it
    h = make_harness(client, metered, batch_max_wait=0.0)
    h.push(
        minio_event(s3_store.bucket, "root/no-etag.png", None),
        aws_event(s3_store.bucket, "root/deleted-already.png", None),
    )

    h.turn_until(lambda: h.lengths() == (0, 0))

    assert h.keys_sent() == ["no-etag.png"]
    assert client.get("labeler:dispatched:no-etag.png") == info.etag.encode()
    assert h.events("s3", "ignored") == 1


def test_events_left_by_a_killed_dispatcher_are_recovered_on_start(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store, batch_max_wait=0.0)
    # A killed dispatcher moved these two and never acknowledged them; one more is waiting.
    left = [aws_event(s3_store.bucket, f"root/held-{i}.png", _etag(i)) for i in range(2)]
    client.rpush(h.config.processing_list, *left)
    h.push(aws_event(s3_store.bucket, "root/new.png", _etag(9)))

    assert h.dispatcher.recover() == 2
    h.turn_until(lambda: h.lengths() == (0, 0))

    assert sorted(h.keys_sent()) == ["held-0.png", "held-1.png", "new.png"]
    assert h.dispatcher.recover() == 0


def test_a_failed_enqueue_keeps_the_batch_and_the_events(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store, batch_max_images=2)
    h.fail_next.append(ConnectionError("broker down"))
    h.push(*[aws_event(s3_store.bucket, f"root/{i}.png", _etag(i)) for i in range(2)])

    thread = threading.Thread(target=h.dispatcher.run)
    thread.start()
    try:
        wait_until(lambda: h.batches and h.lengths() == (0, 0), 10, "the batch sent and acked")
    finally:
        h.dispatcher.stop()
        thread.join(10)

    assert h.batches == [["0.png", "1.png"]]
    assert client.get("labeler:dispatched:0.png") == _etag(0).encode()


def test_backpressure_pauses_intake_until_below_the_low_water_mark(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store, batch_max_wait=0.0)
    h.backlog[0] = 50  # at the high-water mark
    h.push(aws_event(s3_store.bucket, "root/a.png", _etag(1)))

    for _ in range(5):
        h.dispatcher.step()
    assert h.lengths() == (1, 0)
    assert h.registry.get_sample_value("labeler_dispatcher_paused") == 1
    h.backlog[0] = 30  # below high-water, above low-water: still paused
    h.dispatcher.step()
    assert h.lengths() == (1, 0)

    h.backlog[0] = 24
    h.turn_until(lambda: h.batches)

    assert h.keys_sent() == ["a.png"]
    assert h.registry.get_sample_value("labeler_dispatcher_paused") == 0


def test_stop_flushes_what_is_held_and_acknowledges_it(
    client: redis.Redis, s3_store: S3Store
) -> None:
    h = make_harness(client, s3_store, batch_max_wait=60.0)
    h.push(aws_event(s3_store.bucket, "root/held.png", _etag(3)))
    finished: list[bool] = []
    thread = threading.Thread(target=lambda: finished.append(h.dispatcher.run()))
    thread.start()
    wait_until(lambda: h.lengths() == (0, 1), 10, "the event taken, buffered, not sent")
    assert h.batches == []

    h.dispatcher.stop()
    thread.join(10)

    assert finished == [True]
    assert h.batches == [["held.png"]]
    assert h.flushes("shutdown") == 1
    assert h.lengths() == (0, 0)


def write_records(store: LocalStore, labels: LocalStore, keys: list[str]) -> None:
    """What the worker would write for ``keys``: a record per key answering its object's ETag,
    newer than the object (often in the same second: then the scan reads it once)."""
    for key in keys:
        path = labels.root / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(record_for(store, key))


def test_the_scan_sends_what_has_no_record_and_asks_redis_only_about_those(
    client: redis.Redis, tmp_path: Path
) -> None:
    store, labels = LocalStore(tmp_path / "incoming"), LocalStore(tmp_path / "labels")
    for i in range(6):
        store.put(f"dir/{i}.png", f"image {i}".encode())
    counting = CountingRedis(client)
    h = make_harness(
        counting, store, labels=labels, batch_max_wait=0.0, scan_interval=0.2, batch_max_images=4
    )

    h.turn_until(lambda: len(h.keys_sent()) == 6)
    write_records(store, labels, h.keys_sent())
    asked = counting.mget_keys
    (tmp_path / "incoming" / "dir" / "2.png").write_bytes(b"edited")  # changed in place
    later = (tmp_path / "labels" / "dir" / "2.png.json").stat().st_mtime + 5
    os.utime(tmp_path / "incoming" / "dir" / "2.png", (later, later))  # newer than its record
    (tmp_path / "incoming" / "new.png").write_bytes(b"copied in")  # as `cp` would
    h.turn_until(lambda: len(h.keys_sent()) == 8)

    assert sorted(h.keys_sent()[6:]) == ["dir/2.png", "new.png"]
    assert counting.mget_keys - asked == 2  # the labeled files never reached Redis
    assert h.events("scan", "queued") == 8


def test_an_unlabeled_object_still_in_flight_is_not_sent_twice(
    client: redis.Redis, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "incoming")
    store.put("slow.png", b"image")
    first = make_harness(client, store, batch_max_wait=0.0, scan_interval=0.1)
    first.turn_until(lambda: first.batches)

    again = make_harness(client, store, scan_interval=60.0)  # e.g. restarted: a fresh pass
    again.turn_until(lambda: again.events("scan", "duplicate") == 1)

    assert again.batches == []


class DeniedListing(S3Store):
    """An incoming bucket whose listing is refused (a policy without s3:ListBucket)."""

    def list(self, *args: Any, **kwargs: Any) -> Any:
        raise AccessDenied("403 for '': ListObjectsV2 denied")


def test_a_denied_listing_is_logged_and_events_keep_flowing(
    client: redis.Redis, s3_store: S3Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeniedListing(s3_store._client, s3_store.bucket, "root")
    h = make_harness(client, store, batch_max_wait=0.0, scan_interval=30.0)
    h.push(aws_event(s3_store.bucket, "root/a.png", _etag(1)))

    h.turn_until(lambda: h.batches and h.lengths() == (0, 0))  # a step never raises

    assert h.batches == [["a.png"]]
    assert "reconciliation of" in caplog.text
    assert not h.dispatcher.reconciling


def test_reconciliation_sends_exactly_the_objects_without_a_fresh_record(
    client: redis.Redis, tmp_path: Path
) -> None:
    store, labels = LocalStore(tmp_path / "incoming"), LocalStore(tmp_path / "labels")
    keys = [f"{i % 7}/{i:05d}.png" for i in range(5000)]
    for folder in range(7):
        (tmp_path / "incoming" / str(folder)).mkdir()
    for key in keys:
        (tmp_path / "incoming" / key).write_bytes(key.encode())  # as a copy would: no fsync
    unlabeled = set(keys[::500])  # 10 of them
    write_records(store, labels, [k for k in keys if k not in unlabeled])
    reuploaded = keys[1]
    later = (tmp_path / "labels" / f"{reuploaded}.json").stat().st_mtime + 5
    os.utime(tmp_path / "incoming" / reuploaded, (later, later))
    h = make_harness(
        client, store, labels=labels, batch_max_images=64, batch_max_wait=0.0, scan_interval=3600
    )

    h.turn_until(lambda: not h.dispatcher.reconciling and len(h.keys_sent()) >= 11)
    h.dispatcher.step()

    assert sorted(h.keys_sent()) == sorted([*unlabeled, reuploaded])
