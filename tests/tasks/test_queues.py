"""Queue depth read from a real Redis broker, as Celery's Redis transport lays queues out."""

from __future__ import annotations

import redis

from labeler.settings import load_settings
from labeler.wiring import build_app
from tasks.contracts import CLASSIFY_BATCH, INFERENCE_QUEUE, QUEUES, TRAINING_QUEUE
from tasks.queues import queue_depths, unacked_hash, waiting_images


def _send(redis_url: str, sizes: list[int]) -> None:
    app = build_app(load_settings(broker_url=redis_url))
    for n, size in enumerate(sizes):
        payload = {"batch_id": f"b{n}", "keys": [f"{n}/{i}.png" for i in range(size)]}
        app.send_task(CLASSIFY_BATCH, kwargs={"payload": payload}, queue=INFERENCE_QUEUE)


def test_waiting_images_counts_keys_in_queued_messages(redis_url: str) -> None:
    _send(redis_url, [5, 7, 2])
    client = redis.Redis.from_url(redis_url)

    assert waiting_images(client, INFERENCE_QUEUE, 64)() == 14
    assert waiting_images(client, "empty", 64)() == 0


def test_queue_depths_count_waiting_and_reserved(redis_url: str) -> None:
    _send(redis_url, [1, 1, 1])
    client = redis.Redis.from_url(redis_url)
    # A worker reserving a message moves it into the `unacked` hash until it acks.
    raw = client.lpop(INFERENCE_QUEUE)
    assert raw is not None
    client.hset("unacked", "tag-1", f'[{raw.decode()}, "", "{INFERENCE_QUEUE}"]')
    # ...or into a hash of its own, if it serves only one queue.
    raw = client.lpop(INFERENCE_QUEUE)
    assert raw is not None
    own = unacked_hash(INFERENCE_QUEUE)
    client.hset(own, "tag-2", f'[{raw.decode()}, "", "{INFERENCE_QUEUE}"]')

    depths = queue_depths(client, QUEUES)

    assert depths[(INFERENCE_QUEUE, "waiting")] == 1
    assert depths[(INFERENCE_QUEUE, "reserved")] == 2
    assert depths[(TRAINING_QUEUE, "waiting")] == depths[(TRAINING_QUEUE, "reserved")] == 0


def test_only_a_batch_worker_sweeps_its_own_reservations_with_the_short_timeout() -> None:
    settings = load_settings(broker_url="redis://127.0.0.1:6379/0")
    options = {
        queues: build_app(settings, frozenset(queues)).conf.broker_transport_options
        for queues in [(INFERENCE_QUEUE,), (TRAINING_QUEUE,), QUEUES, ()]
    }

    batch = options[(INFERENCE_QUEUE,)]
    assert batch["unacked_key"] == unacked_hash(INFERENCE_QUEUE)
    assert batch["visibility_timeout"] == settings.inference_visibility_timeout_seconds == 600
    for others in [(TRAINING_QUEUE,), QUEUES, ()]:
        assert "unacked_key" not in options[others]  # kombu's default hash
        assert options[others]["visibility_timeout"] == settings.visibility_timeout_seconds
