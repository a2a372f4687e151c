"""The dispatcher engine against a real Redis and real stores, with a recording ``enqueue``;
the events it reads are built as MinIO and AWS really send them (``testbed.events``)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from labeler.settings import Settings
from labeler.wiring import dispatch_config
from monitoring.metrics import Metrics
from storage import AccessDenied, LocalStore, ObjectStore, S3Store
from testbed.events import aws_event, minio_event
from testbed.waiting import wait_until
from tests.support.records import record_for
from workers.dispatch import DispatchConfig, Dispatcher
from workers.metered_store import MeteredStore

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
    in_flight: list[int] | None = None,
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
        in_flight=None if in_flight is None else lambda: in_flight[0],
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


def test_a_sent_object_whose_message_was_lost_is_sent_again_once_the_queue_is_idle(
    client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "incoming")
    store.put("lost.png", b"image")
    first = make_harness(client, store, batch_max_wait=0.0, scan_interval=0.1)
    first.turn_until(lambda: first.batches)  # sent and marked; then the message is lost

    in_flight = [1]  # another batch waits in the queue: the marker may still mean this one
    again = make_harness(client, store, batch_max_wait=0.0, scan_interval=0.1, in_flight=in_flight)
    again.turn_until(lambda: again.events("scan", "duplicate") == 1)
    assert again.batches == []
    in_flight[0] = 0  # nothing waiting or reserved: no message stands behind the marker
    again.turn_until(lambda: again.batches)

    assert again.batches == [["lost.png"]]
    assert "their messages were lost" in caplog.text


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
