"""Decisions against a real moto S3 endpoint and a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from storage import LabelRecord, ReviewOutcome, S3Store, label_key
from storage.s3 import S3Client
from workers.review import (
    Action,
    InvalidDecision,
    LeaseLost,
    ReviewDesk,
    ReviewQueue,
    StaleItem,
    count_reviewed_since,
)


class Bucket:
    """incoming/, labels/ and training/ of one moto bucket."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.incoming = S3Store(client, bucket, "incoming")
        self.labels = S3Store(client, bucket, "labels")
        self.training = S3Store(client, bucket, "training")

    def seed(self, queue: ReviewQueue, key: str, label: str = "cat", at: float = 1.0) -> None:
        etag = self.incoming.put(key, f"image bytes of {key}".encode()).etag
        record = LabelRecord(
            source_key=key,
            source_etag=etag,
            model_name="m",
            model_version=1,
            label=label,
            score=0.4,
            needs_review=True,
            created_at=at,
        )
        self.labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())
        queue.add(record)

    def record(self, key: str) -> LabelRecord:
        return LabelRecord.model_validate_json(self.labels.get(label_key(key)).data)


@pytest.fixture
def queue(redis_url: str) -> Iterator[ReviewQueue]:
    client = redis.Redis.from_url(redis_url)
    yield ReviewQueue(client, order="oldest")  # these tests seed equal scores and rely on age
    client.close()


@pytest.fixture
def stores(s3_client: S3Client, bucket: str) -> Bucket:
    return Bucket(s3_client, bucket)


@pytest.fixture
def desk(stores: Bucket, queue: ReviewQueue) -> ReviewDesk:
    return ReviewDesk(stores.incoming, stores.labels, stores.training, queue)


def test_accept_copies_to_training_and_records_the_review(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    stores.seed(queue, "shelter/1.jpg", "cat")
    item = desk.next_item()
    assert item is not None
    assert item.record.label == "cat"

    updated = desk.decide("shelter/1.jpg", item.claim.token, Action.ACCEPT, "ana")

    record = stores.record("shelter/1.jpg")
    assert record == updated
    assert record.label == "cat"
    assert record.score == 0.4
    assert record.review is not None
    assert (record.review.label, record.review.outcome, record.review.reviewer) == (
        "cat",
        ReviewOutcome.AGREED,
        "ana",
    )
    assert stores.training.get("cat/shelter/1.jpg").data == b"image bytes of shelter/1.jpg"
    assert queue.pending() == 0
    assert queue.tallies() == {"cat": {"agreed": 1}}


def test_correcting_again_moves_the_image_and_repeats_are_no_ops(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    stores.seed(queue, "2.jpg", "cat")
    item = desk.next_item()
    assert item is not None
    desk.decide("2.jpg", item.claim.token, Action.CORRECT, "ana", label="dog")
    desk.decide("2.jpg", item.claim.token, Action.CORRECT, "ana", label="dog")  # a retry
    assert [i.key for i in stores.training.list()] == ["dog/2.jpg"]

    desk.decide("2.jpg", None, Action.CORRECT, "bo", label="fox")  # a later change of mind

    assert [i.key for i in stores.training.list()] == ["fox/2.jpg"]
    review = stores.record("2.jpg").review
    assert review is not None
    assert (review.label, review.outcome) == ("fox", "corrected")
    assert queue.tallies() == {"cat": {"corrected": 1}}  # one item, counted once

    desk.decide("2.jpg", None, Action.DISCARD, "bo")
    assert list(stores.training.list()) == []


def test_the_lease_is_required_for_a_first_decision(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    stores.seed(queue, "3.jpg")
    with pytest.raises(LeaseLost):
        desk.decide("3.jpg", "not-a-token", Action.ACCEPT, "mallory")
    with pytest.raises(LeaseLost):
        desk.decide("3.jpg", None, Action.ACCEPT, "mallory")
    assert stores.record("3.jpg").review is None


@pytest.mark.parametrize(
    ("key", "label"),
    [("../etc/passwd", "cat"), ("/abs.jpg", "cat"), ("ok.jpg", "../../models"), ("ok.jpg", "a/b")],
)
def test_bad_keys_and_class_names_are_refused(
    stores: Bucket, desk: ReviewDesk, key: str, label: str
) -> None:
    with pytest.raises(InvalidDecision):
        desk.decide(key, "t", Action.CORRECT, "r", label=label)
    assert list(stores.training.list()) == []


def test_an_image_changed_since_labeling_is_not_reviewed(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    stores.seed(queue, "old.jpg", at=1)
    stores.seed(queue, "new.jpg", at=2)
    item = desk.next_item()
    assert item is not None
    assert item.record.source_key == "old.jpg"
    stores.incoming.put("old.jpg", b"someone uploaded a different picture")

    with pytest.raises(StaleItem):
        desk.decide("old.jpg", item.claim.token, Action.ACCEPT, "ana")
    assert list(stores.training.list()) == []
    assert queue.get("old.jpg") is None  # out of the queue until it is labeled again

    stores.incoming.put("new.jpg", b"changed before anyone looked")
    assert desk.next_item() is None


def test_a_record_changed_during_a_decision_is_not_overwritten(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    # Two desks decide the same (re-reviewed) item at once: both writes go through CAS, so the
    # record ends with one of the two decisions and the training copy matches it.
    stores.seed(queue, "4.jpg")
    item = desk.next_item()
    assert item is not None
    desk.decide("4.jpg", item.claim.token, Action.ACCEPT, "ana")

    def change(label: str) -> str:
        desk.decide("4.jpg", None, Action.CORRECT, f"r-{label}", label=label)
        return label

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(change, ["dog", "fox"]))

    review = stores.record("4.jpg").review
    assert review is not None
    assert review.label in ("dog", "fox")
    assert review.reviewer == f"r-{review.label}"
    assert [i.key for i in stores.training.list()] == [f"{review.label}/4.jpg"]


def test_reviewed_images_that_joined_training_are_counted(
    stores: Bucket, queue: ReviewQueue, desk: ReviewDesk
) -> None:
    for key in ("a.jpg", "b.jpg", "c.jpg"):
        stores.seed(queue, key)
    decisions = [(Action.ACCEPT, None), (Action.CORRECT, "dog"), (Action.DISCARD, None)]
    for action, label in decisions:
        item = desk.next_item()
        assert item is not None
        desk.decide(item.record.source_key, item.claim.token, action, "ana", label=label)
    stores.training.put("cat/by-hand.jpg", b"copied in by someone")

    assert count_reviewed_since(stores.training, stores.labels, since=0) == 2
    assert count_reviewed_since(stores.training, stores.labels, since=time.time() + 3600) == 0
