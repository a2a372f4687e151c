"""``labeler dispatch`` end to end: real Redis, the moto S3 server, real worker and dispatcher.

The bucket is versioned, so "written exactly once" is checked by counting a label's versions.
Events are pushed with RPUSH in the formats MinIO and AWS really send.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from storage import LabelRecord
from storage.keys import label_key
from tasks.contracts import CLASSIFY_BATCH
from testbed.digits import CLASSES
from testbed.events import (
    aws_event,
    eventbridge_event,
    minio_documented_event,
    minio_event,
    sns_event,
)
from testbed.processes import DispatcherProcess, WorkerProcess, labeler_env, run_labeler
from testbed.services import EventSource, MotoServer, RedisServer, free_port
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.support.deployment import S3Deployment, s3_deployment, scrape

pytestmark = pytest.mark.slow

EVENTS = "labeler:events"
PROCESSING = "labeler:events:processing"
BATCH = 16


@dataclass
class Deployment:
    """A versioned bucket on the moto server, one worker, and the dispatchers tests start."""

    site: S3Deployment
    env: dict[str, str]
    redis: redis.Redis
    logs: Path
    dispatchers: list[DispatcherProcess] = field(default_factory=list)

    def dispatcher(self, **settings: object) -> DispatcherProcess:
        """Start one (stopping any earlier one first: one dispatcher per events list)."""
        for earlier in self.dispatchers:
            assert earlier.stop() in (0, -signal.SIGKILL), earlier.log()
        env = {**self.env, **{f"LABELER_{k.upper()}": str(v) for k, v in settings.items()}}
        log = self.logs / f"dispatch-{uuid.uuid4().hex[:6]}.log"
        started = DispatcherProcess(env, log).start()
        self.dispatchers.append(started)
        return started


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer,
    s3_server: MotoServer,
    digits: DigitsFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    logs = tmp_path_factory.mktemp("dispatch")
    with s3_deployment(s3_server.endpoint_url, digits.model_path, name="dispatch") as site:
        env = site.env(
            redis_server.url,
            batch_max_images=BATCH,
            batch_max_wait_ms=200,
            inference_batch_size=16,
            scan_interval_seconds=0,  # events only, unless a test asks for the scan
        )
        worker = WorkerProcess(env, logs / "worker.log", "--queues", "inference").start()
        found = Deployment(site, env, client, logs)
        try:
            yield found
        finally:
            for dispatcher in found.dispatchers:
                dispatcher.stop(signal.SIGKILL)
            worker.stop()
            client.close()


def _wait_queue_empty(sqs: SqsSource, timeout: float) -> None:
    """Every message deleted: none waiting, none in flight."""
    wait_until(
        lambda: (
            sqs.attribute("ApproximateNumberOfMessagesNotVisible") == "0"
            and sqs.attribute("ApproximateNumberOfMessages") == "0"
        ),
        timeout,
        "every message deleted",
    )


def _wait_labeled(d: Deployment, prefix: str, keys: set[str], timeout: float) -> None:
    # Each poll lists the labels: poll gently, moto serves the worker on the same 2 cores.
    wait_until(
        lambda: d.site.labeled(prefix) >= keys,
        timeout,
        f"{len(keys)} labels under {prefix}",
        every=0.3,
    )


def test_minio_and_aws_events_label_awkward_keys(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    names = ["a b.png", "ünï 猫.png", "a+b=c.png", "lit%2Fname.png", "100%.png", "deep/er/x.png"]
    keys = [f"awkward/{name}" for name in names]
    etags = {key: d.site.put(key, digits.held_out[i].data) for i, key in enumerate(keys)}
    builders = [minio_event, minio_documented_event, aws_event]
    dispatcher = d.dispatcher()

    d.redis.rpush(
        EVENTS,
        *[
            builders[i % 3](d.site.bucket, d.site.full_key(key), etags[key])
            for i, key in enumerate(keys)
        ],
    )

    _wait_labeled(d, "awkward/", set(keys), 60)
    for key in keys:
        record = d.site.record(key)
        assert record.source_etag == etags[key]
        assert record.ok
        assert record.label in CLASSES
    assert sum(dispatcher.sent()) == len(keys)
    assert dispatcher.stop() == 0  # SIGTERM: a clean exit


def test_the_same_event_three_times_writes_one_label(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    etag = d.site.put("thrice/x.png", digits.held_out[10].data)
    sentinel_etag = d.site.put("thrice/sentinel.png", digits.held_out[11].data)
    port = free_port()
    dispatcher = d.dispatcher(metrics_port=port)
    event = minio_event(d.site.bucket, d.site.full_key("thrice/x.png"), etag)

    d.redis.rpush(EVENTS, event, event, event)
    d.redis.rpush(
        EVENTS, aws_event(d.site.bucket, d.site.full_key("thrice/sentinel.png"), sentinel_etag)
    )

    # Events are taken in order: once the sentinel is labeled, all three copies were handled.
    _wait_labeled(d, "thrice/", {"thrice/sentinel.png", "thrice/x.png"}, 60)
    assert sum(dispatcher.sent()) == 2
    assert d.site.label_writes("thrice/") == {"thrice/x.png": 1, "thrice/sentinel.png": 1}
    assert d.redis.llen(PROCESSING) == 0
    scraped = _scrape(port)
    assert scraped[("minio", "queued")] == 1
    assert scraped[("minio", "duplicate")] == 2
    assert scraped[("s3", "queued")] == 1


def test_objects_put_without_events_are_found_by_the_scan(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    keys = {f"quiet/{i}.png" for i in range(5)}
    for i, key in enumerate(sorted(keys)):
        d.site.put(key, digits.held_out[20 + i].data)
    dispatcher = d.dispatcher(scan_interval_seconds=1)

    _wait_labeled(d, "quiet/", keys, 60)
    changed = d.site.put(
        "quiet/0.png", digits.held_out[30].data
    )  # a new version of a labeled object
    wait_until(
        lambda: d.site.record("quiet/0.png").source_etag == changed, 60, "the change labeled"
    )

    assert d.site.record("quiet/0.png").label in CLASSES
    assert sum(dispatcher.sent()) == 6
    assert dispatcher.stop() == 0


def test_a_thousand_objects_at_once_go_in_full_batches(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    etags = d.site.put_images("burst/", digits.held_out, 1000)
    keys = list(etags)
    dispatcher = d.dispatcher()

    d.redis.rpush(
        EVENTS, *[aws_event(d.site.bucket, d.site.full_key(k), e) for k, e in etags.items()]
    )

    _wait_labeled(d, "burst/", set(keys), 150)
    sizes = dispatcher.sent()
    assert sum(sizes) == 1000
    assert max(sizes) <= BATCH
    assert sizes.count(BATCH) >= 0.9 * len(sizes)
    with ThreadPoolExecutor(8) as pool:
        batch_ids = Counter(pool.map(lambda k: d.site.record(k).batch_id, keys))
    assert len(batch_ids) == len(sizes)
    assert max(batch_ids.values()) <= BATCH
    assert set(d.site.label_writes("burst/").values()) == {1}


def test_sigkill_mid_stream_and_restart_labels_every_object_once(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    etags = d.site.put_images("killed/", digits.held_out, 300)
    events = [minio_event(d.site.bucket, d.site.full_key(k), e) for k, e in etags.items()]
    first = d.dispatcher(batch_max_wait_ms=1000)
    producer = EventSource(d.env["LABELER_BROKER_URL"], events, EVENTS, every=0.01)
    producer.start()

    wait_until(lambda: d.redis.llen(PROCESSING) >= 3, 30, "events held by the dispatcher")
    first.stop(signal.SIGKILL)
    held_when_killed = d.redis.llen(PROCESSING)
    assert producer.is_alive(), "the stream should still be flowing when the dispatcher dies"
    second = d.dispatcher()
    producer.join(30)

    _wait_labeled(d, "killed/", set(etags), 150)
    assert held_when_killed >= 1
    assert f"recovered {held_when_killed} events" in second.log()
    assert set(d.site.label_writes("killed/").values()) == {1}
    assert len(d.site.label_writes("killed/")) == 300
    wait_until(lambda: d.redis.llen(PROCESSING) == 0, 10, "every event acknowledged")
    assert second.stop() == 0


def test_events_for_label_objects_are_ignored(
    deployment: Deployment, digits: DigitsFixture
) -> None:
    d = deployment
    etag = d.site.put("loop/x.png", digits.held_out[40].data)
    dispatcher = d.dispatcher()
    d.redis.rpush(EVENTS, minio_event(d.site.bucket, d.site.full_key("loop/x.png"), etag))
    _wait_labeled(d, "loop/", {"loop/x.png"}, 60)
    label = d.site.labels.head(label_key("loop/x.png"))

    # What MinIO sends when notifications cover the whole bucket: the worker's own write.
    d.redis.rpush(
        EVENTS,
        minio_event(d.site.bucket, d.site.full_key("loop/x.png.json", "labels"), label.etag),
        aws_event(d.site.bucket, d.site.full_key("loop/x.png.json", "labels"), label.etag),
    )
    sentinel = d.site.put("loop/sentinel.png", digits.held_out[41].data)
    d.redis.rpush(EVENTS, aws_event(d.site.bucket, d.site.full_key("loop/sentinel.png"), sentinel))

    _wait_labeled(d, "loop/", {"loop/sentinel.png"}, 60)
    assert sum(dispatcher.sent()) == 2
    assert d.site.labeled("loop/") == {"loop/x.png", "loop/sentinel.png"}
    assert not any(k.endswith(".json") for k in d.site.label_writes(""))  # no label of a label


def _local_stack(
    redis_server: RedisServer, tmp_path: Path, db: int, **settings: object
) -> tuple[Path, dict[str, str]]:
    """A local data directory and the environment of a stack over it, on Redis database ``db``
    (its own queues) of the session's server."""
    data_dir = tmp_path / "data"
    broker = redis_server.url.removesuffix("/0") + f"/{db}"
    redis.Redis.from_url(broker).flushdb()
    values: dict[str, object] = {
        "broker_url": broker,
        "data_dir": data_dir,
        "model_name": "digits",
        "batch_max_images": BATCH,
        "batch_max_wait_ms": 200,
        "inference_batch_size": 16,
        "metrics_port": 0,
    }
    env = labeler_env(**{**values, **settings})
    return data_dir, env


def test_files_copied_into_a_local_data_dir_are_labeled(
    redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    # The embedded default: no bucket, no events; the scan is the only source.
    data_dir, env = _local_stack(redis_server, tmp_path, 1, scan_interval_seconds=0.5)
    run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
    sources = tmp_path / "camera"
    sources.mkdir()
    for i in range(20):
        (sources / f"shot {i:02d}.png").write_bytes(digits.held_out[50 + i].data)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    dispatcher = DispatcherProcess(env, tmp_path / "dispatch.log").start()
    try:
        shutil.copytree(sources, data_dir / "incoming" / "camera")  # what a user does

        labels = data_dir / "labels" / "camera"
        wait_until(lambda: len(list(labels.glob("*.png.json"))) == 20, 90, "20 local labels")
        records = [LabelRecord.model_validate_json(p.read_bytes()) for p in labels.iterdir()]
        assert {r.source_key for r in records} == {f"camera/shot {i:02d}.png" for i in range(20)}
        assert all(r.ok and r.label in CLASSES for r in records)
        assert dispatcher.stop() == 0
    finally:
        dispatcher.stop(signal.SIGKILL)
        worker.stop()


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """``labeler_events_total`` by (source, outcome), from the dispatcher's /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.labels["source"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "labeler_events"
        for s in family.samples
        if s.name == "labeler_events_total"
    }


def test_images_waiting_longer_than_the_retry_budget_for_a_model_are_labeled_once_it_comes(
    redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    # The story of issue 13: `labeler up` before any model, images dropped, the model later.
    port = free_port()
    data_dir, env = _local_stack(
        redis_server,
        tmp_path,
        2,
        scan_interval_seconds=0.5,
        retry_backoff_max_seconds=1,
        metrics_port=port,
    )
    incoming = data_dir / "incoming" / "early"
    incoming.mkdir(parents=True)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    dispatcher = DispatcherProcess({**env, "LABELER_METRICS_PORT": "0"}, tmp_path / "dispatch.log")
    dispatcher.start()
    try:
        for i in range(5):
            (incoming / f"{i}.png").write_bytes(digits.held_out[80 + i].data)
        # Past the 30 retries a batch used to get: retried a 31st time, not failed for good.
        wait_until(
            lambda: scrape(port, "labeler_task_retries_total", task=CLASSIFY_BATCH) > 30,
            180,
            "the batch retried past the old budget",
            every=1.0,
        )
        run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))

        labels = data_dir / "labels" / "early"
        wait_until(lambda: len(list(labels.glob("*.png.json"))) == 5, 90, "5 labels", every=0.5)
        records = [LabelRecord.model_validate_json(p.read_bytes()) for p in labels.iterdir()]
        assert all(r.ok and r.label in CLASSES for r in records)
        assert sum(dispatcher.sent()) == 5  # waited, not sent again
    finally:
        dispatcher.stop(signal.SIGKILL)
        worker.stop()


def test_the_watcher_labels_completed_local_files_with_the_scan_off(
    redis_server: RedisServer, digits: DigitsFixture, tmp_path: Path
) -> None:
    data_dir, env = _local_stack(redis_server, tmp_path, 3, scan_interval_seconds=0)
    run_labeler(env, "models", "import", str(digits.model_path), "--classes", ",".join(CLASSES))
    incoming = data_dir / "incoming"
    outside = tmp_path / "camera"
    (outside / "roll").mkdir(parents=True)
    for i in range(10):
        (outside / "roll" / f"{i}.png").write_bytes(digits.held_out[90 + i].data)
    worker = WorkerProcess(env, tmp_path / "worker.log", "--queues", "inference").start()
    dispatcher = DispatcherProcess(env, tmp_path / "dispatch.log").start()
    try:
        shutil.copytree(outside / "roll", incoming / "copied" / "deep")
        os.rename(outside / "roll", incoming / "moved")
        big = hashlib.md5()  # noqa: S324 - the ETag the record must carry
        with (incoming / "slow.png").open("wb") as f:  # an image padded to 20 MB, written slowly
            for chunk in [digits.held_out[100].data] + [bytes(1 << 20)] * 20:
                f.write(chunk)
                f.flush()
                big.update(chunk)
                time.sleep(0.05)  # pacing the writer, not waiting for a condition

        labels = data_dir / "labels"
        wait_until(lambda: len(list(labels.rglob("*.json"))) == 21, 90, "21 labels", every=0.5)
        slow = LabelRecord.model_validate_json((labels / "slow.png.json").read_bytes())
        assert slow.ok
        assert slow.source_etag == big.hexdigest()
        assert sum(dispatcher.sent()) == 21  # each file once, the slow one only when complete
    finally:
        dispatcher.stop(signal.SIGKILL)
        worker.stop()


@dataclass
class SqsSource:
    """A queue (with a dead-letter queue after 2 receives) the bucket notifies about sqs/."""

    client: Any
    url: str
    dlq_url: str

    def settings(self, endpoint_url: str | None = None) -> dict[str, object]:
        endpoint = {"events_sqs_endpoint_url": endpoint_url} if endpoint_url else {}
        return {"events_sqs_url": self.url, **endpoint}

    def attribute(self, name: str) -> str:
        reply = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=[name])
        return str(reply["Attributes"][name])


@pytest.fixture
def sqs_source(deployment: Deployment, s3_server: MotoServer) -> Iterator[SqsSource]:
    sqs = boto3.client(
        "sqs",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
    )
    name = f"labeler-{uuid.uuid4().hex[:8]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    url = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": json.dumps(redrive)})
    source = SqsSource(sqs, url["QueueUrl"], dlq_url)
    rule = {
        "QueueArn": source.attribute("QueueArn"),
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {"FilterRules": [{"Name": "prefix", "Value": deployment.site.full_key("sqs/")}]}
        },
    }
    s3 = deployment.site.s3
    s3.put_bucket_notification_configuration(
        Bucket=deployment.site.bucket, NotificationConfiguration={"QueueConfigurations": [rule]}
    )
    yield source
    s3.put_bucket_notification_configuration(
        Bucket=deployment.site.bucket, NotificationConfiguration={}
    )


def test_sqs_bucket_notifications_label_awkward_keys_and_garbage_is_dead_lettered(
    deployment: Deployment, digits: DigitsFixture, s3_server: MotoServer, sqs_source: SqsSource
) -> None:
    d, sqs = deployment, sqs_source
    dispatcher = d.dispatcher(**sqs.settings(s3_server.endpoint_url))
    names = ["a b.png", "a+b.png", "100%.png", "ünï 猫.png"]
    keys = {f"sqs/{n}" for n in names}
    for i, key in enumerate(sorted(keys)):
        d.site.put(key, digits.held_out[110 + i].data)  # S3 notifies the queue itself
    wrapped = {"wrapped/sns a+b.png": sns_event, "wrapped/eb a+b ü.png": eventbridge_event}
    for i, (key, builder) in enumerate(wrapped.items()):
        etag = d.site.put(key, digits.held_out[120 + i].data)  # outside the notified prefix
        body = builder(d.site.bucket, d.site.full_key(key), etag)
        sqs.client.send_message(QueueUrl=sqs.url, MessageBody=body)
    sqs.client.send_message(QueueUrl=sqs.url, MessageBody="not an event at all")

    _wait_labeled(d, "sqs/", keys, 90)
    _wait_labeled(d, "wrapped/", set(wrapped), 60)
    assert set(d.site.label_writes("sqs/").values()) == {1}
    assert all(d.site.record(k).ok for k in keys | set(wrapped))
    dead: list[str] = []

    def dead_lettered() -> bool:
        reply = sqs.client.receive_message(QueueUrl=sqs.dlq_url, WaitTimeSeconds=1)
        dead.extend(m["Body"] for m in reply.get("Messages", []))
        return bool(dead)

    wait_until(dead_lettered, 60, "the garbage in the dead-letter queue")
    assert dead == ["not an event at all"]
    wait_until(
        lambda: sqs.attribute("ApproximateNumberOfMessagesNotVisible") == "0",
        30,
        "every message deleted",
    )
    assert sqs.attribute("ApproximateNumberOfMessages") == "0"
    assert dispatcher.stop() == 0


def test_sqs_queue_url_of_an_emulator_is_its_own_endpoint(
    deployment: Deployment, digits: DigitsFixture, s3_server: MotoServer, sqs_source: SqsSource
) -> None:
    d, sqs = deployment, sqs_source
    assert sqs.url.startswith(f"{s3_server.endpoint_url}/")  # moto's own host, no AWS in it
    assert not any(k.startswith("LABELER_EVENTS_SQS") for k in d.env)
    dispatcher = d.dispatcher(**sqs.settings())  # the queue URL alone, no endpoint URL
    keys = {f"sqs/own-endpoint/{n}.png" for n in range(3)}
    for i, key in enumerate(sorted(keys)):
        d.site.put(key, digits.held_out[130 + i].data)  # S3 notifies the queue itself

    _wait_labeled(d, "sqs/own-endpoint/", keys, 90)
    assert f"long-polling SQS queue {sqs.url} at {s3_server.endpoint_url} " in dispatcher.log()
    assert "does not answer" not in dispatcher.log()
    _wait_queue_empty(sqs, 30)
    assert dispatcher.stop() == 0


def test_sqs_dispatcher_sigkilled_with_messages_in_flight_labels_every_object_once(
    deployment: Deployment, digits: DigitsFixture, s3_server: MotoServer, sqs_source: SqsSource
) -> None:
    d, sqs = deployment, sqs_source
    settings = {**sqs.settings(s3_server.endpoint_url), "events_sqs_visibility_seconds": 10}
    first = d.dispatcher(batch_max_wait_ms=3000, **settings)
    etags = d.site.put_images("sqs/killed/", digits.held_out, 120)

    wait_until(
        lambda: int(sqs.attribute("ApproximateNumberOfMessagesNotVisible")) >= 3,
        30,
        "messages received and held",
    )
    first.stop(signal.SIGKILL)
    second = d.dispatcher(**settings)

    _wait_labeled(d, "sqs/killed/", set(etags), 150)
    assert set(d.site.label_writes("sqs/killed/").values()) == {1}
    assert len(d.site.label_writes("sqs/killed/")) == 120
    _wait_queue_empty(sqs, 60)
    assert second.stop() == 0
