"""Faults with real processes: nothing dropped in is lost, and nothing is labeled twice.

Real Redis servers, the moto S3 server (behind a fault-injecting proxy where S3 misbehaves), real
``labeler worker`` and ``labeler dispatch`` processes. One versioned bucket holds every test's
images under its own prefix, so "labeled exactly once" is a count of each label's versions.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from labeler.settings import settings_from_env
from labeler.wiring import build_app
from tasks.contracts import CLASSIFY_BATCH
from tasks.queues import UNACKED_HASH, unacked_hash
from testbed.digits import CLASSES
from testbed.events import aws_event, minio_event
from testbed.processes import DispatcherProcess, WorkerProcess, running_worker
from testbed.services import EventSource, MotoServer, RedisServer, free_port
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.support.deployment import (
    S3Deployment,
    child_pids,
    holds_for,
    s3_deployment,
    scrape,
)
from tests.support.s3_proxy import S3Proxy

pytestmark = pytest.mark.slow

INFERENCE = "inference"
# kombu's hash of messages reserved by a worker serving only the inference queue, not yet acked
UNACKED = unacked_hash(INFERENCE)
# Redis re-delivers a vanished worker's message after the visibility timeout, which must exceed
# a batch's time limit plus its retry backoff cap; a batch here takes well under a second.
SHORT_VISIBILITY = {
    "inference_visibility_timeout_seconds": 20,
    "inference_time_limit_seconds": 15,
    "retry_backoff_max_seconds": 3,
}


@pytest.fixture(scope="module")
def deployment(s3_server: MotoServer, digits: DigitsFixture) -> Iterator[S3Deployment]:
    with s3_deployment(s3_server.endpoint_url, digits.model_path, name="faults") as found:
        yield found


def _send_batches(env: dict[str, str], keys: list[str], size: int, run: str) -> None:
    app = build_app(settings_from_env(env))
    try:
        for n, start in enumerate(range(0, len(keys), size)):
            payload = {"batch_id": f"{run}-{n}", "keys": keys[start : start + size]}
            app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}, queue=INFERENCE)
    finally:
        app.close()


def _wait_warm(worker: WorkerProcess) -> None:
    """Until the prefork child has loaded the model ("ready." comes from the parent, before)."""
    wait_until(lambda: "loaded model digits" in worker.log_tail(100_000), 60, "the model loaded")


def _in_flight(broker: redis.Redis) -> tuple[str, list[str]]:
    """The id and keys of the one batch a worker has reserved (waiting if it is between two)."""
    reserved: list[bytes] = []

    def one() -> bool:
        reserved[:] = broker.hvals(UNACKED)
        return len(reserved) == 1

    wait_until(one, 10, "a batch in flight", every=0.001)
    message = json.loads(reserved[0])[0]
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _, kwargs, _ = json.loads(body)  # Celery's message protocol 2: [args, kwargs, embed]
    return message["headers"]["id"], list(kwargs["payload"]["keys"])


def _kill_mid_batch(proxy: S3Proxy, broker: redis.Redis, kill: Callable[[], None]) -> list[str]:
    """Stall the worker's S3 requests until one of a batch's is held, so the batch cannot end
    (or be acknowledged) before ``kill`` lands; then let S3 answer again. The batch's keys."""
    proxy.hold()
    try:
        wait_until(
            lambda: proxy.holding("/incoming/") or proxy.holding("/labels/"),
            60,
            "a batch's S3 request held",
        )
        _, keys = _in_flight(broker)
        kill()
    finally:
        proxy.release()
    return keys


def _assert_labeled_once(d: S3Deployment, prefix: str, etags: dict[str, str]) -> None:
    """Every key has one record, written once, with a label for the object it was given."""
    records = d.records(list(etags))
    assert len(records) == len(etags), f"{len(etags) - len(records)} images have no record"
    errors = {k: r.error for k, r in records.items() if r.error is not None}
    assert not errors, f"{len(errors)} error records, e.g. {next(iter(errors.items()))}"
    assert all(r.label in CLASSES for r in records.values())
    assert {k: r.source_etag for k, r in records.items()} == etags
    writes = d.label_writes(prefix)
    assert set(writes) == set(etags)
    rewritten = {k: n for k, n in writes.items() if n != 1}
    assert not rewritten, f"labels written more than once: {rewritten}"


def _reserve_a_retrain_an_hour_ago(broker: redis.Redis) -> str:
    """Put a retrain in the training workers' reserved hash as kombu does; its delivery tag."""
    tag = f"retrain-{uuid.uuid4().hex[:8]}"
    message = {"body": "", "headers": {}, "properties": {"delivery_tag": tag}}
    broker.hset(UNACKED_HASH, tag, json.dumps([message, "", "training"]))
    broker.zadd(f"{UNACKED_HASH}_index", {tag: time.time() - 3600})
    return tag


# --- 1. SIGKILL mid-run ---------------------------------------------------------------------------

# A kill must land while its batch runs: the worker reaches S3 through a proxy that holds its
# requests at the kill, so the batch in flight cannot finish (or be acknowledged) meanwhile.
KILL_IMAGES, KILL_BATCH = 1000, 100


def test_sigkill_of_a_child_then_of_the_whole_worker_mid_run_loses_nothing(
    deployment: S3Deployment,
    digits: DigitsFixture,
    s3_server: MotoServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # One run for both kills: the whole worker's batch is back only after the visibility
    # timeout, and killing the child before that costs no extra wait.
    d = deployment
    prefix = "killed/"
    etags = d.put_images(prefix, digits.held_out, KILL_IMAGES)
    proxy = S3Proxy(s3_server.port)
    env = d.env(
        redis_url,
        s3_endpoint_url=proxy.url,
        batch_max_images=KILL_BATCH,
        inference_batch_size=KILL_BATCH,
        **SHORT_VISIBILITY,
    )
    broker = redis.Redis.from_url(redis_url)
    retrain = _reserve_a_retrain_an_hour_ago(broker)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log, "--queues", INFERENCE).start()
    try:
        _wait_warm(worker)
        _send_batches(env, list(etags), KILL_BATCH, "killed")

        def labeled() -> set[str]:
            return set(d.labeled(prefix))

        # The prefork child: the parent sees it die and puts its batch back in the queue at once.
        wait_until(lambda: len(labeled()) >= 150, 120, "150 labels")
        assert worker.process is not None
        (child,) = child_pids(worker.process.pid)
        child_batch = _kill_mid_batch(proxy, broker, lambda: os.kill(child, signal.SIGKILL))
        assert not set(child_batch) <= labeled(), "the child's batch was cut short"

        # The whole worker (its process group): Redis keeps its reserved batch until the
        # visibility timeout, then hands it to the restarted worker.
        wait_until(lambda: len(labeled()) >= 400, 120, "400 labels")
        worker_batch = _kill_mid_batch(proxy, broker, lambda: worker.stop(signal.SIGKILL))
        assert not set(worker_batch) <= labeled(), "the worker's batch was cut short"
        assert broker.hlen(UNACKED) == 1, "the killed worker's batch is still reserved"
        worker = WorkerProcess(env, log, "--queues", INFERENCE).start()

        wait_until(lambda: len(labeled()) == KILL_IMAGES, 150, "every image labeled", every=0.5)
        wait_until(
            lambda: broker.hlen(UNACKED) == 0 and broker.llen(INFERENCE) == 0,
            30,
            "every message acknowledged",
        )
        # Each killed batch ran again, to the end: its every key labeled, each exactly once.
        assert set(child_batch) | set(worker_batch) <= labeled()
        _assert_labeled_once(d, prefix, etags)
        # The batch workers swept their reservations with a 20 s timeout for over a minute; a
        # retrain reserved an hour ago by a training worker is still running, not re-delivered.
        assert broker.hexists(UNACKED_HASH, retrain)
        assert broker.llen("training") == 0
    finally:
        worker.stop()
        broker.close()
        proxy.close()


# --- 2. Redis restarted mid-run -------------------------------------------------------------------

RESTART_IMAGES, RESTART_BATCH = 400, 40


def test_redis_restart_mid_run_worker_and_dispatcher_reconnect_and_lose_nothing(
    deployment: S3Deployment, digits: DigitsFixture, tmp_path: Path
) -> None:
    d = deployment
    prefix = "redis-restart/"
    etags = d.put_images(prefix, digits.held_out, RESTART_IMAGES)
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    env = d.env(
        server.url,
        batch_max_images=RESTART_BATCH,
        inference_batch_size=RESTART_BATCH,
        batch_max_wait_ms=200,
        scan_interval_seconds=0,  # events only: every label comes from an event that survived
        **SHORT_VISIBILITY,  # bounds the wait should the in-flight batch's ack be lost
    )
    events_list = settings_from_env(env).events_list
    builders = [minio_event, aws_event]
    events = [
        builders[n % 2](d.bucket, d.full_key(key), etag)
        for n, (key, etag) in enumerate(etags.items())
    ]
    source = EventSource(server.url, events, events_list, every=0.01)
    dispatcher = DispatcherProcess(env, tmp_path / "dispatch.log")
    broker = redis.Redis.from_url(server.url)
    try:
        with running_worker(env, tmp_path / "worker.log", "--queues", INFERENCE) as worker:
            assert worker.process is not None
            worker_pid = worker.process.pid
            _wait_warm(worker)
            dispatcher.start()
            source.start()
            wait_until(
                lambda: len(d.labeled(prefix)) >= 100 and broker.hlen(UNACKED) == 1,
                60,
                "100 labels and a batch in flight",
                every=0.1,
            )

            server.stop()
            pushed_before = source.pushed
            wait_until(
                lambda: (
                    "Connection to broker lost" in worker.log_tail(1_000_000)
                    and "dispatcher: BrokerUnavailable" in dispatcher.log()
                ),
                30,
                "the worker and the dispatcher to notice",
            )
            server.start()  # same port, same directory: the append-only file is replayed

            wait_until(
                lambda: len(d.labeled(prefix)) == RESTART_IMAGES, 150, "every image", every=0.5
            )
            source.join(30)
            wait_until(
                lambda: (
                    broker.llen(f"{events_list}:processing") == 0
                    and broker.llen(events_list) == 0
                    and broker.hlen(UNACKED) == 0
                    and broker.llen(INFERENCE) == 0
                ),
                30,
                "every event and message acknowledged",
            )
            assert dispatcher.alive, dispatcher.log()
            assert worker.process.pid == worker_pid
            assert worker.process.poll() is None
        _assert_labeled_once(d, prefix, etags)
        assert pushed_before < RESTART_IMAGES, "events should still be arriving when Redis went"
        assert dispatcher.stop() == 0, dispatcher.log()
    finally:
        if dispatcher.alive:
            dispatcher.stop(signal.SIGKILL)
        broker.close()
        server.stop()


# --- 3. S3 throttling, slow answers and a 15 s outage --------------------------------------------

S3_IMAGES, S3_BATCH, OUTAGE_SECONDS = 200, 50, 15.0
TASK_RETRIES = "labeler_task_retries_total"


def test_s3_errors_and_an_outage_are_retried_until_every_image_is_labeled(
    deployment: S3Deployment,
    digits: DigitsFixture,
    s3_server: MotoServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    d = deployment
    prefix = "s3-faults/"
    etags = d.put_images(prefix, digits.held_out, S3_IMAGES)
    proxy = S3Proxy(s3_server.port, error_rate=0.1, slow_rate=0.05, slow_seconds=0.5, seed=8)
    port = free_port()
    # Four tries per request: the outage outlasts botocore's retries (a few seconds) and the
    # tasks retry, at most 3 s apart, so the backlog drains soon after S3 is back.
    env = d.env(
        redis_url,
        s3_endpoint_url=proxy.url,
        s3_max_attempts=4,
        retry_backoff_max_seconds=3,
        metrics_port=port,
        batch_max_images=S3_BATCH,
        inference_batch_size=S3_BATCH,
    )

    def labeled() -> int:
        return len(d.labeled(prefix))  # read from moto directly, not through the proxy

    try:
        with running_worker(env, tmp_path / "worker.log", "--queues", INFERENCE) as worker:
            _wait_warm(worker)
            _send_batches(env, list(etags), S3_BATCH, "s3")
            wait_until(lambda: labeled() >= S3_BATCH, 60, "a first batch", every=0.2)

            proxy.down()
            down_at = time.monotonic()
            wait_until(
                lambda: scrape(port, TASK_RETRIES, error="TransientStorageError") > 0,
                20,
                "a task retried",
            )
            stuck = labeled()
            holds_for(
                lambda: labeled() == stuck,
                OUTAGE_SECONDS - (time.monotonic() - down_at),
                "nothing is labeled while S3 is down",
            )
            proxy.up()

            wait_until(lambda: labeled() == S3_IMAGES, 150, "every image", every=0.5)
            task_retries = scrape(port, TASK_RETRIES, error="TransientStorageError")
            storage_retries = scrape(port, "labeler_storage_retries_total")
            storage_errors = scrape(
                port, "labeler_storage_errors_total", error="TransientStorageError"
            )
    finally:
        proxy.close()
    _assert_labeled_once(d, prefix, etags)
    assert stuck < S3_IMAGES
    assert task_retries > 0
    assert storage_retries > 0
    # Each 503 the proxy sent was either retried by botocore or surfaced as a transient error.
    assert storage_retries + storage_errors == proxy.injected_errors


def test_an_outage_longer_than_the_old_retry_budget_still_ends_with_every_record(
    deployment: S3Deployment,
    digits: DigitsFixture,
    s3_server: MotoServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # Issue 13: a batch used to fail for good after 30 retries and its images never got a record.
    d = deployment
    prefix = "s3-long-outage/"
    etags = d.put_images(prefix, digits.held_out, 10)
    proxy = S3Proxy(s3_server.port, seed=13)
    port = free_port()
    env = d.env(
        redis_url,
        s3_endpoint_url=proxy.url,
        s3_max_attempts=1,
        retry_backoff_max_seconds=1,
        metrics_port=port,
        batch_max_images=10,
        inference_batch_size=10,
    )
    try:
        with running_worker(env, tmp_path / "worker.log", "--queues", INFERENCE) as worker:
            _wait_warm(worker)
            proxy.down()
            _send_batches(env, list(etags), 10, "long-outage")
            wait_until(
                lambda: scrape(port, TASK_RETRIES, error="TransientStorageError") > 31,
                180,
                "the batch retried past the old budget of 30",
                every=1.0,
            )
            proxy.up()
            wait_until(lambda: len(d.labeled(prefix)) == 10, 60, "every image", every=0.5)
    finally:
        proxy.close()
    _assert_labeled_once(d, prefix, etags)


# --- 4. a poison message --------------------------------------------------------------------------


def test_a_poison_message_is_rejected_once_counted_and_does_not_loop(
    deployment: S3Deployment, digits: DigitsFixture, redis_url: str, tmp_path: Path
) -> None:
    d = deployment
    etags = d.put_images("after-poison/", digits.held_out, 8)
    port = free_port()
    env = d.env(redis_url, metrics_port=port, inference_batch_size=8)
    poisons = [
        {"batch_id": "traversal", "keys": ["../etc/passwd"]},
        {"keys": ["after-poison/0000.png"]},  # no batch_id
        "not an object",
    ]
    app = build_app(settings_from_env(env))
    broker = redis.Redis.from_url(redis_url)
    try:
        with running_worker(env, tmp_path / "worker.log", "--queues", INFERENCE) as worker:
            sent = [app.send_task(CLASSIFY_BATCH, kwargs={"payload": p}) for p in poisons]
            good = app.send_task(
                CLASSIFY_BATCH, kwargs={"payload": {"batch_id": "good", "keys": list(etags)}}
            )
            assert good.get(timeout=120)["labeled"] == len(etags)  # it was queued after them

            for result in sent:
                assert result.state == "FAILURE"
                assert type(result.result).__name__ == "InvalidPayload"

            def log() -> str:
                return worker.log_tail(1_000_000)

            def rejected() -> float:
                return scrape(
                    port,
                    "labeler_tasks_rejected_total",
                    task=CLASSIFY_BATCH,
                    reason="invalid_payload",
                )

            def settled() -> bool:
                return (
                    rejected() == len(poisons)
                    and broker.llen(INFERENCE) == 0
                    and broker.hlen(UNACKED) == 0
                )

            # The good batch's result is stored a moment before its message is acknowledged.
            wait_until(settled, 10, "every message acknowledged")
            holds_for(settled, 5, "each poison message rejected once, and nothing left to deliver")
            retried = scrape(port, TASK_RETRIES, task=CLASSIFY_BATCH)
    finally:
        app.close()
        broker.close()
    assert retried == 0
    assert "ClassifyBatchRequest: keys: Value error" in log()
    assert "ClassifyBatchRequest: batch_id: Field required" in log()
    assert "payload must be a JSON object, got str" in log()
    assert d.records(list(etags)).keys() == etags.keys()
