"""The batcher in-process: it keeps what was enqueued and the settled events until a commit
succeeds, never acknowledges an event before its keys are queued, and de-duplicates."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from monitoring.metrics import Metrics
from storage import TransientError
from workers.dispatch.backpressure import Backpressure
from workers.dispatch.batcher import Batcher
from workers.dispatch.errors import BrokerUnavailable, EnqueueFailed, redis_errors
from workers.dispatch.inbox import Held


class NoInbox:
    def ack(self, pipe: Any, settled: list[Held]) -> None: ...

    def acked(self, settled: list[Held]) -> None: ...

    def reject(self, unusable: list[Held]) -> None: ...


def batcher(sent: list[list[str]], *, max_images: int = 2, fail: bool = False) -> Batcher:
    metrics = Metrics(CollectorRegistry())

    def enqueue(keys: list[str]) -> None:
        if fail:
            raise RuntimeError("broker down")
        sent.append(keys)

    backpressure = Backpressure(lambda: 0, metrics, 10, 5, 1.0)
    return Batcher(enqueue, metrics, backpressure, max_images, max_wait=1.0)


class Commits:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[tuple[dict[str, str], list[Held]]] = []

    def __call__(self, marks: dict[str, str], acks: list[Held]) -> None:
        if self.fail:
            raise BrokerUnavailable("Redis settle: down")
        self.seen.append((dict(marks), list(acks)))


def test_an_event_is_acknowledged_only_after_its_keys_are_queued() -> None:
    sent: list[list[str]] = []
    b = batcher(sent)
    event = Held(b"e", NoInbox())
    b.offer("a", "1", "s3", event, {}, now=0.0)
    b.release(event)  # a key still waits in the buffer: not yet

    assert b.settle(Commits()) == []

    b.offer("b", "2", "s3", None, {}, now=0.0)
    b.flush_due(now=0.0)
    commits = Commits()
    assert b.settle(commits) == [event]
    assert commits.seen == [({"a": "1", "b": "2"}, [event])]
    assert sent == [["a", "b"]]
    assert b.settle(commits) == []  # forgotten once committed
    assert len(commits.seen) == 1


def test_a_failed_commit_keeps_marks_and_acks_for_the_next_turn() -> None:
    b = batcher([], max_images=1)
    event = Held(b"e", NoInbox())
    b.offer("a", "1", "s3", event, {}, now=0.0)
    b.flush_due(now=0.0)

    with pytest.raises(BrokerUnavailable):
        b.settle(Commits(fail=True))
    commits = Commits()

    assert b.settle(commits) == [event]
    assert commits.seen == [({"a": "1"}, [event])]


def test_a_failed_enqueue_keeps_the_batch_and_acknowledges_nothing() -> None:
    b = batcher([], max_images=1, fail=True)
    event = Held(b"e", NoInbox())
    b.offer("a", "1", "s3", event, {}, now=0.0)

    with pytest.raises(EnqueueFailed):
        b.flush_due(now=0.0)

    assert "a" in b
    assert event.pending == 1
    assert b.settle(Commits()) == []


def test_a_key_sent_with_the_same_etag_is_a_duplicate_and_its_event_settles_at_once() -> None:
    b = batcher([])
    event = Held(b"e", NoInbox())
    b.offer("a", "1", "s3", event, {"a": "1"}, now=0.0)
    b.release(event)

    assert "a" not in b
    assert b.settle(Commits()) == [event]


def test_redis_errors_leave_as_a_transient_error() -> None:
    with pytest.raises(TransientError, match="Redis take: ConnectionError"), redis_errors("take"):
        raise RedisConnectionError("refused")
